"""Temperature scaling of stored class probabilities, fitted on validation predictions.

A model's softmax probabilities ``p`` are the softmax of its logits ``z``, so ``log p`` equals
``z`` up to a constant per row, and ``softmax(log p / T)`` is exactly ``softmax(z / T)``:
temperature scaling (Guo et al., 2017) can be fitted and applied from the probability columns
of a predictions table (see :mod:`kidney_lab.evaluation.metrics`) without running the model
again. Probabilities are clipped to ``[metrics.EPSILON, 1]`` before the log, as in the
cross-entropy of :func:`kidney_lab.evaluation.metrics.compute_metrics`, so a stored 0 counts as
``1e-7``.

``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens under-confident ones; the
most probable class of a row never changes, so accuracy and the confusion matrix stay the same.
``T`` is the value in :data:`TEMPERATURE_BOUNDS` that minimises the mean negative
log-likelihood (NLL) of the validation images, found by scipy's bounded scalar minimiser on
``log T``. It is never fitted on test images.

Scores, each a mean over images: ``nll`` (natural log, nats), ``brier`` (sum over classes of
the squared difference between probability and one-hot truth, 0 to 2) and ``ece`` (the
expected calibration error of :func:`kidney_lab.evaluation.metrics.reliability`).

A fitted calibration is stored as a small JSON object (:func:`to_json`, :func:`from_json`),
never as a pickle.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.special

from kidney_lab import errors
from kidney_lab.data import classes
from kidney_lab.evaluation import metrics

# The temperatures searched, (lowest, highest).
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Tolerance of the bounded search, on log T.
LOG_TEMPERATURE_TOLERANCE = 1e-6
METHOD = "temperature_scaling"
FITTED_ON = "validation"
# Rows whose probabilities differ from a sum of 1 by more than this are refused.
SUM_TOLERANCE = 1e-3


class CalibrationError(errors.KidneyLabError, ValueError):
    """Probabilities, labels, a temperature or a stored calibration cannot be used."""


def check_probabilities(probabilities: Any, labels: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(probabilities, label indices)`` as arrays if they can be calibrated.

    Args:
        probabilities: shape ``(images, classes)``, each row numbers in [0, 1] summing to 1.
        labels: optional, one per row: a class name of :data:`classes.CLASS_NAMES` or a class
            index (0 to ``classes - 1``).

    Raises:
        CalibrationError: not a 2-D array with rows and at least two classes, values that are
            not numbers in [0, 1], rows that do not sum to 1, a label count that differs from
            the row count, or an unknown label.
    """
    try:
        values = np.asarray(probabilities, dtype=float)
    except (TypeError, ValueError):
        raise CalibrationError("Probabilities must be numbers, one row per image and one column per class.") from None
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] < 2:
        raise CalibrationError(
            "Probabilities must be a table of one row per image and one column per class (at least "
            f"one image and two classes); got shape {values.shape}."
        )
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise CalibrationError("Probabilities must be numbers in [0, 1]; some are not.")
    off = np.abs(values.sum(axis=1) - 1.0) > SUM_TOLERANCE
    if off.any():
        raise CalibrationError(
            f"{int(off.sum())} row(s) of probabilities do not sum to 1 (such as row {int(np.argmax(off))}); "
            "pass softmax probabilities, not logits or scores."
        )
    if labels is None:
        return values, None
    return values, _label_indices(labels, values.shape)


def apply_temperature(probabilities: Any, temperature: float) -> np.ndarray:
    """Probabilities rescaled by ``temperature``: ``softmax(log(clip(p)) / T)``, row by row.

    Raises:
        CalibrationError: bad probabilities (see :func:`check_probabilities`) or a temperature
            that is not a positive finite number.
    """
    values, _ = check_probabilities(probabilities)
    return _scaled(_log_probabilities(values), check_temperature(temperature))


