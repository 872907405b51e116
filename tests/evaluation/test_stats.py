"""McNemar's exact test on tables with known discordant counts."""

from __future__ import annotations

import numpy as np
import pytest

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import stats
from tests.evaluation.helpers import make_table

# Fourteen Cyst images: both right 5, only A right 1, only B right 6, both wrong 2.
OUTCOMES = [(True, True)] * 5 + [(True, False)] * 1 + [(False, True)] * 6 + [(False, False)] * 2


def _probabilities(right: list[bool]) -> np.ndarray:
    """Confident Cyst where right, confident Normal where wrong."""
    rows = np.full((len(right), len(CLASS_NAMES)), 0.05)
    rows[np.arange(len(right)), np.where(right, 0, 1)] = 0.85
    return rows


@pytest.fixture(scope="module")
def pair():
    labels = ["Cyst"] * len(OUTCOMES)
    table_a = make_table(labels, _probabilities([a for a, _ in OUTCOMES]))
    table_b = make_table(labels, _probabilities([b for _, b in OUTCOMES]))
    return table_a, table_b


def test_exact_mcnemar_on_a_known_table(pair) -> None:
    result = stats.mcnemar(*pair)
    assert (result["both_right"], result["only_a_right"], result["only_b_right"], result["both_wrong"]) == (5, 1, 6, 2)
    # Two-sided binomial on 7 discordant images with 1 success: 2 * (1 + 7) / 2**7.
    assert result["p_value"] == pytest.approx(16 / 128)
    assert result["statistic"] == 1
    assert result["accuracy_a"] == pytest.approx(6 / 14) and result["accuracy_b"] == pytest.approx(11 / 14)
    # B moves five Cyst images from the Normal column to the Cyst column.
    assert result["confusion_difference"][0] == [5, -5, 0, 0]
    assert np.asarray(result["confusion_difference"])[1:].sum() == 0


def test_row_order_does_not_matter_and_identical_models_give_p_one(pair) -> None:
    table_a, table_b = pair
    shuffled = table_b.sample(frac=1, random_state=3)
    assert stats.mcnemar(table_a, shuffled)["p_value"] == pytest.approx(16 / 128)
    assert stats.mcnemar(table_a, table_a)["p_value"] == 1.0


def test_tables_of_different_images_are_refused(pair) -> None:
    table_a, table_b = pair
    with pytest.raises(metrics.PredictionsError, match="not evaluations of the same images"):
        stats.mcnemar(table_a, table_b.iloc[1:])
    renamed = table_b.assign(path=table_b["path"].str.replace("img", "other"))
    with pytest.raises(metrics.PredictionsError, match="same images"):
        stats.mcnemar(table_a, renamed)
    relabelled = table_b.copy()
    relabelled.loc[0, ["true_label"]] = "Normal"
    with pytest.raises(metrics.PredictionsError, match="different true labels"):
        stats.mcnemar(table_a, relabelled)
