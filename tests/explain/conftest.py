"""Fixtures of the explanation tests: one cheap trained run, scans, and a clean cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kidney_lab import runs
from kidney_lab.data import phantom

# The cheapest model at the smallest size (a 2 x 2 token grid).
VIT_SIZE = 32


@pytest.fixture(scope="session")
def vit_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT run trained one epoch at 32 px on the session's phantoms (read-only: copy it)."""
    from kidney_lab.training import config, engine

    workspace = tmp_path_factory.mktemp("explain-vit")
    result = engine.train(
        config.TrainConfig(
            data=phantom_root, models=("vit",), epochs=1, image_size=VIT_SIZE, weights="none",
            batch_size=8, workspace=workspace, augmentation=False, patience=1,
        )
    )
    assert result.runs[0].status == runs.COMPLETED, result.runs[0].error
    return result.runs[0].path


@pytest.fixture
def run_copy(vit_run: Path, tmp_path: Path):
    """Copy the ViT run into a test's own folder (for tests that change or break it)."""

    def copy(name: str | None = None) -> Path:
        destination = tmp_path / (name or vit_run.name)
        shutil.copytree(vit_run, destination)
        return destination

    return copy


def lesion_phantom(label: str = "Stone", size: int = 64, index: int = 0) -> np.ndarray:
    """A phantom slice (uint8, size x size) of ``label``."""
    return phantom.make_phantom(label, size=size, seed=3, index=index).image


def non_square(pixels: np.ndarray, height: int = 48) -> np.ndarray:
    """A wide, non-square crop of a square image: the middle ``height`` rows."""
    top = (pixels.shape[0] - height) // 2
    return np.ascontiguousarray(pixels[top:top + height])
