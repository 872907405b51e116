"""Known-answer tests of every metric, on a table whose results were worked out by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import sklearn.metrics

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics
from tests.evaluation.helpers import known_table, make_table, random_table


@pytest.fixture(scope="module")
def known() -> dict:
    return metrics.compute_metrics(known_table())


def test_counts_based_scores(known) -> None:
    assert known["images"] == 8
    assert known["accuracy"] == pytest.approx(6 / 8)
    assert known["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]
    # Recall 1/2, 1, 1/2, 1.
    assert known["balanced_accuracy"] == pytest.approx(0.75)
    expected = {
        "Cyst": (1.0, 0.5, 1.0, 2 / 3, 2),
        "Normal": (2 / 3, 1.0, 5 / 6, 0.8, 2),
        "Stone": (1.0, 0.5, 1.0, 2 / 3, 2),
        "Tumor": (2 / 3, 1.0, 5 / 6, 0.8, 2),
    }
    for name, (precision, recall, specificity, f1, support) in expected.items():
        row = known["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["specificity"] == pytest.approx(specificity)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    assert known["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 0.8) / 4)
    assert known["macro"]["specificity"] == pytest.approx((1 + 5 / 6 + 1 + 5 / 6) / 4)


def test_loss_is_the_mean_cross_entropy_of_the_true_class(known) -> None:
    true_class_probabilities = [0.7, 0.4, 0.8, 0.6, 0.9, 0.2, 0.7, 0.4]
    assert known["loss"] == pytest.approx(-sum(map(math.log, true_class_probabilities)) / 8)


def test_one_vs_rest_auc_and_average_precision(known) -> None:
    # Pairs (positive, negative) ranked right / 12, a tie counting one half.
    auc = {"Cyst": 12 / 12, "Normal": 12 / 12, "Stone": 11 / 12, "Tumor": 11.5 / 12}
    # Stone: precision 1 at recall 0.5, then 2/4 at recall 1; Tumor: 1, then 2/3.
    average_precision = {"Cyst": 1.0, "Normal": 1.0, "Stone": 0.75, "Tumor": 0.5 + 0.5 * 2 / 3}
    for name in CLASS_NAMES:
        assert known["per_class"][name]["roc_auc"] == pytest.approx(auc[name])
        assert known["per_class"][name]["average_precision"] == pytest.approx(average_precision[name])
    assert known["macro_roc_auc"] == pytest.approx(sum(auc.values()) / 4)
    assert known["macro_average_precision"] == pytest.approx(sum(average_precision.values()) / 4)
    curves = metrics.roc_curves(known_table())
    assert curves["Stone"]["auc"] == pytest.approx(11 / 12)
    assert curves["Stone"]["fpr"][0] == 0 and curves["Stone"]["tpr"][-1] == 1
    pr = metrics.pr_curves(known_table())
    assert pr["Tumor"]["average_precision"] == pytest.approx(5 / 6)
    assert pr["Tumor"]["prevalence"] == pytest.approx(0.25)


def test_expected_calibration_error_and_bins(known) -> None:
    # Confidences 0.7 0.5 0.8 0.6 0.9 0.4 0.7 0.4; wrong at 0.5 and one of the 0.4s.
    bins = {row["upper"]: row for row in known["calibration"]["reliability"]}
    assert len(bins) == 10 and known["calibration"]["bins"] == 10
    assert bins[0.4]["count"] == 2 and bins[0.4]["accuracy"] == pytest.approx(0.5)
    assert bins[0.4]["mean_confidence"] == pytest.approx(0.4)
    assert bins[0.5]["count"] == 1 and bins[0.5]["accuracy"] == 0
    assert bins[0.7]["count"] == 2 and bins[0.7]["accuracy"] == 1
    assert bins[0.1]["count"] == 0 and bins[0.1]["accuracy"] is None
    assert sum(row["count"] for row in bins.values()) == 8
    gaps = 2 * 0.1 + 1 * 0.5 + 1 * 0.4 + 2 * 0.3 + 1 * 0.2 + 1 * 0.1
    assert known["ece"] == pytest.approx(gaps / 8) == pytest.approx(0.25)


def test_undefined_auc_is_none_not_a_number() -> None:
    table = known_table()
    table = table[table["true_label"] != "Stone"]
    result = metrics.compute_metrics(table)
    assert result["per_class"]["Stone"]["roc_auc"] is None
    assert result["per_class"]["Stone"]["average_precision"] is None
    assert result["macro_roc_auc"] == pytest.approx((1 + 1 + result["per_class"]["Tumor"]["roc_auc"]) / 3)


def test_bootstrap_interval_is_seeded_contains_the_estimate_and_matches_sklearn() -> None:
    table = random_table(300, seed=4)
    result = metrics.compute_metrics(table)
    low, high = result["intervals"]["accuracy"]
    assert low <= result["accuracy"] <= high and high - low < 0.2
    low, high = result["intervals"]["macro_f1"]
    assert low <= result["macro_f1"] <= high
    assert result["intervals"]["resamples"] >= 1000 and result["intervals"]["level"] == 0.95
    again = metrics.bootstrap_intervals(table)
    assert again == result["intervals"]
    assert metrics.bootstrap_intervals(table, seed=1)["accuracy"] != again["accuracy"]
    assert metrics.bootstrap_intervals(table.sample(frac=1, random_state=2)) == again
    # One resample is one draw of the seeded generator over the rows in path order: its scores
    # must be sklearn's.
    rows = np.random.default_rng(7).integers(0, len(table), size=(1, len(table)))[0]
    drawn = table.sort_values("path").iloc[rows]
    single = metrics.bootstrap_intervals(table, resamples=1, seed=7)
    assert single["accuracy"][0] == pytest.approx(
        sklearn.metrics.accuracy_score(drawn["true_label"], drawn["predicted_label"])
    )
    assert single["macro_f1"][0] == pytest.approx(
        sklearn.metrics.f1_score(drawn["true_label"], drawn["predicted_label"], labels=list(CLASS_NAMES),
                                 average="macro", zero_division=0)
    )


def test_bootstrap_of_2000_rows_takes_well_under_a_second() -> None:
    table = random_table(2000, seed=1)
    metrics.bootstrap_intervals(table, resamples=100)
    started = time.perf_counter()
    result = metrics.bootstrap_intervals(table, resamples=2000)
    assert time.perf_counter() - started < 1.0
    assert result["resamples"] == 2000


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.drop(columns="prob_Stone"), "lacks the column"),
        (lambda t: t.assign(true_label="Kidney"), "unknown labels"),
        (lambda t: t.assign(prob_Cyst=2.0), "not numbers in [0, 1]"),
        (lambda t: t.assign(prob_Cyst="abc"), "not numbers in [0, 1]"),
        (lambda t: t.assign(prob_Cyst=0.0), "do not sum to 1"),
        (lambda t: t.assign(predicted_label="Stone"), "not the class with the highest probability"),
        (lambda t: t.assign(path="/same.png"), "more than once"),
        (lambda t: t.iloc[:0], "no rows"),
    ],
)
def test_nonsense_tables_are_refused_with_a_reason(edit, message) -> None:
    with pytest.raises(metrics.PredictionsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        metrics.compute_metrics(edit(known_table()))


def test_reliability_refuses_a_bad_bin_count() -> None:
    with pytest.raises(metrics.PredictionsError, match="at least 1"):
        metrics.reliability(known_table(), bins=0)


def test_confusion_rates_divide_each_true_class_by_its_images(known) -> None:
    scores = known
    rates = metrics.confusion_rates(scores["confusion_matrix"])
    assert np.allclose(rates.sum(axis=1), 1.0)
    # The diagonal is each class's recall.
    assert np.allclose(np.diag(rates), [scores["per_class"][name]["recall"] for name in CLASS_NAMES])
    # One Cyst of two was called Normal.
    assert rates[0, 1] == pytest.approx(0.5)


def test_confusion_rates_leave_a_class_without_images_undefined() -> None:
    rates = metrics.confusion_rates([[3, 1], [0, 0]])
    assert rates[0].tolist() == [0.75, 0.25] and np.isnan(rates[1]).all()
    with pytest.raises(metrics.PredictionsError, match="square"):
        metrics.confusion_rates([[1, 2, 3]])
    with pytest.raises(metrics.PredictionsError, match="non-negative"):
        metrics.confusion_rates([[1, -2], [0, 1]])


def test_degenerate_flags_one_class_models_and_chance_scores():
    good = metrics.compute_metrics(random_table(200, skill=4.0), intervals=False)
    assert metrics.degenerate(good) is None
    # Every image called Cyst, whatever it is.
    labels = list(random_table(40)["true_label"])
    always = metrics.compute_metrics(make_table(labels, np.tile([0.7, 0.1, 0.1, 0.1], (40, 1))), intervals=False)
    reason = metrics.degenerate(always)
    assert reason is not None and "Cyst for 100%" in reason and "chance" in reason
    chance = metrics.compute_metrics(random_table(400, skill=0.0), intervals=False)
    assert chance["macro_f1"] <= metrics.CHANCE_MACRO_F1
    assert "chance level" in metrics.degenerate(chance)
    # A stored metrics.json without the fields says nothing.
    assert metrics.degenerate({}) is None