def fit_temperature(probabilities: Any, labels: Any) -> float:
    """The temperature that minimises the mean NLL of ``labels`` (validation images only).

    Args:
        probabilities: validation probabilities, shape ``(images, classes)``.
        labels: their true classes (names or indices).

    Returns:
        ``T`` within :data:`TEMPERATURE_BOUNDS`.

    Raises:
        CalibrationError: see :func:`check_probabilities`.
    """
    values, truth = check_probabilities(probabilities, labels)
    logs = _log_probabilities(values)
    rows = np.arange(len(truth))

    def mean_nll(log_temperature: float) -> float:
        scaled = scipy.special.log_softmax(logs / math.exp(log_temperature), axis=1)
        return float(-scaled[rows, truth].mean())

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    found = scipy.optimize.minimize_scalar(
        mean_nll, bounds=(low, high), method="bounded", options={"xatol": LOG_TEMPERATURE_TOLERANCE}
    )
    best = float(found.x)
    # The bounded search never evaluates T = 1 exactly; keep it when it is no worse.
    if mean_nll(0.0) <= mean_nll(best):
        best = 0.0
    return float(math.exp(best))


def nll(probabilities: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the true classes, in nats (probabilities clipped).

    Raises:
        CalibrationError: see :func:`check_probabilities`.
    """
    values, truth = check_probabilities(probabilities, labels)
    return float(-np.mean(_log_probabilities(values)[np.arange(len(truth)), truth]))


def brier(probabilities: Any, labels: Any) -> float:
    """Mean multi-class Brier score: sum over classes of ``(p - one_hot)^2``, 0 (best) to 2.

    Raises:
        CalibrationError: see :func:`check_probabilities`.
    """
    values, truth = check_probabilities(probabilities, labels)
    one_hot = np.zeros_like(values)
    one_hot[np.arange(len(truth)), truth] = 1.0
    return float(np.mean(np.sum((values - one_hot) ** 2, axis=1)))


def ece(probabilities: Any, labels: Any, bins: int = metrics.CALIBRATION_BINS) -> float:
    """Expected calibration error of the top-class confidence (see :func:`metrics.reliability`).

    Only for the four classes of :data:`classes.CLASS_NAMES`.

    Raises:
        CalibrationError: see :func:`check_probabilities`, or not four classes.
    """
    values, truth = check_probabilities(probabilities, labels)
    return float(metrics.reliability(_as_table(values, truth), bins)["ece"])


def calibrate_table(table: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """A copy of a predictions table with its probability columns rescaled by ``temperature``.

    Every other column (path, labels, cluster, ...) is kept. Scaling keeps the order of a row's
    probabilities, so the predicted label stays, except where it was tied (within
    ``metrics.ARGMAX_TOLERANCE``) with another class that a low temperature pulls ahead: it then
    becomes that class, so the table stays valid.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError: not a valid predictions table.
        CalibrationError: a temperature that is not a positive finite number.
    """
    metrics.check_predictions(table)
    columns = metrics.probability_columns()
    calibrated = table.copy()
    values = apply_temperature(_table_probabilities(table), temperature)
    calibrated[columns] = values
    stored = calibrated["predicted_label"].astype(str).map(classes.class_index).to_numpy()
    behind = values[np.arange(len(values)), stored] < values.max(axis=1) - metrics.ARGMAX_TOLERANCE
    if behind.any():
        calibrated.loc[behind, "predicted_label"] = np.asarray(classes.CLASS_NAMES)[values[behind].argmax(axis=1)]
    return calibrated


def scores(table: pd.DataFrame, temperature: float = 1.0) -> dict[str, float]:
    """``nll``, ``brier`` and ``ece`` of a predictions table after ``temperature``.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError: not a valid predictions table.
        CalibrationError: a bad temperature.
    """
    calibrated = calibrate_table(table, temperature)
    values = _table_probabilities(calibrated)
    truth = calibrated["true_label"].astype(str).to_numpy()
    return {
        "nll": nll(values, truth),
        "brier": brier(values, truth),
        "ece": float(metrics.reliability(calibrated)["ece"]),
    }


def calibration_report(validation_table: pd.DataFrame, test_table: pd.DataFrame) -> dict[str, Any]:
    """Fit a temperature on the validation table and score both tables before and after.

    Returns:
        ``method`` (``"temperature_scaling"``), ``temperature``, ``fitted_on``
        (``"validation"``), ``validation`` and ``test``, each with ``nll_before``,
        ``nll_after``, ``brier_before``, ``brier_after``, ``ece_before`` and ``ece_after``,
        and ``images`` (``{"validation": n, "test": n}``). Plain JSON data.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError: either table is not a valid
            predictions table (the message names which).
    """
    metrics.check_predictions(validation_table, "the validation predictions")
    metrics.check_predictions(test_table, "the test predictions")
    temperature = fit_temperature(
        _table_probabilities(validation_table), validation_table["true_label"].astype(str).to_numpy()
    )
    report: dict[str, Any] = {"method": METHOD, "temperature": temperature, "fitted_on": FITTED_ON}
    for name, table in (("validation", validation_table), ("test", test_table)):
        before, after = scores(table), scores(table, temperature)
        report[name] = {f"{key}_{when}": value for key in before for when, value in
                        (("before", before[key]), ("after", after[key]))}
    report["images"] = {"validation": int(len(validation_table)), "test": int(len(test_table))}
    return report


def to_json(calibration: dict[str, Any]) -> str:
    """The calibration (a :func:`calibration_report` or any dict with ``temperature``) as JSON text.

    Raises:
        CalibrationError: no usable ``temperature``, or values that are not JSON data.
    """
    check_temperature(calibration.get("temperature") if isinstance(calibration, dict) else None)
    payload = {"method": METHOD, "fitted_on": FITTED_ON, **calibration}
    try:
        return json.dumps(payload, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise CalibrationError(f"The calibration holds values that are not JSON data: {error}.") from None


def from_json(text: str) -> dict[str, Any]:
    """Read a calibration written by :func:`to_json`.

    Raises:
        CalibrationError: not JSON, not an object, another method, or no positive finite
            ``temperature``.
    """
    try:
        payload = json.loads(text)
    except (TypeError, ValueError) as error:
        raise CalibrationError(f"The stored calibration is not valid JSON ({error}); fit it again.") from None
    if not isinstance(payload, dict):
        raise CalibrationError("The stored calibration is not a JSON object; fit it again.")
    if payload.get("method") != METHOD:
        raise CalibrationError(
            f"The stored calibration's method is {payload.get('method')!r}, not {METHOD!r}; fit it again."
        )
    check_temperature(payload.get("temperature"))
    return payload


def check_temperature(temperature: Any) -> float:
    """Return ``temperature`` as a float if it is a positive finite number.

    Raises:
        CalibrationError: anything else (a bool, text, zero, a negative number, NaN, inf).
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise CalibrationError(f"A temperature must be a positive number; got {temperature!r}.")
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise CalibrationError(f"A temperature must be a positive finite number; got {temperature!r}.")
    return value


def _label_indices(labels: Any, shape: tuple[int, int]) -> np.ndarray:
    """Class indices of ``labels`` (names or integers), checked against ``shape``."""
    items = list(labels) if not isinstance(labels, str) else [labels]
    if len(items) != shape[0]:
        raise CalibrationError(f"Got {len(items)} label(s) for {shape[0]} row(s) of probabilities; give one per row.")
    names = {name: index for index, name in enumerate(classes.CLASS_NAMES)}
    indices = np.empty(len(items), dtype=np.int64)
    for position, label in enumerate(items):
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < shape[1]:
            indices[position] = int(label)
        elif isinstance(label, str) and label in names and shape[1] == len(classes.CLASS_NAMES):
            indices[position] = names[label]
        else:
            raise CalibrationError(
                f"Unknown label {label!r} at row {position}; use a class name "
                f"({', '.join(classes.CLASS_NAMES)}) or an index from 0 to {shape[1] - 1}."
            )
    return indices


def _log_probabilities(values: np.ndarray) -> np.ndarray:
    return np.log(np.clip(values, metrics.EPSILON, 1.0))


def _scaled(logs: np.ndarray, temperature: float) -> np.ndarray:
    return scipy.special.softmax(logs / temperature, axis=1)


def _table_probabilities(table: pd.DataFrame) -> np.ndarray:
    return pd.DataFrame(table[metrics.probability_columns()]).apply(pd.to_numeric).to_numpy(dtype=float)


def _as_table(values: np.ndarray, truth: Sequence[int]) -> pd.DataFrame:
    """A predictions table of bare probabilities (rows numbered as paths)."""
    if values.shape[1] != len(classes.CLASS_NAMES):
        raise CalibrationError(
            f"The calibration error is computed for the {len(classes.CLASS_NAMES)} classes "
            f"{', '.join(classes.CLASS_NAMES)}; got {values.shape[1]} columns."
        )
    names = np.asarray(classes.CLASS_NAMES)
    table = pd.DataFrame(values, columns=metrics.probability_columns())
    table.insert(0, "predicted_label", names[values.argmax(axis=1)])
    table.insert(0, "true_label", names[np.asarray(truth)])
    table.insert(0, "path", [str(row) for row in range(len(values))])
    return table
