"""Shared fixtures: small generated datasets, and the real sample when it is present."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kidney_lab.data.classes import CLASS_NAMES, KAGGLE_FOLDER_NAME
from tests.helpers import encode, textured

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-kidney-sample"


@pytest.fixture
def real_sample() -> Path:
    """The 2,000 real slices of ../shared/data/ct-kidney-sample, or a skip that says why."""
    if not (REAL_SAMPLE / KAGGLE_FOLDER_NAME).is_dir():
        pytest.skip(f"real CT sample not found at {REAL_SAMPLE} (it is never committed)")
    return REAL_SAMPLE


@pytest.fixture
def make_dataset_folder(tmp_path: Path) -> Callable[..., Path]:
    """Write a small Kaggle-layout dataset of distinct textured PNGs; return the class parent."""

    def make(per_class: int = 3, root: Path | None = None, seed: int = 0) -> Path:
        base = (root or tmp_path) / KAGGLE_FOLDER_NAME
        for class_index, label in enumerate(CLASS_NAMES):
            folder = base / label
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(1, per_class + 1):
                pixels = textured(seed * 10_000 + class_index * 1_000 + number)
                (folder / f"{label}- ({number}).png").write_bytes(encode(pixels))
        return base

    return make


@contextlib.contextmanager
def _made_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, dict | None]]:
    """A folder that one process of the test session fills and every other one reuses.

    Under pytest-xdist (``-n 2``, as in CI) the workers share the session's base folder; the
    first worker to get here builds under an exclusive lock, the others wait for it and read
    what it recorded. Yields the folder and the recorded result (None: build it, then set
    ``record[name]`` via :func:`_record`).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / "shared" / name
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp(name)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / ".made.json"
        yield folder, json.loads(done.read_text()) if done.is_file() else None


def _record(folder: Path, result: dict) -> None:
    """Mark a :func:`_made_once` folder complete with ``result`` (JSON) for the other workers."""
    (folder / ".made.json").write_text(json.dumps(result))


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset (12 per class, 64 px), made once per test session."""
    from kidney_lab.data.phantom import write_phantom_dataset

    with _made_once(tmp_path_factory, "phantoms") as (folder, made):
        if made is None:
            made = {"root": str(write_phantom_dataset(folder, per_class=12, size=64, seed=0))}
            _record(folder, made)
    return Path(made["root"])


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own default workspace, so no test writes into trained_models/."""
    workspace = tmp_path_factory.mktemp("workspace")
    monkeypatch.setenv("KIDNEY_LAB_WORKSPACE", str(workspace))
    return workspace


class TinyStudy:
    """A finished study of all five models, trained for one epoch at a tiny size.

    Attributes:
        data: the phantom dataset it was trained on.
        workspace: its workspace (shared, read-only for tests: copy a run before changing it).
        study_id: the study id.
        runs: registry name -> run folder.
    """

    # The smallest size all five accept: InceptionV3 needs 75 px, the ViT a multiple of its patch (16).
    IMAGE_SIZE = 80

    def __init__(self, data: Path, workspace: Path, study_id: str, runs: dict[str, Path]) -> None:
        self.data, self.workspace, self.study_id, self.runs = data, workspace, study_id, runs


@pytest.fixture(scope="session")
def tiny_study(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """All five models trained once per session (one epoch, random weights, 80 px).

    The models are barely trained: use it for files, shapes, pages and error paths, never
    to assert that a model is accurate.
    """
    from kidney_lab.training import config, engine

    with _made_once(tmp_path_factory, "tiny-study") as (workspace, made):
        if made is None:
            result = engine.train(
                config.TrainConfig(
                    data=phantom_root, epochs=1, image_size=TinyStudy.IMAGE_SIZE, weights="none",
                    batch_size=16, workspace=workspace, augmentation=False, patience=1,
                )
            )
            failed = [run.model for run in result.runs if run.status != "completed"]
            assert not failed, f"tiny study runs did not complete: {failed}"
            made = {"study_id": result.study_id, "runs": {run.model: str(run.path) for run in result.runs}}
            _record(workspace, made)
    return TinyStudy(phantom_root, workspace, made["study_id"], {name: Path(path) for name, path in made["runs"].items()})
