"""Hand-made predictions tables and file snapshots for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import stats

# The study of the hand-made run folders.
STUDY = "study-20260101-120000-ab12"

# Eight images, two per class, with probabilities in class order (Cyst, Normal, Stone, Tumor).
# Every expected number in test_metrics.py was worked out by hand from these rows.
KNOWN_ROWS = [
    ("Cyst", (0.7, 0.1, 0.1, 0.1)),     # right, confidence 0.7
    ("Cyst", (0.4, 0.5, 0.05, 0.05)),   # predicted Normal, confidence 0.5
    ("Normal", (0.1, 0.8, 0.05, 0.05)),  # right, 0.8
    ("Normal", (0.1, 0.6, 0.2, 0.1)),   # right, 0.6
    ("Stone", (0.05, 0.05, 0.9, 0.0)),  # right, 0.9
    ("Stone", (0.3, 0.1, 0.2, 0.4)),    # predicted Tumor, 0.4
    ("Tumor", (0.1, 0.1, 0.1, 0.7)),    # right, 0.7
    ("Tumor", (0.2, 0.2, 0.2, 0.4)),    # right, 0.4
]


def make_table(labels: list[str], probabilities: np.ndarray, prefix: str = "/data/img") -> pd.DataFrame:
    """A predictions table with paths ``<prefix>-<i>.png`` and predicted = argmax."""
    probabilities = np.asarray(probabilities, dtype=float)
    table = pd.DataFrame(
        {
            "path": [f"{prefix}-{index}.png" for index in range(len(labels))],
            "true_label": list(labels),
            "predicted_label": [CLASS_NAMES[index] for index in probabilities.argmax(axis=1)],
        }
    )
    for index, column in enumerate(metrics.probability_columns()):
        table[column] = probabilities[:, index]
    return table


def known_table() -> pd.DataFrame:
    """The eight hand-checked rows of :data:`KNOWN_ROWS`."""
    return make_table([label for label, _ in KNOWN_ROWS], [row for _, row in KNOWN_ROWS])


def random_table(rows: int, seed: int = 0, skill: float = 1.5, prefix: str = "/data/img") -> pd.DataFrame:
    """A plausible table: softmax of noise with ``skill`` added to the true class's logit."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CLASS_NAMES), rows)
    logits = rng.normal(size=(rows, len(CLASS_NAMES)))
    logits[np.arange(rows), truth] += skill
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return make_table([CLASS_NAMES[index] for index in truth], probabilities, prefix=prefix)


def snapshot(folder: Path) -> dict[str, bytes]:
    """The bytes of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def clustered_table(
    clusters_per_class: dict[str, int], images_per_cluster: int = 6, seed: int = 0, skill: float = 1.5,
    prefix: str = "/data/series",
) -> pd.DataFrame:
    """A plausible table of whole series: ``clusters_per_class[name]`` clusters of class ``name``,
    each of ``images_per_cluster`` images with one label, and a ``cluster`` column."""
    labels = [name for name in CLASS_NAMES for _ in range(clusters_per_class.get(name, 0) * images_per_cluster)]
    rng = np.random.default_rng(seed)
    truth = np.array([CLASS_NAMES.index(name) for name in labels])
    logits = rng.normal(size=(len(labels), len(CLASS_NAMES)))
    logits[np.arange(len(labels)), truth] += skill
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    table = make_table(labels, probabilities, prefix=prefix)
    table[metrics.CLUSTER_COLUMN] = np.arange(len(labels)) // images_per_cluster
    return table


def write_cv_result(
    workspace: Path, study_id: str, model: str, table: pd.DataFrame, *, cv_id: str = "cv-aaaa1111",
    fingerprint: str = "aaaa11112222", folds: int = 3, fold_runs: list[Path] | None = None, complete: bool = True,
) -> Path:
    """A pooled cross-validation folder in the format of ``evaluation/cv.py``: ``cv.json``,
    ``predictions.csv`` (``table`` with a ``fold`` column: cluster ``c`` in fold ``c % folds``)
    and ``metrics.json`` (:func:`stats.metrics_with_intervals` of the table plus the cv facts)."""
    folder = runs.cv_result_folder(workspace, study_id, model)
    pooled = table.assign(fold=table[metrics.CLUSTER_COLUMN].astype(int) % folds)
    per_fold = [metrics.compute_metrics(rows, intervals=False) for _, rows in pooled.groupby("fold")]
    scores = [item["macro_f1"] for item in per_fold]
    fold_runs = fold_runs or []
    facts = {
        "cv_id": cv_id, "study_id": study_id, "model": model, "display_name": model, "folds": folds,
        "runs": [
            {"fold": fold, "run_id": fold_runs[fold].name if fold < len(fold_runs) else f"run-{fold}",
             "path": str(fold_runs[fold]) if fold < len(fold_runs) else str(workspace / f"run-{fold}"),
             "status": "completed" if complete or fold else "running"}
            for fold in range(folds)
        ],
        "folds_macro_f1": scores, "folds_accuracy": [item["accuracy"] for item in per_fold],
        "macro_f1_mean": float(np.mean(scores)), "macro_f1_sd": float(np.std(scores, ddof=1)),
        "complete": complete, "dataset_fingerprint": fingerprint, "split_kind": "cv",
    }
    folder.mkdir(parents=True, exist_ok=True)
    if complete:
        pooled.to_csv(runs.predictions_path(folder), index=False)
        fileio.atomic_write_json(runs.metrics_path(folder), {**stats.metrics_with_intervals(pooled, "cv"), **facts})
    fileio.atomic_write_json(runs.cv_path(folder), facts)
    return folder


def fake_run(
    workspace: Path,
    model: str,
    table: pd.DataFrame | None,
    *,
    study: str = STUDY,
    split: str = "grouped",
    fingerprint: str = "aaaa11112222",
) -> Path:
    """A finished run folder whose test predictions are ``table`` (none if None)."""
    info = {
        "model": model, "study_id": study, "split_strategy": split, "dataset_fingerprint": fingerprint,
        "image_size": 32, "weights": "random", "epochs_trained": 2, "train_seconds": 3.5,
        "parameters": 1234, "test_with_duplicate_in_train": 7 if split == "random" else 0,
    }
    path = runs.create_run(workspace, runs.new_run_id(model), info)
    if table is not None:
        write_evaluation(path, runs.TEST_SOURCE, table, split_kind=split, fingerprint=fingerprint)
    runs.mark_finished(path, runs.COMPLETED)
    return path


def write_evaluation(path: Path, source: str, table: pd.DataFrame, **stored) -> None:
    """Store ``table`` as evaluation ``source`` of the run at ``path``, with a small metrics.json."""
    with fileio.atomic_path(runs.predictions_path(path, source)) as temporary:
        table.to_csv(temporary, index=False)
    fileio.atomic_write_json(
        runs.metrics_path(path, source), {"ms_per_image_batch_1": 2.5, "ms_per_image_batch_32": 0.5, "model_bytes": 4096, **stored}
    )
