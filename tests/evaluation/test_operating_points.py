"""Operating points: the threshold comes from validation only; test scores with intervals."""

from __future__ import annotations

import numpy as np
import pytest

from kidney_lab import runs
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import operating_points
from kidney_lab.evaluation import stats
from tests.evaluation import helpers


def tumor_table(scores: list[float], labels: list[str], prefix: str) -> "helpers.pd.DataFrame":
    """Rows whose Tumor probability is ``scores[i]``, the rest split evenly over the other classes."""
    probabilities = np.array([[(1 - score) / 3] * 3 + [score] for score in scores])
    return helpers.make_table(labels, probabilities, prefix=prefix)


def test_threshold_is_the_highest_that_reaches_the_target():
    # Four Tumor images at 0.9, 0.8, 0.6, 0.3; two others at 0.7 and 0.2.
    validation = tumor_table([0.9, 0.8, 0.6, 0.3, 0.7, 0.2], ["Tumor"] * 4 + ["Normal", "Cyst"], "/val/i")
    chosen = operating_points.choose_threshold(validation, "Tumor", 0.75)
    # 3 of 4 positives are needed: the third highest positive score.
    assert chosen["threshold"] == pytest.approx(0.6)
    assert chosen["validation"]["sensitivity"] == pytest.approx(0.75)
    assert chosen["validation"]["specificity"] == pytest.approx(0.5)  # 0.7 is called Tumor, 0.2 is not
    assert operating_points.choose_threshold(validation, "Tumor", 1.0)["threshold"] == pytest.approx(0.3)
    # A target just above 3/4 needs all four.
    assert operating_points.choose_threshold(validation, "Tumor", 0.76)["threshold"] == pytest.approx(0.3)


def test_test_scores_at_a_threshold_with_bayes_ppv_npv():
    test = tumor_table([0.9, 0.5, 0.4, 0.1, 0.6, 0.3, 0.2, 0.05],
                       ["Tumor"] * 4 + ["Normal", "Cyst", "Stone", "Normal"], "/test/i")
    result = operating_points.score_threshold(test, "Tumor", 0.4, "random", prevalence=0.1, resamples=200)
    assert (result["true_positives"], result["false_negatives"]) == (3, 1)
    assert (result["false_positives"], result["true_negatives"]) == (1, 3)
    assert result["sensitivity"] == pytest.approx(0.75)
    assert result["specificity"] == pytest.approx(0.75)
    assert result["ppv"] == pytest.approx(0.075 / (0.075 + 0.225))
    assert result["npv"] == pytest.approx(0.675 / (0.675 + 0.025))
    assert result["prevalence_source"] == "user"
    intervals = result["intervals"]
    assert intervals["resampling"] == "image" and "random split" in intervals["reason"]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        low, high = intervals[key]
        assert low <= result[key] <= high
    # Without a prevalence, the test images' own share is used.
    assert operating_points.score_threshold(test, "Tumor", 0.4, "random", resamples=10)["prevalence"] == 0.5


def test_intervals_resample_clusters_on_a_grouped_split():
    test = helpers.clustered_table({"Cyst": 3, "Normal": 3, "Stone": 3, "Tumor": 4}, images_per_cluster=5)
    result = operating_points.score_threshold(test, "Tumor", 0.4, "grouped", resamples=300)
    assert result["intervals"]["resampling"] == "cluster"
    assert result["intervals"]["clusters"] == 13
    # The same kernel as every other interval: the unit counts resampled with the same seed.
    assert result["intervals"]["seed"] == metrics.BOOTSTRAP_SEED
    expected, _ = stats.interval_resampling(test, "grouped")
    assert expected == "cluster"


def test_the_test_file_never_changes_the_threshold(tmp_path):
    validation = helpers.random_table(80, seed=1, prefix="/val/v")
    run = helpers.fake_run(tmp_path, "mobilenetv2", helpers.random_table(60, seed=2, prefix="/test/t"))
    validation.to_csv(runs.validation_predictions_path(run), index=False)
    first = operating_points.operating_point(run, "Tumor", 0.9, resamples=50)
    # Another test table (other images, other scores): same threshold, other test scores.
    helpers.write_evaluation(run, runs.TEST_SOURCE, helpers.random_table(60, seed=3, skill=0.2, prefix="/test/u"),
                             split_kind="grouped")
    second = operating_points.operating_point(run, "Tumor", 0.9, resamples=50)
    assert first["threshold"] == second["threshold"]
    assert first["validation"] == second["validation"]
    assert first["test"]["sensitivity"] != second["test"]["sensitivity"]
    assert first["validation"]["sensitivity"] >= 0.9


def test_a_run_without_validation_predictions_says_how_to_get_them(tmp_path):
    run = helpers.fake_run(tmp_path, "mobilenetv2", helpers.random_table(20))
    with pytest.raises(operating_points.MissingValidationError, match="fit-ood"):
        operating_points.operating_point(run)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("Tumour", 0.9), "Unknown class"),
        (("Tumor", 0.0), "target sensitivity"),
        (("Tumor", 1.2), "target sensitivity"),
    ],
)
def test_bad_requests_are_refused(arguments, message):
    with pytest.raises(metrics.PredictionsError, match=message):
        operating_points.choose_threshold(helpers.random_table(20), *arguments)


def test_bad_prevalence_and_missing_class_are_refused():
    table = helpers.random_table(20)
    with pytest.raises(metrics.PredictionsError, match="prevalence"):
        operating_points.score_threshold(table, "Tumor", 0.5, "random", prevalence=1.0)
    no_tumor = table[table["true_label"] != "Tumor"]
    with pytest.raises(metrics.PredictionsError, match="no Tumor image"):
        operating_points.choose_threshold(no_tumor, "Tumor", 0.9)
