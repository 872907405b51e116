"""A calibrated ensemble of runs: the (weighted) mean of their calibrated probabilities.

Each member is a predictions table (see :mod:`kidney_lab.evaluation.metrics`) of the same
images with the same true labels, and a temperature (see
:mod:`kidney_lab.evaluation.calibration`; 1 leaves its probabilities as stored). The ensemble's
probabilities for an image are ``sum_m w_m * softmax(log p_m / T_m)``; its predicted label is
their most probable class. The result is again a predictions table, so
:func:`kidney_lab.evaluation.metrics.compute_metrics`, the statistics and the leaderboard treat
it like any run's.

Weights are equal unless fitted: :func:`fit_weights` finds the point of the simplex (weights
at least 0, summing to 1) that minimises the mean negative log-likelihood of the **validation**
tables, with scipy's SLSQP. The mixture's NLL is convex in the weights, so the minimum found is
the global one. Weights are never fitted on test images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.optimize

from kidney_lab import errors
from kidney_lab.data import classes
from kidney_lab.evaluation import calibration, metrics

# Weights below this after fitting are set to 0 (SLSQP leaves round-off on the simplex's faces).
WEIGHT_FLOOR = 1e-6


class EnsembleError(errors.KidneyLabError, ValueError):
    """Member tables do not describe the same images, or weights or temperatures are unusable."""


def check_members(members: Sequence[pd.DataFrame]) -> None:
    """Refuse member tables that are not valid predictions of the same images and labels.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError: a member is not a valid predictions
            table (the message names it).
        EnsembleError: fewer than one member, a member with images another lacks, or an image
            whose true label differs between members.
    """
    if isinstance(members, pd.DataFrame) or len(members) < 1:
        raise EnsembleError("An ensemble needs a list of at least one member predictions table.")
    for number, table in enumerate(members, start=1):
        metrics.check_predictions(table, f"member {number}'s predictions")
    first = _truth_by_path(members[0])
    for number, table in enumerate(members[1:], start=2):
        other = _truth_by_path(table)
        missing, extra = first.index.difference(other.index), other.index.difference(first.index)
        if len(missing) or len(extra):
            which, count, example = (
                ("lacks", len(missing), missing[0]) if len(missing) else ("has extra", len(extra), extra[0])
            )
            raise EnsembleError(
                f"Member {number} {which} {count} image(s) compared with member 1, such as {example}; "
                "an ensemble combines predictions of the same images: evaluate every member on the same "
                "split."
            )
        differing = first.index[first.to_numpy() != other.reindex(first.index).to_numpy()]
        if len(differing):
            raise EnsembleError(
                f"Member {number} gives {len(differing)} image(s) another true label than member 1, such "
                f"as {differing[0]}; the members were evaluated on differently labelled data."
            )


def combine(
    members: Sequence[pd.DataFrame],
    temperatures: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """The ensemble's predictions table, in the rows' order of the first member.

    Args:
        members: predictions tables of the same images (any row order).
        temperatures: one per member (see :func:`kidney_lab.evaluation.calibration.fit_temperature`);
            all 1 when None.
        weights: one per member, at least 0 and not all 0 (normalised to sum 1); equal when None.

    Returns:
        ``path``, ``true_label``, ``predicted_label``, the probability columns, and ``cluster``
        when the first member has it.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError, EnsembleError: see
            :func:`check_members`; a temperature or weight count that differs from the member
            count, or unusable weights.
        kidney_lab.evaluation.calibration.CalibrationError: a bad temperature.
    """
    check_members(members)
    stacked = _calibrated_stack(members, temperatures)
    chosen = _check_weights(weights, len(members))
    mixture = np.einsum("m,mic->ic", chosen, stacked)
    mixture /= mixture.sum(axis=1, keepdims=True)
    first = members[0]
    keep = ["path", "true_label"] + ([metrics.CLUSTER_COLUMN] if metrics.CLUSTER_COLUMN in first.columns else [])
    table = first[keep].reset_index(drop=True).copy()
    table.insert(2, "predicted_label", np.asarray(classes.CLASS_NAMES)[mixture.argmax(axis=1)])
    for index, column in enumerate(metrics.probability_columns()):
        table[column] = mixture[:, index]
    return table


def fit_weights(
    validation_members: Sequence[pd.DataFrame], temperatures: Sequence[float] | None = None
) -> list[float]:
    """Member weights that minimise the ensemble's mean NLL on the validation tables.

    Args:
        validation_members: each member's predictions of the validation images.
        temperatures: one per member, as in :func:`combine`.

    Returns:
        One weight per member, each in [0, 1], summing to 1.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError, EnsembleError: see :func:`combine`.
        kidney_lab.evaluation.calibration.CalibrationError: a bad temperature.
    """
    check_members(validation_members)
    stacked = _calibrated_stack(validation_members, temperatures)
    count = len(validation_members)
    _, truth = calibration.check_probabilities(stacked[0], validation_members[0]["true_label"].astype(str))
    # Probability of the true class of each image under each member: (members, images).
    picked = np.clip(stacked[:, np.arange(len(truth)), truth], metrics.EPSILON, 1.0)

    def mean_nll(weights: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(weights @ picked, metrics.EPSILON, None))))

    def gradient(weights: np.ndarray) -> np.ndarray:
        return -np.mean(picked / np.clip(weights @ picked, metrics.EPSILON, None), axis=1)

    start = np.full(count, 1.0 / count)
    found = scipy.optimize.minimize(
        mean_nll, start, jac=gradient, method="SLSQP", bounds=[(0.0, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda weights: weights.sum() - 1.0}],
        options={"ftol": 1e-10, "maxiter": 500},
    )
    weights = np.where(found.x < WEIGHT_FLOOR, 0.0, np.clip(found.x, 0.0, 1.0))
    if not np.isfinite(weights).all() or weights.sum() <= 0 or mean_nll(weights / weights.sum()) > mean_nll(start):
        weights = start
    return [float(value) for value in weights / weights.sum()]


def _truth_by_path(table: pd.DataFrame) -> pd.Series:
    return pd.Series(table["true_label"].astype(str).to_numpy(), index=table["path"].astype(str).to_numpy())


def _calibrated_stack(members: Sequence[pd.DataFrame], temperatures: Sequence[float] | None) -> np.ndarray:
    """Each member's calibrated probabilities aligned on the first member's rows: (members, images, classes)."""
    if temperatures is None:
        temperatures = [1.0] * len(members)
    if isinstance(temperatures, (str, bytes)) or len(temperatures) != len(members):
        raise EnsembleError(
            f"Got {len(temperatures)} temperature(s) for {len(members)} member(s); give one per member."
        )
    order = members[0]["path"].astype(str).to_numpy()
    stacked = []
    for table, temperature in zip(members, temperatures):
        calibrated = calibration.calibrate_table(table, temperature)
        aligned = calibrated.set_index(calibrated["path"].astype(str)).loc[order]
        stacked.append(aligned[metrics.probability_columns()].to_numpy(dtype=float))
    return np.stack(stacked)


def _check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count)
    try:
        values = np.asarray(weights, dtype=float)
    except (TypeError, ValueError):
        raise EnsembleError(f"Ensemble weights must be numbers; got {weights!r}.") from None
    if values.shape != (count,):
        raise EnsembleError(f"Got {values.size} weight(s) for {count} member(s); give one per member.")
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise EnsembleError(f"Ensemble weights must be finite, at least 0 and not all 0; got {list(values)}.")
    return values / values.sum()


def describe(weights: Sequence[float], temperatures: Sequence[float], members: Sequence[str]) -> dict[str, Any]:
    """The ensemble's recipe as plain JSON data: ``members`` (run ids), ``weights``, ``temperatures``
    and ``weights_fitted_on`` (``"validation"``).

    Raises:
        EnsembleError: the three lists differ in length, or bad weights.
        kidney_lab.evaluation.calibration.CalibrationError: a bad temperature.
    """
    if not len(weights) == len(temperatures) == len(members):
        raise EnsembleError(
            f"Got {len(members)} member(s), {len(weights)} weight(s) and {len(temperatures)} temperature(s); "
            "give one of each per member."
        )
    return {
        "members": [str(member) for member in members],
        "weights": [float(value) for value in _check_weights(weights, len(members))],
        "temperatures": [calibration.check_temperature(value) for value in temperatures],
        "weights_fitted_on": calibration.FITTED_ON,
    }
