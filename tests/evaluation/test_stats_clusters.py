"""Cluster bootstrap, paired cluster test and series-level verdicts, against known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import stats
from tests.evaluation.helpers import make_table, random_table


def confident(labels: list[str], right: list[bool]) -> np.ndarray:
    """Probabilities: 0.85 on the true class where right, on the next class where wrong."""
    rows = np.full((len(labels), len(CLASS_NAMES)), 0.05)
    for row, (label, correct) in enumerate(zip(labels, right)):
        index = CLASS_NAMES.index(label)
        rows[row, index if correct else (index + 1) % len(CLASS_NAMES)] = 0.85
    return rows


def series_table(right_per_cluster: list[bool], slices: int, prefix: str = "/data/img") -> pd.DataFrame:
    """Clusters of ``slices`` identical predictions each: cluster ``c`` has class ``c % 4``."""
    labels, right, clusters = [], [], []
    for cluster, correct in enumerate(right_per_cluster):
        labels += [CLASS_NAMES[cluster % len(CLASS_NAMES)]] * slices
        right += [correct] * slices
        clusters += [cluster] * slices
    return make_table(labels, confident(labels, right), prefix=prefix).assign(cluster=clusters)


@pytest.fixture(scope="module")
def two_clusters() -> pd.DataFrame:
    """Cluster 0: three Cyst images predicted right; cluster 1: one Tumor image predicted Cyst."""
    labels = ["Cyst", "Cyst", "Cyst", "Tumor"]
    table = make_table(labels, confident(labels, [True, True, True, False]))
    return table.assign(cluster=[0, 0, 0, 1])


def test_two_cluster_bootstrap_has_the_enumerated_distribution(two_clusters):
    # Drawing 2 of 2 clusters with replacement: both cluster 0 (1/4), one of each (1/2), both 1 (1/4).
    cells = metrics.unit_confusions(two_clusters, two_clusters["cluster"])
    accuracy, macro_f1 = metrics.resampled_scores(cells, resamples=40_000, seed=5)
    values, counts = np.unique(accuracy, return_counts=True)
    assert values.tolist() == [0.0, 0.75, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
    # Macro F1 over all four classes: Cyst F1 1 alone (0.25); Cyst 6/7 and Tumor 0 (6/28); all 0.
    assert sorted(set(np.round(macro_f1, 12))) == pytest.approx([0.0, 6 / 28, 0.25])
    result = stats.cluster_bootstrap_intervals(two_clusters, resamples=2000, seed=5)
    assert result["accuracy"] == [0.0, 1.0] and result["macro_f1"] == [0.0, 0.25]
    assert (result["resampling"], result["clusters"], result["images"]) == ("cluster", 2, 4)
    assert result["clusters_per_class"] == {"Cyst": 1, "Normal": 0, "Stone": 0, "Tumor": 1}


def test_cluster_bootstrap_matches_an_independent_loop_with_sklearn():
    table = random_table(60, seed=4).assign(cluster=np.random.default_rng(1).integers(0, 12, 60))
    ids = sorted(set(table["cluster"].astype(str)))
    members = {key: table[table["cluster"].astype(str) == key] for key in ids}
    rng = np.random.default_rng(9)
    accuracy, macro_f1 = [], []
    for _ in range(300):
        drawn = pd.concat([members[ids[index]] for index in rng.integers(0, len(ids), size=len(ids))])
        accuracy.append(sklearn.metrics.accuracy_score(drawn["true_label"], drawn["predicted_label"]))
        macro_f1.append(sklearn.metrics.f1_score(drawn["true_label"], drawn["predicted_label"],
                                                 labels=list(CLASS_NAMES), average="macro", zero_division=0))
    result = stats.cluster_bootstrap_intervals(table.sample(frac=1, random_state=3), resamples=300, seed=9)
    assert result["accuracy"] == pytest.approx(np.percentile(accuracy, [2.5, 97.5]).tolist(), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(np.percentile(macro_f1, [2.5, 97.5]).tolist(), abs=1e-12)


def test_one_image_per_cluster_is_the_image_bootstrap():
    table = random_table(200, seed=2)
    image = metrics.bootstrap_intervals(table, resamples=500, seed=3)
    cluster = stats.cluster_bootstrap_intervals(table.assign(cluster=table["path"]), resamples=500, seed=3)
    assert (cluster["accuracy"], cluster["macro_f1"]) == (image["accuracy"], image["macro_f1"])
    assert (image["resampling"], image["clusters"]) == ("image", None)
    assert cluster["clusters"] == 200


@pytest.mark.parametrize("slices", [4, 9, 16])
def test_identical_slices_widen_the_interval_by_the_square_root_of_their_number(slices):
    right = (np.random.default_rng(slices).random(80) < 0.7).tolist()
    table = series_table(right, slices)
    image = metrics.bootstrap_intervals(table, resamples=4000, seed=0)
    cluster = stats.cluster_bootstrap_intervals(table, resamples=4000, seed=0)
    for key in ("accuracy", "macro_f1"):
        ratio = np.diff(cluster[key])[0] / np.diff(image[key])[0]
        assert ratio == pytest.approx(np.sqrt(slices), rel=0.2), key


def test_paired_test_of_identical_models_gives_p_one():
    table = series_table([True, False, True, True, False, True, True, True], slices=5)
    result = stats.paired_cluster_test(table, table.sample(frac=1, random_state=0))
    assert result["p_value"] == 1.0 and result["p_value_accuracy"] == 1.0
    assert result["difference"] == {"accuracy": 0.0, "macro_f1": 0.0}
    assert result["difference_interval"] == {"accuracy": [0.0, 0.0], "macro_f1": [0.0, 0.0]}


def test_paired_test_finds_a_clearly_better_model():
    rng = np.random.default_rng(0)
    worse = series_table((rng.random(40) < 0.3).tolist(), slices=5)
    better = series_table((rng.random(40) < 0.95).tolist(), slices=5)
    result = stats.paired_cluster_test(worse, better)
    assert result["p_value"] < 0.01 and result["p_value_accuracy"] < 0.01
    assert result["difference"]["accuracy"] > 0.4
    low, high = result["difference_interval"]["macro_f1"]
    assert 0 < low <= result["difference"]["macro_f1"] <= high
    assert (result["clusters"], result["images"]) == (40, 200)


def test_paired_test_is_less_sure_than_image_level_when_series_are_identical():
    # B gets four more series right than A, eight identical slices each: 32 discordant images
    # but only four discordant series. Swapping A and B per series gives a difference as large
    # as the observed one in 2 of 16 arrangements of those four.
    right_a = [True] * 15 + [False] * 15
    right_b = [True] * 19 + [False] * 11
    table_a, table_b = series_table(right_a, 8), series_table(right_b, 8)
    series = stats.paired_cluster_test(table_a, table_b, resamples=4000)
    images = stats.paired_cluster_test(table_a.assign(cluster=table_a["path"]), table_b.assign(cluster=table_b["path"]),
                                       resamples=4000)
    assert series["p_value_accuracy"] == pytest.approx(2 / 16, abs=0.03)
    assert images["p_value_accuracy"] < 0.001 and stats.mcnemar(table_a, table_b)["p_value"] < 0.001
    assert series["p_value"] > 0.05 > images["p_value"]
    assert np.diff(series["difference_interval"]["accuracy"])[0] > 2 * np.diff(images["difference_interval"]["accuracy"])[0]


def test_paired_test_refuses_unpaired_or_unclustered_tables():
    table = series_table([True, False, True, True], slices=3)
    with pytest.raises(metrics.PredictionsError, match="not evaluations of the same images"):
        stats.paired_cluster_test(table, table.iloc[1:])
    with pytest.raises(metrics.PredictionsError, match="no 'cluster' column"):
        stats.paired_cluster_test(table.drop(columns="cluster"), table)
    with pytest.raises(metrics.PredictionsError, match="different clusters"):
        stats.paired_cluster_test(table, table.assign(cluster=table["cluster"] + 1))
    with pytest.raises(metrics.PredictionsError, match="no cluster"):
        stats.cluster_bootstrap_intervals(table.assign(cluster=[None] + [1] * (len(table) - 1)))
    with pytest.raises(metrics.PredictionsError, match="confidence level"):
        stats.cluster_bootstrap_intervals(table, level=1.5)


def test_clusters_per_class_counts_distinct_clusters_by_true_label():
    table = series_table([True] * 9, slices=2)  # clusters 0..8: Cyst 0, 4, 8; Normal 1, 5; ...
    assert stats.clusters_per_class(table) == {"Cyst": 3, "Normal": 2, "Stone": 2, "Tumor": 2}
    assert stats.clusters_per_class(table[table["true_label"] == "Cyst"]) == {"Cyst": 3, "Normal": 0, "Stone": 0, "Tumor": 0}


def test_cluster_verdicts_use_the_mean_probability():
    labels = ["Cyst", "Cyst", "Cyst", "Stone", "Stone"]
    probabilities = [
        (0.9, 0.1, 0.0, 0.0),
        (0.8, 0.2, 0.0, 0.0),
        (0.3, 0.7, 0.0, 0.0),   # wrong on its own; the cluster's mean still says Cyst
        (0.0, 0.0, 0.4, 0.6),
        (0.0, 0.0, 0.45, 0.55),
    ]
    table = make_table(labels, probabilities).assign(cluster=["a", "a", "a", "b", "b"])
    verdicts = stats.cluster_verdicts(table.sample(frac=1, random_state=1))
    assert verdicts["cluster"].tolist() == ["b", "a"]  # wrong verdicts first
    wrong, right = verdicts.iloc[0], verdicts.iloc[1]
    assert (wrong["true_label"], wrong["predicted_label"], bool(wrong["correct"]), wrong["images"]) == ("Stone", "Tumor", False, 2)
    assert (right["true_label"], right["predicted_label"], bool(right["correct"]), right["images"]) == ("Cyst", "Cyst", True, 3)
    assert right["images_right"] == pytest.approx(2 / 3) and right["prob_Cyst"] == pytest.approx(2.0 / 3)
