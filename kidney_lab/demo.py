"""The built-in demo: phantoms in the workspace and all five models trained on them.

``python -m kidney_lab demo`` (and the app's Home page) gives a first-time user a complete study
without any download: it draws CT-like phantoms zoomed onto the kidneys (see
:data:`kidney_lab.data.phantom.FIELDS_OF_VIEW`), splits them by near-duplicate cluster, and trains
every registry model from random initialisation at a small size, one after the other, each then
evaluated on the held-out test phantoms. The settings below were chosen so that this takes about
five minutes on two CPU cores while every model still learns the phantoms; the README lists what
they reached.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data import phantom
from kidney_lab.models import registry
from kidney_lab.training import engine


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo draws and how it trains (defaults: the shipped demo).

    Attributes:
        per_class: phantoms per class.
        image_size: phantom side and model input side, in pixels.
        field_of_view: ``"kidneys"`` (lesions large enough to learn in a minute) or
            ``"abdomen"``.
        epochs: epochs per model.
        batch_size: images per training step; small batches mean more steps per image, which
            is what a model trained from scratch in a minute needs.
        learning_rate: Adam's starting learning rate, decayed along a cosine.
        seed: phantoms, split and initialisation.
        models: registry names to train.
    """

    per_class: int = 400
    image_size: int = 96
    field_of_view: str = "kidneys"
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    models: tuple[str, ...] = registry.MODEL_NAMES


def prepare_data(settings: DemoSettings, workspace: Path) -> Path:
    """Write the demo phantoms into the workspace, or reuse them if they are already there.

    Returns:
        The dataset folder (the one holding the class folders).
    """
    out = workspace / workspace_module.DEMO_DATA_FOLDER
    wanted = {
        "generator_version": phantom.GENERATOR_VERSION,
        "per_class": settings.per_class,
        "size": settings.image_size,
        "seed": settings.seed,
        "field_of_view": settings.field_of_view,
    }
    parameters = out / phantom.PARAMETERS_FILE_NAME
    if parameters.is_file():
        try:
            stored = fileio.read_json(parameters)
        except (OSError, ValueError):
            stored = {}
        if all(stored.get(key) == value for key, value in wanted.items()):
            return out / stored["dataset_folder"]
    return phantom.write_phantom_dataset(
        out,
        settings.per_class,
        size=settings.image_size,
        seed=settings.seed,
        field_of_view=settings.field_of_view,
    )


def train_config(settings: DemoSettings, data: Path, workspace: Path) -> engine.TrainConfig:
    """The training settings of the demo study."""
    return engine.TrainConfig(
        data=data,
        models=settings.models,
        epochs=settings.epochs,
        image_size=settings.image_size,
        split="grouped",
        weights="none",
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_schedule="cosine",
        augmentation=False,
        seed=settings.seed,
        patience=settings.epochs,
        workspace=workspace,
    )


def run_demo(
    settings: DemoSettings | None = None,
    workspace: str | Path | None = None,
    listener: engine.Listener | None = None,
) -> engine.TrainResult:
    """Build the demo study: phantoms, split, and every model trained and evaluated.

    Running it again after it was interrupted resumes the unfinished study; after it finished,
    it trains a new study.

    Raises:
        kidney_lab.errors.KidneyLabError: the workspace cannot be written.
    """
    settings = settings or DemoSettings()
    folder = workspace_module.prepare_workspace(workspace)
    data = prepare_data(settings, folder)
    return engine.train(train_config(settings, data, folder), listener=listener)


def demo_studies(workspace: str | Path | None = None) -> dict[str, list[runs.RunRecord]]:
    """Runs trained on the workspace's demo phantoms, by study id (newest study first)."""
    folder = Path(workspace) if workspace is not None else workspace_module.default_workspace()
    demo_root = str((folder / workspace_module.DEMO_DATA_FOLDER).resolve())
    studies: dict[str, list[runs.RunRecord]] = {}
    for record in runs.list_runs(folder):
        data_root = str(record.info.get("data_root", ""))
        if record.study_id and data_root.startswith(demo_root):
            studies.setdefault(record.study_id, []).append(record)
    return studies


def summary(result: engine.TrainResult) -> dict[str, Any]:
    """Test accuracy and training seconds per model, from the stored run files."""
    rows = {}
    for outcome in result.runs:
        info = runs.read_run(outcome.path).info
        rows[outcome.model] = {
            "status": outcome.status,
            "test_accuracy": (outcome.metrics or {}).get("accuracy"),
            "train_seconds": info.get("train_seconds"),
        }
    return rows
