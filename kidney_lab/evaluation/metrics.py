"""Metrics computed from a predictions table, with scikit-learn.

A predictions table has one row per image: ``path``, ``true_label``, ``predicted_label`` and one
probability column per class, ``prob_<Class>``, in the order of
:data:`kidney_lab.data.classes.CLASS_NAMES`. Every number a user sees is derived from such a
table, never from the order in which a data generator happened to yield images.

Besides the counts-based scores (accuracy, per-class precision, recall, specificity, F1) the
table's probabilities give one-vs-rest ROC and precision-recall curves, the expected
calibration error with its reliability bins, and the cross-entropy loss. Percentile bootstrap
intervals for accuracy and macro F1 resample whole rows (images) with a fixed seed, so the same
table always gets the same interval; the resamples are counted with one ``bincount`` per chunk
instead of a Python loop, so 2,000 resamples of 2,000 images take a fraction of a second.

The bootstrap works on resampling units, each carrying its own confusion counts
(:func:`unit_confusions`, :func:`resampled_scores`): here a unit is one image, and
:mod:`kidney_lab.evaluation.stats` uses the same code with near-duplicate clusters (series) as
units, since the slices of one series are not independent observations. A predictions table may
carry a ``cluster`` column (:data:`CLUSTER_COLUMN`) for that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sklearn.metrics

from kidney_lab import errors
from kidney_lab.data import classes

PROBABILITY_PREFIX = "prob_"
PREDICTION_COLUMNS = ("path", "true_label", "predicted_label") + tuple(
    PROBABILITY_PREFIX + name for name in classes.CLASS_NAMES
)
# Optional column of a predictions table: the near-duplicate cluster (roughly the CT series) of
# each image, as in the split manifest; the cluster statistics resample by it.
CLUSTER_COLUMN = "cluster"

# Probabilities are clipped to [EPSILON, 1] before the log of the cross-entropy.
EPSILON = 1e-7

# A stored predicted label must carry the highest probability of its row, within this much
# (ties and the rounding of a CSV round trip).
ARGMAX_TOLERANCE = 1e-6

CALIBRATION_BINS = 10
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
# A model is degenerate (flagged on the pages) when this share or more of its predictions is one
# class, or when its macro F1 is at or below this (four classes: 0.25 is guessing, one class
# for everything scores at most 0.2 against balanced labels).
DEGENERATE_SHARE = 0.9
CHANCE_MACRO_F1 = 0.30
# Resampled rows counted at once by the bootstrap (bounds its memory to a few tens of MB).
BOOTSTRAP_CHUNK_ROWS = 4_000_000


class PredictionsError(errors.KidneyLabError, ValueError):
    """A predictions table is missing columns or holds values that cannot be predictions."""


def probability_columns() -> list[str]:
    """The probability column names, in class order."""
    return [PROBABILITY_PREFIX + name for name in classes.CLASS_NAMES]


def check_predictions(table: pd.DataFrame, source: str = "predictions") -> pd.DataFrame:
    """Return ``table`` if it is a valid predictions table.

    Raises:
        PredictionsError: a missing column, an unknown label, a probability outside [0, 1] or
            not a number, rows whose probabilities do not sum to 1, a predicted label that is
            not the most probable class of its row, a path listed twice, or no rows.
    """
    missing = [column for column in PREDICTION_COLUMNS if column not in table.columns]
    if missing:
        raise PredictionsError(f"{source} lacks the column(s) {', '.join(missing)}.")
    if table.empty:
        raise PredictionsError(f"{source} has no rows.")
    for column in ("true_label", "predicted_label"):
        unknown = sorted(set(table[column].astype(str)) - set(classes.CLASS_NAMES))
        if unknown:
            raise PredictionsError(
                f"{source} has unknown labels in {column}: {', '.join(unknown[:5])}; "
                f"expected {', '.join(classes.CLASS_NAMES)}."
            )
    probabilities = pd.DataFrame(table[probability_columns()]).apply(pd.to_numeric, errors="coerce")
    values = probabilities.to_numpy(dtype=float)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise PredictionsError(f"{source} has probabilities that are not numbers in [0, 1].")
    if not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        raise PredictionsError(f"{source} has rows whose class probabilities do not sum to 1.")
    predicted = _class_indices(table["predicted_label"])
    picked = values[np.arange(len(values)), predicted]
    disagreeing = int((picked < values.max(axis=1) - ARGMAX_TOLERANCE).sum())
    if disagreeing:
        raise PredictionsError(
            f"{source} has {disagreeing} row(s) whose predicted_label is not the class with the "
            "highest probability."
        )
    repeated = table["path"].astype(str).duplicated()
    if repeated.any():
        raise PredictionsError(
            f"{source} lists {int(repeated.sum())} path(s) more than once, such as "
            f"{table['path'].astype(str)[repeated].iloc[0]}; each image must have one row."
        )
    return table


def compute_metrics(
    table: pd.DataFrame,
    *,
    bins: int = CALIBRATION_BINS,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    intervals: bool = True,
) -> dict[str, Any]:
    """Classification metrics of a predictions table.

    The intervals here resample images; which resampling a stored evaluation gets (clusters on
    grouped splits, cross-validations and external folders) is decided by
    :func:`kidney_lab.evaluation.stats.metrics_with_intervals`, which calls this.

    Args:
        table: a predictions table.
        bins: equal-width bins of top-class confidence for the calibration error.
        resamples: bootstrap resamples for the confidence intervals.
        seed: seed of the bootstrap.
        intervals: False to leave the image bootstrap out (``intervals`` is then ``None``).

    Returns:
        ``images``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``weighted_f1``,
        ``loss`` (mean categorical cross-entropy of the stored probabilities, nats),
        ``per_class`` (precision, recall = sensitivity, specificity, F1, support, one-vs-rest
        ROC AUC and average precision per class; the last two ``None`` for a class without
        positives or without negatives), ``macro`` and ``weighted`` averages (AUC and AP
        averaged over the classes where they are defined), ``macro_roc_auc``,
        ``macro_average_precision``, ``confusion_matrix`` (rows true, columns predicted, in
        ``classes`` order), ``ece`` and ``calibration`` (see :func:`reliability`) and
        ``intervals`` (see :func:`bootstrap_intervals`).

    Raises:
        PredictionsError: see :func:`check_predictions`.
    """
    check_predictions(table)
    names = list(classes.CLASS_NAMES)
    truth = table["true_label"].astype(str).to_numpy()
    predicted = table["predicted_label"].astype(str).to_numpy()
    probabilities = _probabilities(table)
    true_index = _class_indices(table["true_label"])
    matrix = sklearn.metrics.confusion_matrix(truth, predicted, labels=names)
    precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
        truth, predicted, labels=names, zero_division=0
    )
    roc = _roc_curves(table)
    precision_recall = _pr_curves(table)
    total = matrix.sum()
    per_class: dict[str, dict[str, float | int | None]] = {}
    for index, name in enumerate(names):
        true_negative = total - matrix[index, :].sum() - matrix[:, index].sum() + matrix[index, index]
        negatives = total - matrix[index, :].sum()
        per_class[name] = {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "specificity": float(true_negative / negatives) if negatives else 0.0,
            "f1": float(f1[index]),
            "support": int(support[index]),
            "roc_auc": roc[name]["auc"],
            "average_precision": precision_recall[name]["average_precision"],
        }
    present = support > 0
    weights = support / support.sum()
    averages: dict[str, dict[str, float | None]] = {}
    for average, weight in (("macro", None), ("weighted", weights)):
        averages[average] = {
            key: float(np.average([per_class[name][key] for name in names], weights=weight))
            for key in ("precision", "recall", "specificity", "f1")
        }
        for key in ("roc_auc", "average_precision"):
            averages[average][key] = _defined_average(
                [per_class[name][key] for name in names], None if weight is None else weight
            )
    picked = probabilities[np.arange(len(true_index)), true_index]
    calibration = _reliability(table, bins)
    return {
        "classes": names,
        "images": int(len(table)),
        "accuracy": float(sklearn.metrics.accuracy_score(truth, predicted)),
        "balanced_accuracy": float(np.mean(recall[present])) if present.any() else 0.0,
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "macro_roc_auc": averages["macro"]["roc_auc"],
        "macro_average_precision": averages["macro"]["average_precision"],
        "loss": float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0)))),
        "ece": calibration["ece"],
        "per_class": per_class,
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "confusion_matrix": matrix.tolist(),
        "calibration": calibration,
        "intervals": _bootstrap_intervals(table, resamples, seed, CONFIDENCE_LEVEL) if intervals else None,
    }


def degenerate(scores: dict[str, Any]) -> str | None:
    """Why a model's evaluation says it has learned nothing useful, or ``None``.

    Args:
        scores: :func:`compute_metrics` of its predictions, or the ``metrics.json`` stored from
            it (``confusion_matrix``, ``macro_f1`` and ``classes`` are read).

    Returns:
        A sentence when :data:`DEGENERATE_SHARE` or more of its predictions are one class, or its
        macro F1 is at or below :data:`CHANCE_MACRO_F1` (chance level); ``None`` otherwise, and
        when the scores lack those fields.
    """
    matrix = scores.get("confusion_matrix")
    names = list(scores.get("classes") or classes.CLASS_NAMES)
    reasons = []
    try:
        predicted = np.asarray(matrix, dtype=float).sum(axis=0)
    except (TypeError, ValueError):
        predicted = np.zeros(0)
    if predicted.ndim == 1 and len(predicted) == len(names) and predicted.sum() > 0:
        top = int(predicted.argmax())
        share = float(predicted[top] / predicted.sum())
        if share >= DEGENERATE_SHARE:
            reasons.append(f"it predicts {names[top]} for {share:.0%} of its {int(predicted.sum()):,} test images")
    macro_f1 = scores.get("macro_f1")
    if isinstance(macro_f1, (int, float)) and not isinstance(macro_f1, bool) and macro_f1 <= CHANCE_MACRO_F1:
        reasons.append(f"its macro F1 is {macro_f1:.2f}, at chance level (at most {CHANCE_MACRO_F1:.2f})")
    if not reasons:
        return None
    return "Degenerate model: " + " and ".join(reasons) + "; its answers say little about the image."


def confusion_rates(matrix: Any) -> np.ndarray:
    """A confusion matrix with each row divided by its total (rows true, columns predicted).

    Cell ``[i, j]`` is the share of the images of true class ``i`` that were predicted as ``j``;
    the diagonal is each class's recall. A row without images is all NaN, not zero, so a class
    missing from the data is never shown as a class the model always gets wrong.

    Raises:
        PredictionsError: ``matrix`` is not a square table of non-negative counts.
    """
    counts = np.asarray(matrix, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or not np.isfinite(counts).all() or (counts < 0).any():
        raise PredictionsError("A confusion matrix must be a square table of non-negative counts.")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def roc_curves(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """One-vs-rest ROC curves of every class (sklearn ``roc_curve``).

    Returns:
        For each class in class order: ``fpr``, ``tpr``, ``thresholds`` (numpy arrays, empty
        when the curve is undefined: the class has no positives or no negatives) and ``auc``
        (float or ``None``).

    Raises:
        PredictionsError: see :func:`check_predictions`.
    """
    return _roc_curves(check_predictions(table))


def pr_curves(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """One-vs-rest precision-recall curves of every class (sklearn ``precision_recall_curve``).

    Returns:
        For each class in class order: ``precision``, ``recall``, ``thresholds`` (numpy arrays,
        empty when the class has no positives), ``average_precision`` (float or ``None``) and
        ``prevalence`` (the share of positives: the precision of a classifier that guesses).

    Raises:
        PredictionsError: see :func:`check_predictions`.
    """
    return _pr_curves(check_predictions(table))


def reliability(table: pd.DataFrame, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability bins and expected calibration error (ECE) of the top-class confidence.

    The confidence of a row is its highest probability; it is correct when its predicted label
    is its true label. Bin ``i`` of ``bins`` equal-width bins holds confidences in
    ``(i / bins, (i + 1) / bins]`` (the first bin also holds 0). ECE is the mean over bins of
    ``|accuracy - mean confidence|`` weighted by the share of rows in the bin (Guo et al.,
    2017).

    Returns:
        ``ece``, ``bins`` (the count), ``images`` and ``reliability``: one dict per bin with
        ``lower``, ``upper``, ``count``, ``mean_confidence`` and ``accuracy`` (both ``None``
        for an empty bin).

    Raises:
        PredictionsError: see :func:`check_predictions`; ``bins`` below 1.
    """
    return _reliability(check_predictions(table), bins)


