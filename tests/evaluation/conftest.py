"""One tiny trained run shared by the evaluation tests, and a small external phantom folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The cheapest model at the smallest size keeps these tests fast.
MODEL, SIZE = "vit", 32


@pytest.fixture(scope="package")
def tiny_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT trained for one epoch at 32 px on the session's phantoms (read-only: copy it to change it)."""
    from kidney_lab.training import config, engine

    workspace = tmp_path_factory.mktemp("evaluation-workspace")
    result = engine.train(
        config.TrainConfig(
            data=phantom_root, models=(MODEL,), epochs=1, image_size=SIZE, weights="none",
            batch_size=8, workspace=workspace, augmentation=False, patience=1,
        )
    )
    outcome = result.runs[0]
    assert outcome.status == "completed", outcome.error
    return outcome.path


@pytest.fixture(scope="package")
def external_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantoms the tiny run never saw: another seed, another size (3 per class, 48 px)."""
    from kidney_lab.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("external"), per_class=3, size=48, seed=7)


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run, in a folder of its own, for tests that change it."""
    destination = tmp_path / "runs" / tiny_run.name
    shutil.copytree(tiny_run, destination)
    return destination

