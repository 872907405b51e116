"""Tests of kidney_lab/evaluation/calibration.py on synthetic predictions tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import calibration, metrics
from tests.evaluation.helpers import known_table, make_table


def sampled_table(rows: int, seed: int, sharpen: float, prefix: str = "/data/img") -> pd.DataFrame:
    """Labels drawn from calibrated probabilities, whose logits are then multiplied by ``sharpen``.

    ``sharpen=1`` gives a calibrated table (its best temperature is 1); ``sharpen > 1`` an
    over-confident one (best temperature about ``sharpen``).
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(rows, len(CLASS_NAMES)))
    honest = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = [CLASS_NAMES[rng.choice(len(CLASS_NAMES), p=row)] for row in honest]
    shown = np.exp(logits * sharpen)
    return make_table(truth, shown / shown.sum(axis=1, keepdims=True), prefix=prefix)


def probabilities_of(table: pd.DataFrame) -> np.ndarray:
    return table[metrics.probability_columns()].to_numpy(dtype=float)


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_table() -> None:
    table = sampled_table(2000, seed=1, sharpen=3.0)
    values, truth = probabilities_of(table), table["true_label"].to_numpy()
    temperature = calibration.fit_temperature(values, truth)
    before = calibration.nll(values, truth)
    after = calibration.nll(calibration.apply_temperature(values, temperature), truth)
    assert 2.5 < temperature < 3.5
    assert after < before - 0.1
    # The fitted temperature is the minimum: its neighbours are worse.
    for other in (temperature * 0.8, temperature * 1.25):
        assert calibration.nll(calibration.apply_temperature(values, other), truth) > after


def test_a_calibrated_table_gets_a_temperature_near_one() -> None:
    table = sampled_table(4000, seed=2, sharpen=1.0)
    temperature = calibration.fit_temperature(probabilities_of(table), table["true_label"])
    assert abs(temperature - 1.0) < 0.1


def test_an_under_confident_table_is_sharpened() -> None:
    table = sampled_table(2000, seed=3, sharpen=0.5)
    assert calibration.fit_temperature(probabilities_of(table), table["true_label"]) < 0.7


def test_temperature_keeps_the_predicted_class_and_rows_sum_to_one() -> None:
    table = sampled_table(300, seed=4, sharpen=2.0)
    for temperature in (0.3, 1.0, 4.0):
        scaled = calibration.calibrate_table(table, temperature)
        metrics.check_predictions(scaled)
        assert (scaled["predicted_label"] == table["predicted_label"]).all()
        assert np.allclose(probabilities_of(scaled).sum(axis=1), 1.0)
    assert np.allclose(calibration.apply_temperature(probabilities_of(table), 1.0), probabilities_of(table))


def test_scores_match_hand_computed_values() -> None:
    table = known_table()
    values, truth = probabilities_of(table), table["true_label"]
    picked = values[np.arange(8), [CLASS_NAMES.index(label) for label in truth]]
    assert calibration.nll(values, truth) == pytest.approx(-np.mean(np.log(picked)))
    assert calibration.nll(values, truth) == pytest.approx(metrics.compute_metrics(table, resamples=10)["loss"])
    # Row 0: (0.7 - 1)^2 + 3 * 0.1^2 = 0.12.
    assert calibration.brier(values[:1], truth[:1]) == pytest.approx(0.12)
    assert calibration.ece(values, truth) == pytest.approx(metrics.reliability(table)["ece"])
    # Labels may be class indices too.
    indices = [CLASS_NAMES.index(label) for label in truth]
    assert calibration.brier(values, indices) == pytest.approx(calibration.brier(values, truth))


def test_calibration_report_fits_on_validation_and_scores_both() -> None:
    validation = sampled_table(1500, seed=5, sharpen=2.5, prefix="/val/img")
    test = sampled_table(800, seed=6, sharpen=2.5, prefix="/test/img")
    report = calibration.calibration_report(validation, test)
    assert report["fitted_on"] == "validation"
    assert report["temperature"] == pytest.approx(
        calibration.fit_temperature(probabilities_of(validation), validation["true_label"])
    )
    assert report["images"] == {"validation": 1500, "test": 800}
    for subset in ("validation", "test"):
        assert set(report[subset]) == {
            f"{score}_{when}" for score in ("nll", "brier", "ece") for when in ("before", "after")
        }
        assert report[subset]["nll_after"] < report[subset]["nll_before"]
        assert report[subset]["ece_after"] < report[subset]["ece_before"]
    assert report["test"]["nll_before"] == pytest.approx(metrics.compute_metrics(test, resamples=10)["loss"])
    json.dumps(report, allow_nan=False)


def test_round_trip_through_json() -> None:
    report = calibration.calibration_report(sampled_table(200, 7, 2.0), sampled_table(100, 8, 2.0))
    text = calibration.to_json(report)
    assert "pickle" not in text
    back = calibration.from_json(text)
    assert back["temperature"] == report["temperature"]
    assert back["test"] == report["test"]
    assert calibration.from_json(calibration.to_json({"temperature": 2}))["temperature"] == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"method": "platt", "temperature": 1.0}', "method"),
        ('{"method": "temperature_scaling"}', "positive number"),
        ('{"method": "temperature_scaling", "temperature": -1}', "positive finite"),
        ('{"method": "temperature_scaling", "temperature": "2"}', "positive number"),
    ],
)
def test_from_json_refuses_bad_files(text: str, message: str) -> None:
    with pytest.raises(calibration.CalibrationError, match=message):
        calibration.from_json(text)


@pytest.mark.parametrize(
    ("probabilities", "labels", "message"),
    [
        ([[0.5, 0.5]], ["Cyst", "Cyst"], "2 label"),
        ([], [], "shape"),
        ([[1.0]], [0], "shape"),
        ([[0.5, 0.7]], [0], "do not sum to 1"),
        ([[2.0, -1.0]], [0], r"\[0, 1\]"),
        ([[math.nan, 1.0]], [0], r"\[0, 1\]"),
        ([[0.5, 0.5]], [5], "Unknown label 5"),
        ([[0.25] * 4], ["Kidney"], "Unknown label 'Kidney'"),
        ([[0.5, 0.5]], [True], "Unknown label True"),
        ("abc", [0], "numbers"),
    ],
)
def test_bad_input_is_refused_with_a_message(probabilities, labels, message: str) -> None:
    with pytest.raises(calibration.CalibrationError, match=message):
        calibration.fit_temperature(probabilities, labels)


@pytest.mark.parametrize("temperature", [0, -2.0, math.inf, math.nan, "1", True, None])
def test_a_bad_temperature_is_refused(temperature) -> None:
    with pytest.raises(calibration.CalibrationError, match="temperature"):
        calibration.apply_temperature([[0.5, 0.5]], temperature)


def test_report_names_the_bad_table() -> None:
    broken = known_table().drop(columns=["prob_Cyst"])
    with pytest.raises(metrics.PredictionsError, match="the test predictions lacks"):
        calibration.calibration_report(known_table(), broken)
    with pytest.raises(calibration.CalibrationError, match="temperature"):
        calibration.to_json({"temperature": 0.0})
