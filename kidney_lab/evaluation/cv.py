"""Pooled results of a grouped K-fold cross-validation.

Each fold of ``train --cv K`` is an ordinary run, evaluated on its own test fold (whole
near-duplicate clusters held out; see :mod:`kidney_lab.data.folds`). When every fold of a model
has completed, its K test predictions are pooled into one *out-of-fold* table that covers every
image of the dataset exactly once, and that table is scored like any other: accuracy, macro F1,
per-class metrics and intervals that resample clusters (series), never images. The per-fold
scores come from each fold's own stored ``metrics.json`` and are reported with their mean and
sample standard deviation.

The pooled result of one model in one study lives in
:func:`kidney_lab.runs.cv_result_folder` (``<workspace>/cv/<study_id>/<model>/``):
``predictions.csv`` (the out-of-fold table with ``cluster`` and ``fold`` columns),
``metrics.json`` (computed from it) and ``cv.json`` (the folds, their runs and scores), written
last, so a folder with ``cv.json`` saying ``complete`` always has the other two. Until every
fold exists, ``cv.json`` lists the folds and their states and says ``complete: false``; it is
written again, complete, by whichever process finishes the last fold (``train --fold I`` on
several machines). This module does not import TensorFlow.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import folds as folds_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store

CV_KIND = "cv"
FOLD_COLUMN = "fold"


class CrossValidationError(errors.KidneyLabError, ValueError):
    """The folds of a cross-validation cannot be pooled."""


def pool_study(
    workspace: str | os.PathLike[str], study_id: str, plan: folds_module.FoldPlan
) -> list[dict[str, Any]]:
    """Pool the out-of-fold predictions of every model of ``study_id`` trained on ``plan``.

    Returns:
        One summary per model (registry order of first appearance), see :func:`pool_model`.
    """
    by_model: dict[str, dict[int, runs.RunRecord]] = {}
    for record in reversed(runs.list_runs(workspace, study_id=study_id)):
        info = record.info
        if info.cv_id != plan.cv_id or record.model is None or info.fold is None:
            continue
        by_model.setdefault(record.model, {})[info.fold] = record
    return [pool_model(workspace, study_id, model, plan, folds) for model, folds in by_model.items()]


def pool_model(
    workspace: str | os.PathLike[str],
    study_id: str,
    model: str,
    plan: folds_module.FoldPlan,
    fold_runs: dict[int, runs.RunRecord],
) -> dict[str, Any]:
    """Write the pooled cross-validation of one model (or, with folds missing, its state).

    Args:
        workspace: the workspace of the runs.
        study_id: their study.
        model: the registry name of the model.
        plan: the fold plan they were trained on.
        fold_runs: the run of each fold, by fold number (missing folds may be absent).

    Returns:
        ``model``, ``complete``, ``runs`` (``fold``, ``run_id``, ``path``, ``status`` per fold),
        ``predictions`` and ``metrics`` (absolute paths; None until complete), ``images``,
        ``macro_f1``, ``macro_f1_interval`` (cluster bootstrap), ``accuracy``,
        ``folds_macro_f1`` (each fold's own test macro F1), ``macro_f1_mean`` and
        ``macro_f1_sd``.

    Raises:
        CrossValidationError: the completed folds do not cover the dataset's images exactly once,
            or a fold's stored predictions disagree with the plan's labels.
    """
    folder = runs.cv_result_folder(workspace, study_id, model)
    entries = []
    for fold in range(plan.folds):
        record = fold_runs.get(fold)
        entries.append({
            "fold": fold,
            "run_id": None if record is None else record.run_id,
            "path": None if record is None else str(record.path.resolve()),
            "status": "missing" if record is None else record.state,
        })
    complete = all(
        entry["status"] == runs.COMPLETED and fold_runs[entry["fold"]].has_predictions for entry in entries
    )
    first = next(iter(fold_runs.values()), None)
    summary: dict[str, Any] = {
        "cv_id": plan.cv_id,
        "study_id": study_id,
        "model": model,
        "display_name": None if first is None else first.info.display_name,
        "folds": plan.folds,
        "dataset_fingerprint": plan.fingerprint,
        "split_kind": CV_KIND,
        "runs": entries,
        "complete": complete,
        "predictions": None,
        "metrics": None,
    }
    if not complete:
        fileio.atomic_write_json(runs.cv_path(folder), summary)
        return summary

    fold_metrics = [store.load_metrics(fold_runs[fold].path) for fold in range(plan.folds)]
    table = pooled_predictions(plan, {fold: store.load_predictions(fold_runs[fold].path) for fold in range(plan.folds)})
    result = stats.metrics_with_intervals(table, CV_KIND)
    folds_f1 = [_score(stored, "macro_f1") for stored in fold_metrics]
    folds_accuracy = [_score(stored, "accuracy") for stored in fold_metrics]
    summary.update({
        "images": int(len(table)),
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "macro_f1_interval": result["intervals"]["macro_f1"],
        "accuracy_interval": result["intervals"]["accuracy"],
        "clusters": result["intervals"].get("clusters"),
        "clusters_per_class": result["clusters_per_class"],
        "few_clusters": result["few_clusters"],
        "warnings": plan.warnings,
        "folds_macro_f1": folds_f1,
        "folds_accuracy": folds_accuracy,
        "macro_f1_mean": _mean(folds_f1),
        "macro_f1_sd": _sd(folds_f1),
        "predictions": str((folder / runs.PREDICTIONS_FILE).absolute()),
        "metrics": str((folder / runs.METRICS_FILE).absolute()),
        "evaluated": fileio.now_iso(),
    })
    result.update({key: value for key, value in summary.items() if key not in result or key == "intervals"})
    result["evaluated_on"] = CV_KIND
    with fileio.atomic_path(folder / runs.PREDICTIONS_FILE) as temporary:
        table.to_csv(temporary, index=False)
    fileio.atomic_write_json(folder / runs.METRICS_FILE, result)
    fileio.atomic_write_json(runs.cv_path(folder), summary)
    return summary


def pooled_predictions(plan: folds_module.FoldPlan, tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The out-of-fold predictions table: each fold's test predictions, with the image's
    ``cluster`` and ``fold`` from the plan, in the plan's image order.

    Raises:
        CrossValidationError: an image missing or predicted twice, a fold that predicted an image
            outside its own test fold, or a true label that is not the plan's.
    """
    assignment = plan.assignment.set_index("path")
    parts = []
    for fold, table in sorted(tables.items()):
        checked = metrics_module.check_predictions(table, source=f"predictions of fold {fold}")
        part = checked.drop(columns=[column for column in (metrics_module.CLUSTER_COLUMN, FOLD_COLUMN)
                                     if column in checked.columns])
        paths = part["path"].astype(str)
        outside = ~paths.isin(assignment.index) | (assignment["fold"].reindex(paths).to_numpy() != fold)
        if outside.any():
            raise CrossValidationError(
                f"Fold {fold} predicted {int(outside.sum())} images outside its test fold "
                f"(such as {paths[outside].iloc[0]}); train that fold again."
            )
        parts.append(part.assign(**{FOLD_COLUMN: fold}))
    pooled = pd.concat(parts, ignore_index=True)
    paths = pooled["path"].astype(str)
    if paths.duplicated().any():
        raise CrossValidationError(f"{paths[paths.duplicated()].iloc[0]} is predicted by more than one fold.")
    missing = assignment.index.difference(paths)
    if len(missing):
        raise CrossValidationError(
            f"{len(missing)} images have no out-of-fold prediction (such as {missing[0]}); "
            "evaluate the folds again."
        )
    pooled = pooled.set_index(paths).loc[assignment.index].reset_index(drop=True)
    labels = assignment["label"].astype(str).to_numpy()
    if (pooled["true_label"].astype(str).to_numpy() != labels).any():
        raise CrossValidationError(
            "The folds' stored true labels are not the dataset's labels; evaluate the folds again."
        )
    pooled[metrics_module.CLUSTER_COLUMN] = assignment["cluster"].to_numpy()
    return pooled


def read_result(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cv.json`` of a pooled cross-validation folder.

    Raises:
        CrossValidationError: it is missing or not a JSON object.
    """
    path = runs.cv_path(folder)
    try:
        payload = fileio.read_json(path)
    except (OSError, ValueError) as error:
        raise CrossValidationError(f"{path} cannot be read ({errors.first_line(error)}).") from None
    if not isinstance(payload, dict):
        raise CrossValidationError(f"{path} does not hold a JSON object.")
    return payload


def _score(stored: dict[str, Any], key: str) -> float | None:
    value = stored.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def _sd(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.stdev(known) if len(known) >= 2 else None