def bootstrap_intervals(
    table: pd.DataFrame,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CONFIDENCE_LEVEL,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy and macro F1.

    Each resample draws as many rows as the table has, with replacement, from a NumPy
    generator seeded with ``seed``. Rows are put in path order first, so the interval depends
    on which image got which prediction, never on the order of the rows. A resample's macro F1
    is the mean over all classes of ``2 TP / (2 TP + FP + FN)`` (0 when that is 0/0), exactly
    what :func:`compute_metrics` reports for a table.

    Returns:
        ``accuracy`` and ``macro_f1`` as ``[low, high]``, and ``level``, ``resamples``,
        ``seed`` and ``method``; ``resampling`` is ``"image"`` and ``clusters`` is ``None``
        (images were resampled as if independent, whatever series they come from; the cluster
        version is :func:`kidney_lab.evaluation.stats.cluster_bootstrap_intervals`).

    Raises:
        PredictionsError: see :func:`check_predictions`; ``resamples`` below 1 or ``level``
            outside (0, 1).
    """
    return _bootstrap_intervals(check_predictions(table), resamples, seed, level)


def unit_confusions(table: pd.DataFrame, units: Any) -> np.ndarray:
    """The confusion counts of each resampling unit of a checked predictions table.

    Args:
        table: a predictions table (already checked).
        units: one unit key per row (such as its path, or its cluster); units are ordered by
            their keys as text, so the result does not depend on the order of the rows.

    Returns:
        An integer array of shape ``(units, classes * classes)``: row ``u``, cell
        ``true * classes + predicted`` counts the images of unit ``u`` in that confusion cell.
    """
    count = len(classes.CLASS_NAMES)
    codes = _class_indices(table["true_label"]) * count + _class_indices(table["predicted_label"])
    return unit_counts(units, codes, count * count)


def unit_counts(units: Any, codes: Any, cells: int) -> np.ndarray:
    """How many rows of each resampling unit fall in each cell.

    Args:
        units: one unit key per row; units are ordered by their keys as text.
        codes: one cell index per row, in ``[0, cells)`` (a confusion cell, say).
        cells: the number of cells.

    Returns:
        An integer array of shape ``(units, cells)``.
    """
    _, which = np.unique(np.asarray(units).astype(str), return_inverse=True)
    which = which.reshape(-1)
    counts = np.zeros((int(which.max()) + 1 if len(which) else 0, cells), dtype=np.int64)
    np.add.at(counts, (which, np.asarray(codes, dtype=np.int64)), 1)
    return counts


def resampled_scores(unit_cells: np.ndarray, *, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro F1 of bootstrap resamples of units (see :func:`unit_confusions`).

    Each resample draws as many units as there are, with replacement (see
    :func:`resampled_counts`). ``unit_cells`` may stack several models' counts of the same
    units, ``(models, units, cells)``: every model then gets the same draws, as a paired
    bootstrap needs.

    Returns:
        ``(accuracy, macro_f1)``, each of shape ``(resamples,)``, or ``(models, resamples)``.

    Raises:
        PredictionsError: ``resamples`` below 1.
    """
    return scores_of_confusions(resampled_counts(unit_cells, resamples=resamples, seed=seed))


def resampled_counts(unit_cells: np.ndarray, *, resamples: int, seed: int) -> np.ndarray:
    """The summed cell counts of bootstrap resamples of units: the one bootstrap kernel.

    Each resample draws as many units as there are, with replacement, from a NumPy generator
    seeded with ``seed``, and sums their counts (a unit drawn twice counts twice). The cells can
    be a confusion matrix's (:func:`unit_confusions`) or any other counts of the units' rows
    (:func:`unit_counts`). ``unit_cells`` may stack several models' counts of the same units,
    ``(models, units, cells)``: every model then gets the same draws.

    Returns:
        An integer array ``(resamples, cells)``, or ``(models, resamples, cells)``.

    Raises:
        PredictionsError: ``resamples`` below 1.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise PredictionsError(f"The bootstrap needs at least 1 resample; got {resamples!r}.")
    stacked = np.asarray(unit_cells)[None] if np.ndim(unit_cells) == 2 else np.asarray(unit_cells)
    models, units, cells = stacked.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_ROWS // units)
    sums = np.empty((models, resamples, cells), dtype=np.int64)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, units, size=(size, units))
        offsets = np.arange(size)[:, None] * units
        multiplicity = np.bincount((drawn + offsets).ravel(), minlength=size * units).reshape(size, units)
        sums[:, start:start + size] = np.einsum("su,muc->msc", multiplicity, stacked)
    return sums[0] if np.ndim(unit_cells) == 2 else sums


def scores_of_confusions(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro F1 of flattened confusion matrices, ``(..., classes * classes)``.

    Macro F1 is the mean over all classes of ``2 TP / (2 TP + FP + FN)`` (0 when that is 0/0),
    exactly what :func:`compute_metrics` reports for a table.
    """
    count = len(classes.CLASS_NAMES)
    square = np.asarray(matrices).reshape(*np.shape(matrices)[:-1], count, count)
    true_positive = np.diagonal(square, axis1=-2, axis2=-1)
    denominator = square.sum(axis=-2) + square.sum(axis=-1)
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(true_positive.shape), where=denominator > 0)
    return true_positive.sum(axis=-1) / square.sum(axis=(-2, -1)), f1.mean(axis=-1)


