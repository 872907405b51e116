"""Operating points: a threshold for one class chosen on validation, scored on the test images.

A classifier's argmax answers one question; a screening reader asks another: "if I want to miss
at most 5% of tumours, how many healthy scans do I call tumours?". For one class (one-vs-rest on
its probability: an image is called positive when ``prob_<Class> >= threshold``) this module

1. chooses the threshold on the run's VALIDATION predictions (``val_predictions.csv``, see
   :func:`kidney_lab.runs.validation_predictions_path`): the highest threshold whose validation
   sensitivity is at least the target (so the most specific one that reaches the target). The
   test images never move the threshold: scoring a model on the images its threshold was tuned
   on would flatter it;
2. scores that threshold on the test predictions: sensitivity and specificity with percentile
   bootstrap intervals that resample near-duplicate clusters (series) or images, as
   :func:`kidney_lab.evaluation.stats.interval_resampling` decides for every stored evaluation
   (images only on a random split, labelled so), through the bootstrap kernel of
   :mod:`kidney_lab.evaluation.metrics` (:func:`~kidney_lab.evaluation.metrics.resampled_counts`);
3. gives the positive and negative predictive values (PPV, NPV) at a prevalence the user sets,
   by Bayes' rule from the sensitivity and specificity (the test set's own share of the class is
   rarely the share in the clinic), with intervals from the same resamples.

No TensorFlow here: everything comes from stored predictions tables.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store

# The class a screening reader asks about first, and the sensitivity asked for by default.
DEFAULT_CLASS = "Tumor"
DEFAULT_TARGET_SENSITIVITY = 0.95
# Cells of the per-unit counts: true positive, false negative, false positive, true negative.
_TP, _FN, _FP, _TN = range(4)
FIT_HINT = "fit it with python -m kidney_lab fit-ood RUN"


class MissingValidationError(runs.EvaluationError):
    """A run has no stored validation predictions to choose a threshold on."""


def choose_threshold(validation: pd.DataFrame, class_name: str, target_sensitivity: float) -> dict[str, Any]:
    """The highest threshold on ``prob_<class_name>`` whose sensitivity on ``validation`` is at
    least ``target_sensitivity``.

    With ``n`` validation images of the class, the threshold is the ``ceil(target * n)``-th
    highest probability the model gave them: exactly that many (or more, on ties) are called
    positive, so the validation sensitivity is the smallest one at or above the target.

    Args:
        validation: a predictions table of validation images.
        class_name: the positive class (one of :data:`kidney_lab.data.classes.CLASS_NAMES`).
        target_sensitivity: in (0, 1].

    Returns:
        ``threshold``, and ``validation``: ``images``, ``positives``, ``sensitivity`` and
        ``specificity`` at the threshold (``None`` without negatives).

    Raises:
        metrics.PredictionsError: an invalid table, an unknown class, a target outside (0, 1],
            or no validation image of the class.
    """
    name = _check_class(class_name)
    target = _check_fraction(target_sensitivity, "The target sensitivity", closed_high=True)
    metrics_module.check_predictions(validation, source="the validation predictions")
    scores, positive = _scores(validation, name)
    ranked = np.sort(scores[positive])[::-1]
    if not len(ranked):
        raise metrics_module.PredictionsError(
            f"The validation images hold no {name} image, so no threshold can be chosen for {name}."
        )
    needed = max(1, math.ceil(round(target * len(ranked), 9)))
    threshold = float(ranked[needed - 1])
    counts = _counts(scores >= threshold, positive)
    return {"threshold": threshold, "validation": {"images": int(len(validation)), **_rates(counts)}}


def score_threshold(
    test: pd.DataFrame,
    class_name: str,
    threshold: float,
    split_kind: str | None,
    prevalence: float | None = None,
    *,
    resamples: int = metrics_module.BOOTSTRAP_RESAMPLES,
    seed: int = metrics_module.BOOTSTRAP_SEED,
    level: float = metrics_module.CONFIDENCE_LEVEL,
) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV of ``prob_<class_name> >= threshold`` on ``test``.

    Args:
        test: a predictions table (with ``cluster`` where the clusters are known).
        class_name: the positive class.
        threshold: from :func:`choose_threshold` (on other images).
        split_kind: what ``test`` was measured on (see
            :func:`kidney_lab.evaluation.stats.interval_resampling`, which decides whether the
            intervals resample clusters or images).
        prevalence: the share of the class the PPV and NPV assume, in (0, 1); ``None`` uses the
            test images' own share.
        resamples, seed, level: of the bootstrap.

    Returns:
        ``images``, ``positives``, ``true_positives``, ``false_negatives``,
        ``false_positives``, ``true_negatives``, ``sensitivity``, ``specificity`` (``None``
        without positives, or negatives), ``ppv``, ``npv``, ``prevalence``,
        ``prevalence_source`` (``"user"`` or ``"test"``), and ``intervals``: ``sensitivity``,
        ``specificity``, ``ppv``, ``npv`` as ``[low, high]`` (``None`` when undefined),
        ``resampling`` (``"cluster"`` or ``"image"``), ``clusters``, ``reason``, ``level``,
        ``resamples``, ``seed`` and ``method``.

    Raises:
        metrics.PredictionsError: an invalid table or class, a prevalence outside (0, 1),
            ``resamples`` below 1 or ``level`` outside (0, 1).
    """
    name = _check_class(class_name)
    metrics_module.check_predictions(test, source="the test predictions")
    metrics_module.percentile_interval(np.zeros(1), level)  # Refuses a bad level before any work.
    scores, positive = _scores(test, name)
    called = scores >= float(threshold)
    counts = _counts(called, positive)
    source = "user"
    if prevalence is None:
        prevalence, source = float(positive.mean()), "test"
    else:
        prevalence = _check_fraction(prevalence, "The prevalence")
    resampling, reason = stats.interval_resampling(test, split_kind)
    units = test[metrics_module.CLUSTER_COLUMN] if resampling == "cluster" else test["path"]
    codes = np.where(positive, np.where(called, _TP, _FN), np.where(called, _FP, _TN))
    cells = metrics_module.unit_counts(units, codes, 4)
    drawn = metrics_module.resampled_counts(cells, resamples=resamples, seed=seed)
    sensitivity, specificity = _sensitivity(drawn), _specificity(drawn)
    point = {"sensitivity": _sensitivity(counts), "specificity": _specificity(counts)}
    point.update(_predictive(point["sensitivity"], point["specificity"], prevalence))
    spread = {"sensitivity": sensitivity, "specificity": specificity,
              **_predictive(sensitivity, specificity, prevalence)}
    return {
        "images": int(len(test)),
        "positives": int(positive.sum()),
        "true_positives": int(counts[_TP]),
        "false_negatives": int(counts[_FN]),
        "false_positives": int(counts[_FP]),
        "true_negatives": int(counts[_TN]),
        **{key: _number(value) for key, value in point.items()},
        "prevalence": prevalence,
        "prevalence_source": source,
        "intervals": {
            **{key: _interval(values, level) for key, values in spread.items()},
            "resampling": resampling,
            "clusters": int(len(cells)) if resampling == "cluster" else None,
            "reason": reason,
            "level": level,
            "resamples": resamples,
            "seed": seed,
            "method": f"percentile bootstrap over {'near-duplicate clusters' if resampling == 'cluster' else 'images'}",
        },
    }


