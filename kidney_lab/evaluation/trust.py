"""What a run keeps so that its answers can be doubted: its validation predictions, its
out-of-distribution (OOD) detector and its calibration.

Three files of the run folder (their paths are the run store's facts, :mod:`kidney_lab.runs`):

- ``val_predictions.csv`` (:func:`kidney_lab.runs.validation_predictions_path`): the kept model's
  predictions on the run's validation images, a predictions table with ``cluster`` (and the OOD
  columns below). Calibration is fitted on it, never on test images.
- ``ood_detector.json`` (:func:`kidney_lab.runs.detector_path`): a
  :class:`kidney_lab.models.ood.LayeredDetector` fitted on the features of the run's training
  images (the mean-pooled activations of the registry's ``ood_layers`` and the head's input),
  its threshold the 95th percentile of the validation images' scores.
- ``calibration.json`` (:func:`kidney_lab.runs.calibration_path`): the
  :func:`kidney_lab.evaluation.calibration.calibration_report` of the validation and test
  predictions (temperature, NLL, Brier and ECE before and after).

Training writes the first two when it ends and ``python -m kidney_lab fit-ood RUN`` writes them
for an older run (:func:`kidney_lab.evaluation.evaluate.fit_trust`); evaluating the test split
then writes the third. An evaluation of a run with a detector stores per image
:data:`OOD_SCORE_COLUMN` and :data:`OOD_FLAGGED_COLUMN` in its predictions table, and its metrics
carry :func:`ood_summary` and :func:`calibration_figures`.

This module reads and summarises; it loads no TensorFlow, so a page can use it.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from kidney_lab import runs
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import calibration
from kidney_lab.evaluation import store
from kidney_lab.models import ood

OOD_SCORE_COLUMN = "ood_score"
OOD_FLAGGED_COLUMN = "ood_flagged"


def read_detector(run_dir: str | os.PathLike[str]) -> ood.AnyDetector | None:
    """The run's OOD detector, or None when it has none.

    Raises:
        kidney_lab.models.ood.OODError: the stored detector cannot be read (the message says to
            fit it again with ``fit-ood``).
    """
    path = runs.detector_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ood.OODError(f"{path} cannot be read ({error}); {_refit_hint(run_dir)}") from None
    try:
        return ood.loads(text)
    except ood.OODError as error:
        raise ood.OODError(f"{path}: {error} ({_refit_hint(run_dir)})") from None


def read_calibration(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's stored calibration (``calibration.json``), or None when it has none.

    Raises:
        kidney_lab.evaluation.calibration.CalibrationError: the file cannot be read.
    """
    path = runs.calibration_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise calibration.CalibrationError(f"{path} cannot be read ({error}); {_refit_hint(run_dir)}") from None
    try:
        return calibration.from_json(text)
    except calibration.CalibrationError as error:
        raise calibration.CalibrationError(f"{path}: {error} ({_refit_hint(run_dir)})") from None


def temperature(run_dir: str | os.PathLike[str]) -> float:
    """The run's fitted temperature; 1.0 (probabilities as the model gives them) without calibration.

    Raises:
        kidney_lab.evaluation.calibration.CalibrationError: see :func:`read_calibration`.
    """
    stored = read_calibration(run_dir)
    return 1.0 if stored is None else calibration.check_temperature(stored["temperature"])


def read_validation_predictions(run_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The run's validated ``val_predictions.csv``, or None when it has none.

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError: the stored table is damaged.
    """
    path = runs.validation_predictions_path(run_dir)
    return store.read_predictions(path) if path.is_file() else None


def add_ood_columns(table: pd.DataFrame, detector: ood.AnyDetector, features: Any) -> pd.DataFrame:
    """A copy of a predictions table with :data:`OOD_SCORE_COLUMN` and :data:`OOD_FLAGGED_COLUMN`.

    Args:
        table: a predictions table, one row per row of ``features``.
        detector: the run's detector.
        features: the pooled features of the table's images, in its row order.

    Raises:
        kidney_lab.models.ood.OODError: features of another length than the detector's, or
            another number of rows than the table.
    """
    scores = detector.score(features)
    if len(scores) != len(table):
        raise ood.OODError(f"Got OOD features of {len(scores)} image(s) for a table of {len(table)} row(s).")
    scored = table.copy()
    scored[OOD_SCORE_COLUMN] = scores
    scored[OOD_FLAGGED_COLUMN] = scores > detector.threshold
    return scored


def ood_summary(table: pd.DataFrame, detector: ood.AnyDetector | None) -> dict[str, Any]:
    """``ood_flagged_share`` (share of the table's images flagged, 0 to 1) and ``ood_threshold``;
    both None without a detector or without the OOD columns."""
    share = flagged_share(table)
    if detector is None or share is None:
        return {"ood_flagged_share": None, "ood_threshold": None}
    return {"ood_flagged_share": share, "ood_threshold": float(detector.threshold)}


def flagged_share(table: pd.DataFrame) -> float | None:
    """The share of a stored predictions table's images that were flagged, or None without the column."""
    if OOD_FLAGGED_COLUMN not in table.columns:
        return None
    return float(table[OOD_FLAGGED_COLUMN].astype(str).str.lower().isin(("true", "1")).mean())


def calibration_figures(table: pd.DataFrame, fitted_temperature: float | None) -> dict[str, Any] | None:
    """The before/after figures of one evaluation: ``temperature``, ``fitted_on``,
    ``nll_before``/``nll_after`` (nats), ``brier_before``/``brier_after``,
    ``ece_before``/``ece_after`` and ``images``; None without a temperature.

    For the run's test split they are the ``test`` figures of ``calibration.json``; an
    evaluation's ``metrics.json`` stores them in its ``calibration`` object, next to the
    reliability bins (:func:`test_figures` reads them back).

    Raises:
        kidney_lab.evaluation.metrics.PredictionsError: not a valid predictions table.
        kidney_lab.evaluation.calibration.CalibrationError: a bad temperature.
    """
    if fitted_temperature is None:
        return None
    before, after = calibration.scores(table), calibration.scores(table, fitted_temperature)
    figures: dict[str, Any] = {"temperature": float(fitted_temperature), "fitted_on": calibration.FITTED_ON}
    for key in before:
        figures[f"{key}_before"], figures[f"{key}_after"] = before[key], after[key]
    figures["images"] = int(len(table))
    return figures


def test_figures(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The before/after calibration figures of a stored evaluation's metrics (see
    :func:`calibration_figures`), or None when it has none."""
    found = (stored or {}).get("calibration")
    if not isinstance(found, dict) or "temperature" not in found:
        return None
    keys = ("temperature", "fitted_on", "nll_before", "nll_after", "brier_before", "brier_after",
            "ece_before", "ece_after", "images")
    return {key: found.get(key) for key in keys}


def metrics_caveats(stored: dict[str, Any] | None) -> list[str]:
    """Short caveats about a model from its stored test metrics (``metrics.json``): the one
    judgement of :func:`kidney_lab.evaluation.metrics.degenerate` (it predicts one class for
    nearly every test image, or scores at chance). Empty when neither, or without metrics."""
    reason = metrics_module.degenerate(stored) if stored else None
    return [reason] if reason else []


def _refit_hint(run_dir: str | os.PathLike[str]) -> str:
    return f"fit it again with `python -m kidney_lab fit-ood {os.fspath(run_dir)}`"