def percentile_interval(values: np.ndarray, level: float = CONFIDENCE_LEVEL) -> list[float]:
    """The central ``level`` percentile interval of ``values``, as ``[low, high]``.

    Raises:
        PredictionsError: ``level`` outside (0, 1).
    """
    if not 0 < level < 1:
        raise PredictionsError(f"The confidence level must be between 0 and 1; got {level!r}.")
    tail = (1 - level) / 2 * 100
    return [float(value) for value in np.percentile(values, [tail, 100 - tail])]


def _roc_curves(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    true_index = _class_indices(table["true_label"])
    probabilities = _probabilities(table)
    result: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(classes.CLASS_NAMES):
        positive = true_index == index
        if positive.all() or not positive.any():
            empty = np.zeros(0)
            result[name] = {"fpr": empty, "tpr": empty, "thresholds": empty, "auc": None}
            continue
        fpr, tpr, thresholds = sklearn.metrics.roc_curve(positive, probabilities[:, index])
        result[name] = {
            "fpr": fpr,
            "tpr": tpr,
            "thresholds": thresholds,
            "auc": float(sklearn.metrics.roc_auc_score(positive, probabilities[:, index])),
        }
    return result


def _pr_curves(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    true_index = _class_indices(table["true_label"])
    probabilities = _probabilities(table)
    result: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(classes.CLASS_NAMES):
        positive = true_index == index
        prevalence = float(positive.mean())
        if not positive.any():
            empty = np.zeros(0)
            result[name] = {
                "precision": empty, "recall": empty, "thresholds": empty,
                "average_precision": None, "prevalence": prevalence,
            }
            continue
        precision, recall, thresholds = sklearn.metrics.precision_recall_curve(
            positive, probabilities[:, index]
        )
        result[name] = {
            "precision": precision,
            "recall": recall,
            "thresholds": thresholds,
            "average_precision": float(
                sklearn.metrics.average_precision_score(positive, probabilities[:, index])
            ),
            "prevalence": prevalence,
        }
    return result


def _reliability(table: pd.DataFrame, bins: int) -> dict[str, Any]:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise PredictionsError(f"The number of calibration bins must be at least 1; got {bins!r}.")
    probabilities = _probabilities(table)
    confidence = probabilities.max(axis=1)
    correct = _class_indices(table["predicted_label"]) == _class_indices(table["true_label"])
    # Rounding first puts a confidence of exactly 0.7 into (0.6, 0.7], as written, whatever the
    # last bit of 0.7 * 10 in floating point.
    which = np.clip(np.ceil(np.round(confidence * bins, 9)).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    confidence_sums = np.bincount(which, weights=confidence, minlength=bins)
    correct_sums = np.bincount(which, weights=correct.astype(float), minlength=bins)
    rows = []
    gap = 0.0
    for index in range(bins):
        count = int(counts[index])
        mean_confidence = float(confidence_sums[index] / count) if count else None
        accuracy = float(correct_sums[index] / count) if count else None
        if count:
            gap += count / len(table) * abs(accuracy - mean_confidence)
        rows.append(
            {
                "lower": index / bins,
                "upper": (index + 1) / bins,
                "count": count,
                "mean_confidence": mean_confidence,
                "accuracy": accuracy,
            }
        )
    return {"ece": float(gap), "bins": bins, "images": int(len(table)), "reliability": rows}


def _bootstrap_intervals(table: pd.DataFrame, resamples: int, seed: int, level: float) -> dict[str, Any]:
    percentile_interval(np.zeros(1), level)  # Refuses a bad level before any work.
    accuracy, macro_f1 = resampled_scores(unit_confusions(table, table["path"]), resamples=resamples, seed=seed)
    return {
        "resampling": "image",
        "clusters": None,
        "accuracy": percentile_interval(accuracy, level),
        "macro_f1": percentile_interval(macro_f1, level),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "method": "percentile bootstrap over images",
    }


def _class_indices(labels: pd.Series) -> np.ndarray:
    """The class index of each label (labels already checked)."""
    lookup = {name: index for index, name in enumerate(classes.CLASS_NAMES)}
    return labels.astype(str).map(lookup).to_numpy(dtype=np.int64)


def _probabilities(table: pd.DataFrame) -> np.ndarray:
    """The probability columns as a float matrix, in class order."""
    return pd.DataFrame(table[probability_columns()]).apply(pd.to_numeric).to_numpy(dtype=float)


def _defined_average(values: list[float | int | None], weights: np.ndarray | None) -> float | None:
    """The (weighted) mean of the values that are not ``None``; ``None`` if none is."""
    defined = [index for index, value in enumerate(values) if value is not None]
    if not defined:
        return None
    chosen = None if weights is None else weights[defined]
    if chosen is not None and chosen.sum() == 0:
        return None
    return float(np.average([values[index] for index in defined], weights=chosen))
