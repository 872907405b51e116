"""The leaderboard: one row per run and evaluation, ranked only among comparable rows.

Scores measured on different images cannot be ranked against each other: a model tested on a
random split with leaked near-duplicates, one tested on a grouped split and one tested on an
external folder answer different questions. Every row therefore carries a
``comparable_group``, a short hash of the sorted paths of the images it was evaluated on, and
``rank`` orders rows (by macro F1, then accuracy) only inside their group. Because a rank
alone hides how small a difference may be, ``p_vs_best`` gives the p-value of each row against
the first row of its group, of the test ``p_test`` names (see
:func:`kidney_lab.evaluation.stats.paired_comparison`): the paired cluster test where both rows
know their near-duplicate clusters and the split is not random, McNemar's exact test otherwise
(``mcnemar_p_vs_best`` holds the McNemar p-values only). The "best" row of a group is its best
single model: a study's ensemble may rank first, but every row, the ensemble's too, is compared
with the group's best run (``compared_with`` names it).

The intervals follow the same rule (:func:`kidney_lab.evaluation.stats.metrics_with_intervals`):
``interval_resampling`` says whether they resample clusters (series) or images, ``clusters`` how
many clusters, ``clusters_per_class`` how many series each class's score rests on, and
``cluster_warning`` names the classes that rest on fewer than three.

Besides one row per run and evaluation, each pooled cross-validation
(:func:`kidney_lab.runs.list_cv_results`: one model's out-of-fold predictions, every image once)
is a row of split ``"cv"``, with its fold plan's ``cv_id``, its ``folds`` and the mean and sample
standard deviation of the folds' macro F1, each fold scored from its own rows of the pooled table.
Its comparable group also holds the cv id, so it is ranked only against cross-validations of the
same fold plan on the same images.

Each study's calibrated ensemble (:func:`kidney_lab.runs.list_ensembles`; see
:mod:`kidney_lab.evaluation.study_ensemble`) is a row of model ``"ensemble"`` with its
``members`` (run ids), scored from its own ``predictions.csv`` on its members' test images, so
it falls in the comparable group of its members and is ranked among them.

Every score is recomputed from the stored ``predictions.csv`` (so the table cannot disagree
with the predictions); facts that only evaluation could measure (parameters, file size,
inference time) come from ``metrics.json``, and training facts from ``run.json``. A run folder
that is damaged or vanishes while the table is built is skipped and listed in
``attrs["skipped"]``, never fatal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data import phantom
from kidney_lab.evaluation import cv as cv_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.evaluation import study_ensemble
from kidney_lab.evaluation import trust
from kidney_lab.models import registry

CV_KIND = cv_module.CV_KIND
SPLIT_KINDS = ("random", "grouped", store.EXTERNAL_KIND, CV_KIND)
# The explanation method whose faithfulness scores the leaderboard shows.
FAITHFULNESS_METHOD = "gradcam"

COLUMNS = (
    "comparable_group", "rank", "p_vs_best", "p_test", "mcnemar_p_vs_best", "compared_with", "run_id", "model",
    "display_name", "study_id", "status", "members", "evaluated_on", "split", "dataset", "dataset_fingerprint", "images",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high",
    "interval_resampling", "clusters", "clusters_per_class", "few_clusters", "cluster_warning", "degenerate",
    "cv_id", "folds", "macro_f1_fold_mean", "macro_f1_fold_sd",
    "balanced_accuracy", "macro_auc", "ece", "loss", "ood_flagged_share", "test_with_duplicate_in_train",
    "weights", "image_size", "epochs", "train_seconds", "params", "model_bytes",
    "ms_per_image_batch_1", "ms_per_image_batch_32", "pointing_game", "energy_in_mask", "path",
)

# Whether a higher ("max") or lower ("min") value of a column is better, for best_in_group.
BEST_DIRECTIONS = {
    "accuracy": "max", "macro_f1": "max", "balanced_accuracy": "max", "macro_auc": "max",
    "ece": "min", "loss": "min", "ms_per_image_batch_1": "min", "ms_per_image_batch_32": "min",
    "pointing_game": "max", "energy_in_mask": "max",
}


def leaderboard(
    workspace: str | os.PathLike[str] | None = None,
    *,
    study_id: str | None = None,
    split: str | None = None,
    fingerprint: str | None = None,
    include_external: bool = True,
    include_unevaluated: bool = False,
    include_folds: bool = False,
) -> pd.DataFrame:
    """The leaderboard of the runs in ``workspace``.

    Args:
        workspace: the workspace (default: :func:`kidney_lab.workspace.default_workspace`).
        study_id: only runs of this study.
        split: only rows evaluated on this kind of split: ``"random"``, ``"grouped"``,
            ``"external"`` or ``"cv"`` (pooled cross-validations).
        fingerprint: only rows evaluated on the dataset with this fingerprint.
        include_external: also rows for evaluations of external folders.
        include_unevaluated: also one row (without scores) for each run that has no stored
            evaluation (running, failed, cancelled before evaluation) and for each
            cross-validation whose folds are not all done.
        include_folds: also the rows of each cross-validation fold's own run (by default a
            cross-validation shows as its pooled ``cv`` row only).

    Returns:
        A DataFrame with the columns of :data:`COLUMNS`: one row per (run, evaluation) and per
        pooled cross-validation, sorted by comparable group, then rank. ``rank`` is 1 for the
        best row of its group (ties share a rank) and missing for rows without scores;
        ``p_vs_best`` is the p-value against the group's best single model, the first row that
        is not an ensemble (``compared_with`` names it; missing for that row), of the test
        ``p_test`` names (``"cluster"`` or ``"mcnemar"``); ``mcnemar_p_vs_best`` is that
        p-value where the test was McNemar's. ``members`` lists an ensemble row's runs. ``clusters_per_class`` is a dict (class ->
        clusters) and ``few_clusters`` a list of classes, both missing where the predictions
        do not know their clusters. ``ood_flagged_share`` is the share of the evaluated images
        the run's OOD detector flagged (from the predictions' ``ood_flagged`` column; missing
        without a detector). ``attrs["note"]`` says how
        many comparable groups there are, ``attrs["groups"]`` describes each, and
        ``attrs["skipped"]`` lists ``{"run_id", "path", "reason"}`` for every run or evaluation
        that could not be read.

    Raises:
        kidney_lab.errors.ConfigError: an unknown ``split``.
    """
    if split is not None and split not in SPLIT_KINDS:
        raise errors.ConfigError(f"Unknown split {split!r}; filter by one of {', '.join(SPLIT_KINDS)}.")
    base = Path(workspace) if workspace is not None else workspace_module.default_workspace()
    rows: list[dict[str, Any]] = []
    predictions: dict[tuple[str, str], pd.DataFrame] = {}
    skipped: list[dict[str, str]] = []
    for record in runs.list_runs(base, study_id=study_id):
        if record.state == runs.BROKEN:
            skipped.append(_skip(record.path, record.problem or "the run folder cannot be read"))
            continue
        if record.info.fold is not None and not include_folds:
            continue
        evaluations = [
            item for item in store.list_evaluations(record.path)
            if include_external or item["source"] == runs.TEST_SOURCE
        ]
        if not evaluations and include_unevaluated:
            rows.append(_run_columns(record))
        for evaluation in evaluations:
            try:
                table = store.load_predictions(record.path, evaluation["source"])
                rows.append(_row(base, record, evaluation["source"], table))
                predictions[(record.run_id, evaluation["source"])] = table
            except (OSError, ValueError, KeyError, TypeError, errors.KidneyLabError) as error:
                skipped.append(_skip(record.path, f"evaluation {evaluation['source']}: {error}"))
    for folder in runs.list_cv_results(base):
        try:
            summary = cv_module.read_result(folder)
            if study_id is not None and summary.get("study_id") != study_id:
                continue
            if not summary.get("complete"):
                if include_unevaluated:
                    rows.append(_cv_columns(base, folder, summary))
                continue
            table = store.read_predictions(runs.predictions_path(folder))
            row = _cv_row(base, folder, summary, table)
            rows.append(row)
            predictions[(row["run_id"], row["evaluated_on"])] = table
        except (OSError, ValueError, KeyError, TypeError, errors.KidneyLabError) as error:
            skipped.append({"run_id": _cv_row_id(base, folder), "path": str(folder), "reason": f"cross-validation: {error}"})
    for folder in runs.list_ensembles(base):
        try:
            recipe = study_ensemble.read_recipe(folder)
            if study_id is not None and recipe.get("study_id") != study_id:
                continue
            table = study_ensemble.predictions_table(folder)
            row = _ensemble_row(base, folder, recipe, table)
            rows.append(row)
            predictions[(row["run_id"], row["evaluated_on"])] = table
        except (OSError, ValueError, KeyError, TypeError, errors.KidneyLabError) as error:
            skipped.append({"run_id": _cv_row_id(base, folder), "path": str(folder), "reason": f"ensemble: {error}"})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if split is not None:
        table = table[table["split"] == split]
    if fingerprint is not None:
        table = table[table["dataset_fingerprint"] == fingerprint]
    table = _rank(table.reset_index(drop=True))
    table["p_vs_best"], table["p_test"], table["compared_with"] = _p_values_against_best(table, predictions)
    table["mcnemar_p_vs_best"] = table["p_vs_best"].where(table["p_test"] == "mcnemar")
    table.attrs["groups"] = _describe_groups(table)
    table.attrs["note"] = _note(table)
    table.attrs["skipped"] = skipped
    return table


def best_in_group(table: pd.DataFrame, directions: dict[str, str] | None = None) -> pd.DataFrame:
    """Which cells hold the best value of their column among the rows of their comparable group.

    A score is only "best" against rows measured on the same images, so each group is judged
    alone, and a group with fewer than two scored rows has no best. Tied rows are all best.

    Args:
        table: a leaderboard (see :func:`leaderboard`), possibly with rows filtered out.
        directions: column -> ``"max"`` or ``"min"`` (default :data:`BEST_DIRECTIONS`);
            columns missing from ``table`` are left out.

    Returns:
        A boolean DataFrame with ``table``'s index and one column per judged column.
    """
    chosen = {column: way for column, way in (directions or BEST_DIRECTIONS).items() if column in table.columns}
    best = pd.DataFrame(False, index=table.index, columns=list(chosen))
    for _group, members in table.groupby("comparable_group", sort=False):
        for column, way in chosen.items():
            values = pd.to_numeric(members[column], errors="coerce").dropna()
            if len(values) < 2:
                continue
            target = values.max() if way == "max" else values.min()
            best.loc[values.index[values == target], column] = True
    return best


def dataset_name(
    folder: str | os.PathLike[str] | None, fingerprint: str | None, workspace: str | os.PathLike[str] | None = None
) -> str | None:
    """What a dataset is called on the pages: ``"phantoms (demo)"`` for the workspace's demo
    phantoms, ``"phantoms (<folder>)"`` for another phantom set (kidney_lab's one answer,
    :func:`kidney_lab.data.phantom.phantom_root`), else the folder's name and the first six
    characters of its fingerprint, ``"ct-kidney-sample (3f9a1c)"``; the fingerprint alone
    without a folder, ``None`` without either.

    Args:
        folder: the dataset folder (a run's ``data_root``, an evaluated folder).
        fingerprint: its dataset fingerprint.
        workspace: the workspace whose demo folder is "the demo" (default: the default one).
    """
    short = str(fingerprint)[:6] if fingerprint else None
    root = phantom.phantom_root(folder)
    if root is not None:
        base = Path(workspace) if workspace is not None else workspace_module.default_workspace()
        demo = (base / workspace_module.DEMO_DATA_FOLDER).resolve()
        return "phantoms (demo)" if root == demo else f"phantoms ({root.name})"
    if isinstance(folder, (str, os.PathLike)) and Path(folder).name:
        return f"{Path(folder).name} ({short})" if short else Path(folder).name
    return short


def _row(base: Path, record: runs.RunRecord, source: str, predictions: pd.DataFrame) -> dict[str, Any]:
    """The leaderboard row of one stored evaluation, scores recomputed from its predictions."""
    try:
        stored = store.load_metrics(record.path, source)
    except store.EvaluationError:
        stored = {}
    info = record.info
    external = source != runs.TEST_SOURCE
    kind = store.split_kind(record.path, source, stored)
    row = _run_columns(record)
    row.update(
        {
            "comparable_group": store.images_key(predictions),
            "evaluated_on": source,
            "split": kind,
            "dataset_fingerprint": source if external else (stored.get("fingerprint") or info.dataset_fingerprint),
            **_score_columns(predictions, kind),
            "cv_id": stored.get("cv_id"),
            "test_with_duplicate_in_train": stored.get(
                "test_with_duplicate_in_train", None if external else info.test_with_duplicate_in_train
            ),
            "model_bytes": stored.get("model_bytes"),
            "ms_per_image_batch_1": stored.get("ms_per_image_batch_1"),
            "ms_per_image_batch_32": stored.get("ms_per_image_batch_32"),
        }
    )
    row["dataset"] = dataset_name(stored.get("data") if external else info.data_root, row["dataset_fingerprint"], base)
    # explain-eval stores the scores of an external folder next to that evaluation.
    row.update(_faithfulness(record.path, source, row["dataset_fingerprint"]))
    return row


def _score_columns(predictions: pd.DataFrame, split_kind: str | None) -> dict[str, Any]:
    """The score, interval and cluster columns of a row, from its predictions table."""
    scores = stats.metrics_with_intervals(predictions, split_kind)
    intervals = scores["intervals"]
    return {
        "images": scores["images"],
        "accuracy": scores["accuracy"],
        "accuracy_ci_low": intervals["accuracy"][0],
        "accuracy_ci_high": intervals["accuracy"][1],
        "macro_f1": scores["macro_f1"],
        "macro_f1_ci_low": intervals["macro_f1"][0],
        "macro_f1_ci_high": intervals["macro_f1"][1],
        "interval_resampling": intervals["resampling"],
        "clusters": intervals["clusters"],
        "clusters_per_class": scores["clusters_per_class"],
        "few_clusters": scores["few_clusters"],
        "cluster_warning": " ".join(stats.few_cluster_warnings(scores["clusters_per_class"])) or None,
        "degenerate": metrics_module.degenerate(scores),
        "balanced_accuracy": scores["balanced_accuracy"],
        "macro_auc": scores["macro_roc_auc"],
        "ece": scores["ece"],
        "loss": scores["loss"],
        "ood_flagged_share": trust.flagged_share(predictions),
    }


def _cv_row_id(base: Path, folder: Path) -> str:
    """The id of a row that is not one run: its folder under the workspace, ``cv/<study_id>/<model>``
    for a cross-validation, ``ensembles/<study_id>`` for an ensemble."""
    try:
        return folder.relative_to(base).as_posix()
    except ValueError:
        return folder.as_posix()


def _cv_columns(base: Path, folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The columns that describe a cross-validation itself, from ``cv.json`` and its fold runs."""
    model = summary.get("model") or folder.name
    try:
        display_name = registry.get_spec(model).display_name
    except errors.ConfigError:
        display_name = summary.get("display_name")
    fold_runs = [entry for entry in summary.get("runs") or [] if isinstance(entry, dict)]
    infos = []
    for entry in fold_runs:
        try:
            infos.append(runs.read_info(entry["path"]))
        except (KeyError, TypeError, runs.RunNotFoundError):
            continue
    first = infos[0] if infos else None
    dataset = dataset_name(None if first is None else first.data_root, summary.get("dataset_fingerprint"), base)
    seconds = [info.train_seconds for info in infos if info.train_seconds is not None]
    done = sum(entry.get("status") == runs.COMPLETED for entry in fold_runs)
    return {
        "run_id": _cv_row_id(base, folder),
        "model": model,
        "display_name": display_name,
        "study_id": summary.get("study_id") or folder.parent.name,
        "status": runs.COMPLETED if summary.get("complete") else f"{done} of {summary.get('folds')} folds done",
        "evaluated_on": CV_KIND,
        "split": CV_KIND,
        "dataset": dataset,
        "dataset_fingerprint": summary.get("dataset_fingerprint"),
        "cv_id": summary.get("cv_id"),
        "folds": summary.get("folds"),
        "weights": None if first is None else first.weights,
        "image_size": None if first is None else first.image_size,
        "params": None if first is None else first.parameters,
        "train_seconds": float(sum(seconds)) if len(seconds) == len(fold_runs) and seconds else None,
        "path": str(folder),
    }


def _cv_row(base: Path, folder: Path, summary: dict[str, Any], predictions: pd.DataFrame) -> dict[str, Any]:
    """The leaderboard row of a pooled cross-validation: pooled scores with cluster intervals,
    and the mean and sample standard deviation of its folds' macro F1."""
    row = _cv_columns(base, folder, summary)
    paths = sorted(predictions["path"].astype(str))
    folds = _fold_macro_f1(predictions, summary)
    row.update(
        {
            "comparable_group": fileio.short_hash(CV_KIND, str(summary.get("cv_id")), *paths, length=8),
            **_score_columns(predictions, CV_KIND),
            "macro_f1_fold_mean": float(np.mean(folds)) if folds else None,
            "macro_f1_fold_sd": float(np.std(folds, ddof=1)) if len(folds) > 1 else None,
            "test_with_duplicate_in_train": _stored_metrics(folder).get("test_with_duplicate_in_train"),
        }
    )
    return row


def _ensemble_row(base: Path, folder: Path, recipe: dict[str, Any], predictions: pd.DataFrame) -> dict[str, Any]:
    """The leaderboard row of a study's ensemble, scores recomputed from its own predictions; it
    has the comparable group of its members (the same images), its parameters and training time
    are its members' sums (as read from their ``run.json``)."""
    stored = _stored_metrics(folder)
    kind = recipe.get("split_kind") or stored.get("split_kind")
    members = [str(member) for member in recipe["members"]]
    infos = []
    for member in members:
        try:
            infos.append(runs.read_info(runs.run_path(base, member)))
        except (runs.RunError, errors.KidneyLabError):
            continue
    complete = len(infos) == len(members)
    params = [info.parameters for info in infos if info.parameters is not None]
    seconds = [info.train_seconds for info in infos if info.train_seconds is not None]
    return {
        "comparable_group": store.images_key(predictions),
        "run_id": _cv_row_id(base, folder),
        "model": study_ensemble.ENSEMBLE_MODEL,
        "display_name": study_ensemble.display_name(len(members)),
        "study_id": recipe.get("study_id") or folder.name,
        "status": runs.COMPLETED,
        "members": members,
        "evaluated_on": runs.TEST_SOURCE,
        "split": kind,
        "dataset": dataset_name(infos[0].data_root if infos else None, stored.get("fingerprint"), base),
        "dataset_fingerprint": stored.get("fingerprint"),
        **_score_columns(predictions, kind),
        "test_with_duplicate_in_train": stored.get("test_with_duplicate_in_train"),
        "params": int(sum(params)) if complete and len(params) == len(members) else None,
        "train_seconds": float(sum(seconds)) if complete and len(seconds) == len(members) else None,
        "path": str(folder),
    }


def _fold_macro_f1(predictions: pd.DataFrame, summary: dict[str, Any]) -> list[float]:
    """Each fold's macro F1, from its rows of the pooled table (``fold`` column), or from
    ``cv.json``'s ``folds_macro_f1`` for a table without that column."""
    if cv_module.FOLD_COLUMN not in predictions.columns:
        return [float(value) for value in summary.get("folds_macro_f1") or [] if value is not None]
    return [
        metrics_module.compute_metrics(rows, intervals=False)["macro_f1"]
        for _fold, rows in predictions.groupby(cv_module.FOLD_COLUMN, sort=True)
    ]


def _stored_metrics(folder: Path) -> dict[str, Any]:
    """The ``metrics.json`` beside a pooled table, or ``{}`` when it cannot be read."""
    try:
        payload = fileio.read_json(runs.metrics_path(folder))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _run_columns(record: runs.RunRecord) -> dict[str, Any]:
    """The columns that describe the run itself, from ``run.json``."""
    info = record.info
    try:
        display_name = registry.get_spec(record.model or "").display_name
    except errors.ConfigError:
        display_name = info.display_name
    return {
        "run_id": record.run_id,
        "model": record.model,
        "display_name": display_name,
        "study_id": record.study_id,
        "status": record.state,
        "weights": info.weights,
        "image_size": info.image_size,
        "epochs": info.epochs_trained,
        "train_seconds": info.train_seconds,
        "params": info.parameters,
        "path": str(record.path),
    }


def _faithfulness(run_dir: Path, source: str, fingerprint: str | None) -> dict[str, Any]:
    """Pointing game and energy in the lesion mask of Grad-CAM, when they were measured on the
    data of this row (``faithfulness.json`` without a fingerprint counts as the test split)."""
    empty = {"pointing_game": None, "energy_in_mask": None}
    external = source != runs.TEST_SOURCE
    try:
        payload = runs.read_faithfulness(run_dir, source)
    except runs.EvaluationError:
        return empty
    if payload is None or FAITHFULNESS_METHOD not in payload["methods"]:
        return empty
    measured_on, method = payload.get("fingerprint"), payload["methods"][FAITHFULNESS_METHOD]
    if (measured_on is None and external) or (measured_on is not None and measured_on != fingerprint):
        return empty
    return {key: method.get(key) if isinstance(method, dict) else None for key in empty}


def _rank(table: pd.DataFrame) -> pd.DataFrame:
    """Sort by group (largest first) and rank rows by macro F1, then accuracy, within a group."""
    if table.empty:
        return table
    sizes = table.groupby("comparable_group", dropna=False)["run_id"].transform("size")
    ordered = table.assign(_size=sizes).sort_values(
        ["_size", "comparable_group", "macro_f1", "accuracy", "run_id"],
        ascending=[False, True, False, False, True],
        na_position="last",
        kind="stable",
    )
    scored = ordered["macro_f1"].notna() & ordered["comparable_group"].notna()
    position = ordered[scored].groupby("comparable_group").cumcount() + 1
    ordered["rank"] = pd.Series(position, dtype="Int64")
    # Rows with the same macro F1 and accuracy in one group share the better rank.
    ties = ordered[scored].groupby(["comparable_group", "macro_f1", "accuracy"])["rank"].transform("min")
    ordered.loc[scored, "rank"] = ties
    return ordered.drop(columns="_size").reset_index(drop=True)


def _p_values_against_best(
    table: pd.DataFrame, predictions: dict[tuple[str, str], pd.DataFrame]
) -> tuple[list[float | None], list[str | None], list[str | None]]:
    """Each ranked row's p-value against the best single model of its group (its first ranked
    row that is not an ensemble), the test that gave it (see
    :func:`kidney_lab.evaluation.stats.paired_comparison`) and that row's id."""
    values: list[float | None] = [None] * len(table)
    tests: list[str | None] = [None] * len(table)
    against: list[str | None] = [None] * len(table)
    best: dict[str, tuple[tuple[str, str], str | None]] = {}
    for row in table.itertuples(index=False):
        if not pd.isna(row.rank) and row.model != study_ensemble.ENSEMBLE_MODEL:
            best.setdefault(row.comparable_group, ((row.run_id, row.evaluated_on), row.split))
    for position, row in enumerate(table.itertuples(index=False)):
        if pd.isna(row.rank) or row.comparable_group not in best:
            continue
        (first_id, first_source), first_kind = best[row.comparable_group]
        if (row.run_id, row.evaluated_on) == (first_id, first_source):
            continue
        first = predictions[(first_id, first_source)]
        current = predictions[(row.run_id, row.evaluated_on)]
        kind = "random" if "random" in (first_kind, row.split) else row.split
        try:
            result = stats.paired_comparison(first, current, kind)
        except metrics_module.PredictionsError:
            continue  # The same images with other labels or clusters: not a paired comparison.
        values[position], tests[position], against[position] = result["p_value"], result["test"], first_id
    return values, tests, against


def _describe_groups(table: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per comparable group: its id, images, rows, split kinds and fingerprints."""
    groups = []
    for group, members in table.dropna(subset=["comparable_group"]).groupby("comparable_group", sort=False):
        groups.append(
            {
                "comparable_group": group,
                "rows": int(len(members)),
                "images": int(members["images"].iloc[0]),
                "splits": sorted(members["split"].dropna().unique().tolist()),
                "dataset_fingerprints": sorted(members["dataset_fingerprint"].dropna().unique().tolist()),
                "datasets": sorted(members["dataset"].dropna().unique().tolist()),
            }
        )
    return groups


def _note(table: pd.DataFrame) -> str:
    """What the ranks mean, in one sentence a page can show above the table."""
    count = table["comparable_group"].nunique()
    scored = int(table["macro_f1"].notna().sum())
    if count == 0:
        return "No evaluated runs match; train or evaluate a run first."
    if count == 1:
        return f"All {scored} scored rows were evaluated on the same images (one comparable group); rank compares them all."
    return (
        f"{count} comparable groups: rows evaluated on different images are ranked only within their "
        "own group (same comparable_group = same images); never compare ranks across groups."
    )


def _skip(path: Path, reason: str) -> dict[str, str]:
    return {"run_id": path.name, "path": str(path), "reason": reason}
