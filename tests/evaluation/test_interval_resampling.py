"""Which intervals and paired test an evaluation gets: clusters off random splits, images on them
or where the predictions were stored without clusters (stats.metrics_with_intervals)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from tests.evaluation.helpers import clustered_table

PER_CLASS = {"Cyst": 4, "Normal": 1, "Stone": 3, "Tumor": 2}


@pytest.mark.parametrize("kind", ["grouped", "cv", "external", None])
def test_grouped_cv_and_external_resample_clusters(kind) -> None:
    table = clustered_table(PER_CLASS, seed=1)
    result = stats.metrics_with_intervals(table, kind, resamples=300)
    expected = stats.cluster_bootstrap_intervals(table, resamples=300)
    intervals = result["intervals"]
    assert intervals["resampling"] == "cluster" and intervals["clusters"] == 10
    assert intervals["accuracy"] == expected["accuracy"] and intervals["macro_f1"] == expected["macro_f1"]
    assert "series" in intervals["reason"]
    assert result["clusters_per_class"] == PER_CLASS
    assert result["few_clusters"] == ["Normal", "Tumor"]
    # The scores themselves are those of compute_metrics.
    assert result["macro_f1"] == metrics.compute_metrics(table, resamples=10)["macro_f1"]


def test_a_random_split_resamples_images_and_says_so() -> None:
    table = clustered_table(PER_CLASS, seed=1)
    result = stats.metrics_with_intervals(table, "random", resamples=300)
    intervals = result["intervals"]
    expected = metrics.bootstrap_intervals(table, resamples=300)
    assert intervals["resampling"] == "image" and intervals["clusters"] is None
    assert intervals["macro_f1"] == expected["macro_f1"] and "random split" in intervals["reason"]
    assert stats.resampling_words(intervals) == "over images (as if independent)"
    # The clusters a score rests on are still counted.
    assert result["clusters_per_class"] == PER_CLASS and result["few_clusters"] == ["Normal", "Tumor"]


def test_old_predictions_without_clusters_still_read(tmp_path: Path) -> None:
    table = clustered_table(PER_CLASS, seed=2).drop(columns=metrics.CLUSTER_COLUMN)
    path = tmp_path / "predictions.csv"
    table.to_csv(path, index=False)
    loaded = store.read_predictions(path)
    result = stats.metrics_with_intervals(loaded, "grouped", resamples=200)
    assert result["intervals"]["resampling"] == "image"
    assert "without their near-duplicate clusters" in result["intervals"]["reason"]
    assert result["clusters_per_class"] is None and result["few_clusters"] is None
    assert stats.few_cluster_warnings(None) == []


def test_a_stored_cluster_column_reads_back_and_resamples(tmp_path: Path) -> None:
    table = clustered_table(PER_CLASS, seed=3)
    path = tmp_path / "predictions.csv"
    table.to_csv(path, index=False)
    loaded = store.read_predictions(path)
    assert stats.metrics_with_intervals(loaded, "grouped", resamples=200)["intervals"] == (
        stats.metrics_with_intervals(table, "grouped", resamples=200)["intervals"]
    )


def test_few_cluster_warnings_name_the_class_and_its_count() -> None:
    sentences = stats.few_cluster_warnings({"Cyst": 5, "Normal": 1, "Stone": 0, "Tumor": 2})
    assert sentences[0] == (
        "Normal rests on 1 near-duplicate cluster (series): its recall is one or two patients' recall."
    )
    assert sentences[1].startswith("Stone: no images") and "Tumor rests on 2 near-duplicate clusters" in sentences[2]


def test_paired_comparison_keeps_series_together_off_random_splits() -> None:
    a = clustered_table(PER_CLASS, seed=4, skill=3.0)
    b = clustered_table(PER_CLASS, seed=5, skill=0.5)
    grouped = stats.paired_comparison(a, b, "grouped", resamples=300)
    cluster = stats.paired_cluster_test(a, b, resamples=300)
    assert grouped["test"] == "cluster" and grouped["resampling"] == "cluster"
    assert grouped["p_value"] == cluster["p_value"] and grouped["clusters"] == 10
    assert grouped["only_a_right"] == stats.mcnemar(a, b)["only_a_right"] and "statistic" not in grouped

    random = stats.paired_comparison(a, b, "random", resamples=300)
    assert random["test"] == "mcnemar" and random["p_value"] == stats.mcnemar(a, b)["p_value"]
    # One table without clusters: McNemar's test, with the reason.
    old = stats.paired_comparison(a, b.drop(columns=metrics.CLUSTER_COLUMN), "grouped")
    assert old["test"] == "mcnemar" and "without their near-duplicate clusters" in old["reason"]


def test_series_scores_count_the_series_each_verdict_gets_right() -> None:
    table = clustered_table(PER_CLASS, seed=6, skill=1.0)
    result = stats.series_scores(table)
    verdicts = stats.cluster_verdicts(table)
    assert result["series"] == 10 and result["right"] == int(verdicts["correct"].sum())
    assert result["accuracy"] == result["right"] / 10
    assert {name: item["series"] for name, item in result["per_class"].items()} == PER_CLASS
    normal = verdicts[verdicts["true_label"] == "Normal"]
    assert result["per_class"]["Normal"]["recall"] == float(normal["correct"].mean())
