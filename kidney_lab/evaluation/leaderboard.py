"""The leaderboard: one row per run and evaluation, ranked only among comparable rows.

Scores measured on different images cannot be ranked against each other: a model tested on a
random split with leaked near-duplicates, one tested on a grouped split and one tested on an
external folder answer different questions. Every row therefore carries a
``comparable_group``, a short hash of the sorted paths of the images it was evaluated on, and
``rank`` orders rows (by macro F1, then accuracy) only inside their group. Because a rank
alone hides how small a difference may be, ``mcnemar_p_vs_best`` gives the exact McNemar p-value
of each row against the first row of its group (see :mod:`kidney_lab.evaluation.stats`).

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

import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.models import registry

SPLIT_KINDS = ("random", "grouped", store.EXTERNAL_KIND)
# The explanation method whose faithfulness scores the leaderboard shows.
FAITHFULNESS_METHOD = "gradcam"

COLUMNS = (
    "comparable_group", "rank", "mcnemar_p_vs_best", "run_id", "model", "display_name", "study_id", "status",
    "evaluated_on", "split", "dataset_fingerprint", "images",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high",
    "balanced_accuracy", "macro_auc", "ece", "loss", "test_with_duplicate_in_train",
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
) -> pd.DataFrame:
    """The leaderboard of the runs in ``workspace``.

    Args:
        workspace: the workspace (default: :func:`kidney_lab.workspace.default_workspace`).
        study_id: only runs of this study.
        split: only rows evaluated on this kind of split: ``"random"``, ``"grouped"`` or
            ``"external"``.
        fingerprint: only rows evaluated on the dataset with this fingerprint.
        include_external: also rows for evaluations of external folders.
        include_unevaluated: also one row (without scores) for each run that has no stored
            evaluation (running, failed, cancelled before evaluation).

    Returns:
        A DataFrame with the columns of :data:`COLUMNS`: one row per (run, evaluation),
        sorted by comparable group, then rank. ``rank`` is 1 for the best row of its group
        (ties share a rank) and missing for rows without scores; ``mcnemar_p_vs_best`` is the
        exact McNemar p-value against the group's first row (missing for that row).
        ``attrs["note"]`` says how
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
        evaluations = [
            item for item in store.list_evaluations(record.path)
            if include_external or item["source"] == runs.TEST_SOURCE
        ]
        if not evaluations and include_unevaluated:
            rows.append(_run_columns(record))
        for evaluation in evaluations:
            try:
                table = store.load_predictions(record.path, evaluation["source"])
                rows.append(_row(record, evaluation["source"], table))
                predictions[(record.run_id, evaluation["source"])] = table
            except (OSError, ValueError, KeyError, TypeError, errors.KidneyLabError) as error:
                skipped.append(_skip(record.path, f"evaluation {evaluation['source']}: {error}"))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if split is not None:
        table = table[table["split"] == split]
    if fingerprint is not None:
        table = table[table["dataset_fingerprint"] == fingerprint]
    table = _rank(table.reset_index(drop=True))
    table["mcnemar_p_vs_best"] = _p_values_against_best(table, predictions)
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


def _row(record: runs.RunRecord, source: str, predictions: pd.DataFrame) -> dict[str, Any]:
    """The leaderboard row of one stored evaluation, scores recomputed from its predictions."""
    scores = metrics_module.compute_metrics(predictions)
    try:
        stored = store.load_metrics(record.path, source)
    except store.EvaluationError:
        stored = {}
    info = record.info
    external = source != runs.TEST_SOURCE
    row = _run_columns(record)
    row.update(
        {
            "comparable_group": fileio.short_hash(*sorted(predictions["path"].astype(str)), length=8),
            "evaluated_on": source,
            "split": store.EXTERNAL_KIND if external else (stored.get("split_kind") or info.split_strategy),
            "dataset_fingerprint": source if external else (stored.get("fingerprint") or info.dataset_fingerprint),
            "images": scores["images"],
            "accuracy": scores["accuracy"],
            "accuracy_ci_low": scores["intervals"]["accuracy"][0],
            "accuracy_ci_high": scores["intervals"]["accuracy"][1],
            "macro_f1": scores["macro_f1"],
            "macro_f1_ci_low": scores["intervals"]["macro_f1"][0],
            "macro_f1_ci_high": scores["intervals"]["macro_f1"][1],
            "balanced_accuracy": scores["balanced_accuracy"],
            "macro_auc": scores["macro_roc_auc"],
            "ece": scores["ece"],
            "loss": scores["loss"],
            "test_with_duplicate_in_train": stored.get(
                "test_with_duplicate_in_train", None if external else info.test_with_duplicate_in_train
            ),
            "model_bytes": stored.get("model_bytes"),
            "ms_per_image_batch_1": stored.get("ms_per_image_batch_1"),
            "ms_per_image_batch_32": stored.get("ms_per_image_batch_32"),
        }
    )
    # explain-eval stores the scores of an external folder next to that evaluation.
    row.update(_faithfulness(record.path, source, row["dataset_fingerprint"]))
    return row


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
) -> list[float | None]:
    """McNemar's exact p-value of each ranked row against the first row of its group."""
    values: list[float | None] = [None] * len(table)
    best: dict[str, pd.DataFrame] = {}
    for position, row in enumerate(table.itertuples(index=False)):
        if pd.isna(row.rank):
            continue
        current = predictions[(row.run_id, row.evaluated_on)]
        if row.comparable_group not in best:
            best[row.comparable_group] = current
            continue
        try:
            values[position] = stats.mcnemar(best[row.comparable_group], current)["p_value"]
        except metrics_module.PredictionsError:
            continue  # The same images with other labels: not a paired comparison.
    return values


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
