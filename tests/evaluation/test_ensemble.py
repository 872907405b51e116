"""Tests of kidney_lab/evaluation/ensemble.py on synthetic members of the same images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import calibration, ensemble, metrics
from tests.evaluation.helpers import known_table, make_table


def member(truth: np.ndarray, skill: float, seed: int, sharpen: float = 1.0, prefix: str = "/data/img") -> pd.DataFrame:
    """A member's table of fixed images: noise logits with ``skill`` added to the true class."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(truth), len(CLASS_NAMES)))
    logits[np.arange(len(truth)), truth] += skill
    shown = np.exp(logits * sharpen)
    return make_table([CLASS_NAMES[index] for index in truth], shown / shown.sum(axis=1, keepdims=True), prefix)


@pytest.fixture
def truth() -> np.ndarray:
    return np.random.default_rng(0).integers(0, len(CLASS_NAMES), 600)


def probabilities_of(table: pd.DataFrame) -> np.ndarray:
    return table[metrics.probability_columns()].to_numpy(dtype=float)


def test_the_ensemble_is_the_mean_of_calibrated_members_and_a_valid_table(truth: np.ndarray) -> None:
    first, second = member(truth, 1.5, seed=1), member(truth, 1.0, seed=2, sharpen=3.0)
    # The second member's rows come in another order; the ensemble follows the first's.
    shuffled = second.sample(frac=1.0, random_state=0)
    combined = ensemble.combine([first, shuffled], temperatures=[1.0, 3.0])
    expected = (probabilities_of(first) + calibration.apply_temperature(probabilities_of(second), 3.0)) / 2
    assert np.allclose(probabilities_of(combined), expected)
    assert list(combined["path"]) == list(first["path"])
    assert list(combined.columns[:3]) == ["path", "true_label", "predicted_label"]
    result = metrics.compute_metrics(combined, resamples=20)
    assert result["images"] == len(truth)


def test_an_ensemble_of_independent_members_beats_each(truth: np.ndarray) -> None:
    members = [member(truth, 1.2, seed=seed) for seed in (3, 4, 5)]
    combined = ensemble.combine(members)
    accuracy = metrics.compute_metrics(combined, resamples=10)["accuracy"]
    assert accuracy > max(metrics.compute_metrics(table, resamples=10)["accuracy"] for table in members)


def test_weights_fitted_on_validation_favour_the_better_member(truth: np.ndarray) -> None:
    good, noise = member(truth, 3.0, seed=6), member(truth, 0.0, seed=7)
    weights = ensemble.fit_weights([good, noise])
    assert sum(weights) == pytest.approx(1.0)
    assert all(0.0 <= value <= 1.0 for value in weights)
    assert weights[0] > 0.9
    labels = good["true_label"]
    fitted = calibration.nll(probabilities_of(ensemble.combine([good, noise], weights=weights)), labels)
    equal = calibration.nll(probabilities_of(ensemble.combine([good, noise])), labels)
    assert fitted < equal


def test_weights_are_equal_for_exchangeable_members(truth: np.ndarray) -> None:
    weights = ensemble.fit_weights([member(truth, 1.5, seed=8), member(truth, 1.5, seed=9)])
    assert weights == pytest.approx([0.5, 0.5], abs=0.15)


def test_a_single_member_is_its_own_calibrated_table(truth: np.ndarray) -> None:
    only = member(truth, 1.0, seed=10, sharpen=2.0)
    combined = ensemble.combine([only], temperatures=[2.0])
    assert np.allclose(probabilities_of(combined), probabilities_of(calibration.calibrate_table(only, 2.0)))
    assert ensemble.fit_weights([only]) == [1.0]


def test_the_cluster_column_is_kept() -> None:
    table = known_table()
    table[metrics.CLUSTER_COLUMN] = [f"c{index // 2}" for index in range(len(table))]
    combined = ensemble.combine([table, known_table()])
    assert list(combined[metrics.CLUSTER_COLUMN]) == list(table[metrics.CLUSTER_COLUMN])


def test_members_of_other_images_are_refused(truth: np.ndarray) -> None:
    first = member(truth, 1.0, seed=11)
    with pytest.raises(ensemble.EnsembleError, match="Member 2 lacks 600 image"):
        ensemble.combine([first, member(truth, 1.0, seed=12, prefix="/other/img")])
    with pytest.raises(ensemble.EnsembleError, match="Member 2 lacks 1 image"):
        ensemble.combine([first, first.iloc[1:]])
    with pytest.raises(ensemble.EnsembleError, match="Member 3 has extra 1 image"):
        ensemble.combine([first.iloc[1:], first.iloc[1:], first])


def test_members_with_other_labels_are_refused() -> None:
    first, relabelled = known_table(), known_table()
    relabelled.loc[0, "true_label"] = "Tumor"
    with pytest.raises(ensemble.EnsembleError, match="another true label"):
        ensemble.fit_weights([first, relabelled])


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"temperatures": [1.0]}, ensemble.EnsembleError, "1 temperature"),
        ({"temperatures": [1.0, 0.0]}, calibration.CalibrationError, "temperature"),
        ({"weights": [1.0]}, ensemble.EnsembleError, "1 weight"),
        ({"weights": [0.0, 0.0]}, ensemble.EnsembleError, "not all 0"),
        ({"weights": [-1.0, 2.0]}, ensemble.EnsembleError, "at least 0"),
        ({"weights": ["a", "b"]}, ensemble.EnsembleError, "numbers"),
    ],
)
def test_bad_weights_and_temperatures_are_refused(arguments: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ensemble.combine([known_table(), known_table()], **arguments)


def test_bad_members_are_refused() -> None:
    with pytest.raises(ensemble.EnsembleError, match="at least one member"):
        ensemble.combine([])
    with pytest.raises(ensemble.EnsembleError, match="list"):
        ensemble.combine(known_table())
    with pytest.raises(metrics.PredictionsError, match="member 2's predictions lacks"):
        ensemble.combine([known_table(), known_table().drop(columns=["path"])])


def test_describe_is_plain_data() -> None:
    recipe = ensemble.describe([2.0, 2.0], [1.0, 1.5], ["run-a", "run-b"])
    assert recipe == {
        "members": ["run-a", "run-b"], "weights": [0.5, 0.5], "temperatures": [1.0, 1.5],
        "weights_fitted_on": "validation",
    }
    with pytest.raises(ensemble.EnsembleError, match="one of each"):
        ensemble.describe([1.0], [1.0, 1.0], ["a", "b"])
