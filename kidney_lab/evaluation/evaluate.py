"""Predict a run's test images and store what was predicted and what it scores.

``evaluate_run`` writes the two files of the run-folder contract (see DESIGN.md):
``predictions.csv`` (one row per image) and ``metrics.json`` (everything derived from it).
Images are predicted in a fixed order and every prediction is stored next to its own path and
true label, so the metrics cannot be computed from predictions and labels that do not belong
to each other.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import pipeline
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.models import registry

EVALUATION_BATCH_SIZE = 32


def predict_frame(
    model: keras.Model, frame: pd.DataFrame, image_size: int, batch_size: int = EVALUATION_BATCH_SIZE
) -> pd.DataFrame:
    """Predict every image of ``frame`` (columns ``path``, ``label``) in order.

    Returns:
        A predictions table (see :mod:`kidney_lab.evaluation.metrics`) with one row per input
        row, in the input's order.
    """
    dataset = pipeline.make_dataset(
        frame, image_size, batch_size=batch_size, training=False, cache=False, with_paths=True
    )
    paths: list[str] = []
    chunks: list[np.ndarray] = []
    for images, _, batch_paths in dataset:
        chunks.append(np.asarray(model.predict_on_batch(images), dtype=np.float64))
        paths.extend(path.decode("utf-8") for path in batch_paths.numpy())
    probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(classes.CLASS_NAMES)))
    by_path = dict(zip(frame["path"].astype(str), frame["label"].astype(str)))
    table = pd.DataFrame(
        {
            "path": paths,
            "true_label": [by_path[path] for path in paths],
            "predicted_label": [classes.CLASS_NAMES[index] for index in probabilities.argmax(axis=1)],
        }
    )
    for index, column in enumerate(metrics_module.probability_columns()):
        table[column] = probabilities[:, index]
    return table


def evaluate_run(run_dir: str | os.PathLike[str], model: keras.Model | None = None) -> dict[str, Any]:
    """Predict the run's own test split and store ``predictions.csv`` and ``metrics.json``.

    Args:
        run_dir: a run folder with ``run.json`` (naming its split) and ``model.keras``.
        model: the loaded model, to skip loading it again; by default ``model.keras`` is loaded
            with ``safe_mode=True``.

    Returns:
        The metrics that were stored.

    Raises:
        kidney_lab.models.registry.ModelLoadError: no usable model file.
        kidney_lab.errors.SplitError: the run's split cannot be read.
    """
    folder = Path(run_dir)
    info = fileio.read_json(folder / runs.RUN_FILE)
    workspace = Path(info["workspace"])
    data_split = split_module.load_split(workspace, info["split_id"], root=info["data_root"])
    test = data_split.subset("test")
    if test.empty:
        raise errors.SplitError(f"Split {info['split_id']} has no test images.")
    if model is None:
        model = registry.load_model(folder / runs.MODEL_FILE)
    started = time.perf_counter()
    table = predict_frame(model, test, int(info["image_size"]))
    seconds = time.perf_counter() - started
    result = metrics_module.compute_metrics(table)
    result.update(
        {
            "run_id": info.get("run_id"),
            "model": info.get("model"),
            "evaluated_on": "test",
            "split_id": info["split_id"],
            "split_strategy": data_split.strategy,
            "test_with_duplicate_in_train": data_split.leakage("test")["exact_or_near"],
            "prediction_seconds": seconds,
        }
    )
    with fileio.atomic_path(folder / runs.PREDICTIONS_FILE) as temporary:
        table.to_csv(temporary, index=False)
    fileio.atomic_write_json(folder / runs.METRICS_FILE, result)
    return result
