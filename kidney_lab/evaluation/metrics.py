"""Metrics computed from a predictions table, with scikit-learn.

A predictions table has one row per image: ``path``, ``true_label``, ``predicted_label`` and one
probability column per class, ``prob_<Class>``, in the order of
:data:`kidney_lab.data.classes.CLASS_NAMES`. Every number a user sees is derived from such a
table, never from the order in which a data generator happened to yield images.
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

# Probabilities are clipped to [EPSILON, 1] before the log of the cross-entropy.
EPSILON = 1e-7


class PredictionsError(errors.KidneyLabError, ValueError):
    """A predictions table is missing columns or holds values that cannot be predictions."""


def probability_columns() -> list[str]:
    """The probability column names, in class order."""
    return [PROBABILITY_PREFIX + name for name in classes.CLASS_NAMES]


def check_predictions(table: pd.DataFrame, source: str = "predictions") -> pd.DataFrame:
    """Return ``table`` if it is a valid predictions table.

    Raises:
        PredictionsError: a missing column, an unknown label, a probability outside [0, 1] or
            not a number, rows whose probabilities do not sum to 1, or no rows.
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
    return table


def compute_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Classification metrics of a predictions table.

    Returns:
        ``images``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``weighted_f1``,
        ``loss`` (mean categorical cross-entropy of the stored probabilities, nats),
        ``per_class`` (precision, recall = sensitivity, specificity, F1 and support per class),
        ``macro`` and ``weighted`` averages, and ``confusion_matrix`` (rows true, columns
        predicted, in ``classes`` order).

    Raises:
        PredictionsError: see :func:`check_predictions`.
    """
    check_predictions(table)
    names = list(classes.CLASS_NAMES)
    truth = table["true_label"].astype(str).to_numpy()
    predicted = table["predicted_label"].astype(str).to_numpy()
    probabilities = table[probability_columns()].to_numpy(dtype=float)
    true_index = np.array([names.index(label) for label in truth])
    matrix = sklearn.metrics.confusion_matrix(truth, predicted, labels=names)
    precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
        truth, predicted, labels=names, zero_division=0
    )
    total = matrix.sum()
    per_class: dict[str, dict[str, float | int]] = {}
    for index, name in enumerate(names):
        true_negative = total - matrix[index, :].sum() - matrix[:, index].sum() + matrix[index, index]
        negatives = total - matrix[index, :].sum()
        per_class[name] = {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "specificity": float(true_negative / negatives) if negatives else 0.0,
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
    present = support > 0
    weights = support / support.sum()
    averages = {}
    for average, weight in (("macro", None), ("weighted", weights)):
        averages[average] = {
            key: float(np.average([per_class[name][key] for name in names], weights=weight))
            for key in ("precision", "recall", "specificity", "f1")
        }
    picked = probabilities[np.arange(len(true_index)), true_index]
    return {
        "classes": names,
        "images": int(len(table)),
        "accuracy": float(sklearn.metrics.accuracy_score(truth, predicted)),
        "balanced_accuracy": float(np.mean(recall[present])) if present.any() else 0.0,
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "loss": float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0)))),
        "per_class": per_class,
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "confusion_matrix": matrix.tolist(),
    }