def operating_point(
    run_dir: str | os.PathLike[str],
    class_name: str = DEFAULT_CLASS,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    prevalence: float | None = None,
    source: str = runs.TEST_SOURCE,
    *,
    resamples: int = metrics_module.BOOTSTRAP_RESAMPLES,
    seed: int = metrics_module.BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """A run's operating point for one class: the threshold chosen on its validation
    predictions, scored on its evaluation ``source``.

    Args:
        run_dir: the run folder.
        class_name, target_sensitivity: see :func:`choose_threshold`.
        prevalence: see :func:`score_threshold`.
        source: the evaluation scored: ``"test"`` (its test split) or an external folder's
            fingerprint.
        resamples, seed: of the bootstrap.

    Returns:
        ``class``, ``target_sensitivity``, ``threshold``, ``validation`` (see
        :func:`choose_threshold`), ``test`` (see :func:`score_threshold`), ``source`` and
        ``split_kind``.

    Raises:
        MissingValidationError: the run has no ``val_predictions.csv``.
        store.EvaluationError: no such evaluation.
        metrics.PredictionsError: damaged tables, or a bad class, target or prevalence.
    """
    folder = Path(run_dir)
    path = runs.validation_predictions_path(folder)
    if not path.is_file():
        raise MissingValidationError(
            f"Run {folder.name} has no validation predictions ({path.name}), so no threshold can be chosen "
            f"on validation; {FIT_HINT.replace('RUN', str(folder))}."
        )
    chosen = choose_threshold(store.read_predictions(path), class_name, target_sensitivity)
    kind = store.split_kind(folder, source)
    test = score_threshold(store.load_predictions(folder, source), class_name, chosen["threshold"], kind,
                           prevalence, resamples=resamples, seed=seed)
    return {
        "class": _check_class(class_name),
        "target_sensitivity": float(target_sensitivity),
        "threshold": chosen["threshold"],
        "validation": chosen["validation"],
        "test": test,
        "source": source,
        "split_kind": kind,
    }


def _check_class(class_name: str) -> str:
    if class_name not in classes.CLASS_NAMES:
        raise metrics_module.PredictionsError(
            f"Unknown class {class_name!r}; choose one of {', '.join(classes.CLASS_NAMES)}."
        )
    return class_name


def _check_fraction(value: Any, what: str, *, closed_high: bool = False) -> float:
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (0 < number < 1 or (closed_high and number == 1)):
        bounds = "above 0 and at most 1" if closed_high else "between 0 and 1 (exclusive)"
        raise metrics_module.PredictionsError(f"{what} must be {bounds}; got {value!r}.")
    return number


def _scores(table: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The class's probability per row, and whether the row's true label is the class."""
    scores = pd.to_numeric(table[metrics_module.PROBABILITY_PREFIX + name]).to_numpy(dtype=float)
    return scores, (table["true_label"].astype(str) == name).to_numpy()


def _counts(called: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``[TP, FN, FP, TN]`` of calling ``called`` positive."""
    return np.array([(called & positive).sum(), (~called & positive).sum(),
                     (called & ~positive).sum(), (~called & ~positive).sum()], dtype=np.int64)


def _rates(counts: np.ndarray) -> dict[str, Any]:
    return {"positives": int(counts[_TP] + counts[_FN]), "sensitivity": _number(_sensitivity(counts)),
            "specificity": _number(_specificity(counts))}


def _sensitivity(counts: np.ndarray) -> np.ndarray:
    """TP / (TP + FN) along the last axis (NaN without positives)."""
    counts = np.asarray(counts, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts[..., _TP] / (counts[..., _TP] + counts[..., _FN])


def _specificity(counts: np.ndarray) -> np.ndarray:
    """TN / (TN + FP) along the last axis (NaN without negatives)."""
    counts = np.asarray(counts, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts[..., _TN] / (counts[..., _TN] + counts[..., _FP])


def _predictive(sensitivity: Any, specificity: Any, prevalence: float) -> dict[str, Any]:
    """PPV and NPV by Bayes' rule at ``prevalence`` (NaN where undefined, as 0/0)."""
    sensitivity, specificity = np.asarray(sensitivity, dtype=float), np.asarray(specificity, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        true_positive = sensitivity * prevalence
        false_positive = (1 - specificity) * (1 - prevalence)
        true_negative = specificity * (1 - prevalence)
        false_negative = (1 - sensitivity) * prevalence
        return {"ppv": true_positive / (true_positive + false_positive),
                "npv": true_negative / (true_negative + false_negative)}


def _number(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    """The percentile interval of the resamples where the score is defined (``None`` if none is)."""
    defined = np.asarray(values, dtype=float)
    defined = defined[~np.isnan(defined)]
    return metrics_module.percentile_interval(defined, level) if len(defined) else None
