"""Is one model better than another on the same images? McNemar's exact test.

Two models evaluated on the same images disagree about some of them. McNemar's test asks
whether the images only model A gets right and those only model B gets right are as balanced
as chance would have them; the exact form is a two-sided binomial test (p = 0.5) on those
discordant images, valid for any count (Edwards 1948; Dietterich 1998 recommends it for
comparing classifiers). The test is only meaningful when both tables hold exactly the same
images with the same labels, so that is checked first.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import sklearn.metrics

from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import store


def mcnemar(table_a: pd.DataFrame, table_b: pd.DataFrame) -> dict[str, Any]:
    """McNemar's exact test between two predictions tables of the same images.

    Args:
        table_a: predictions of model A (see :mod:`kidney_lab.evaluation.metrics`).
        table_b: predictions of model B; its rows may be in another order.

    Returns:
        ``images``; ``both_right``, ``only_a_right``, ``only_b_right``, ``both_wrong``
        (image counts); ``accuracy_a`` and ``accuracy_b``; ``statistic`` (the smaller
        discordant count) and ``p_value`` (two-sided exact binomial test, 1.0 when the models
        never disagree); ``confusion_difference`` (B's confusion matrix minus A's, rows true,
        columns predicted, in ``classes`` order) and ``classes``.

    Raises:
        metrics.PredictionsError: a table is not a valid predictions table, the two tables do
            not hold the same images, or an image has different true labels in them.
    """
    metrics_module.check_predictions(table_a, source="predictions of A")
    metrics_module.check_predictions(table_b, source="predictions of B")
    a = table_a.set_index(table_a["path"].astype(str))
    b = table_b.set_index(table_b["path"].astype(str))
    only_a = a.index.difference(b.index)
    only_b = b.index.difference(a.index)
    if len(only_a) or len(only_b):
        example = (only_a if len(only_a) else only_b)[0]
        raise metrics_module.PredictionsError(
            f"The two tables are not evaluations of the same images ({len(only_a)} only in A, "
            f"{len(only_b)} only in B, such as {example}); McNemar's test needs paired "
            "predictions: evaluate both runs on the same split or folder."
        )
    b = b.loc[a.index]
    truth = a["true_label"].astype(str)
    differing = truth != b["true_label"].astype(str)
    if differing.any():
        raise metrics_module.PredictionsError(
            f"{int(differing.sum())} images have different true labels in the two tables, such "
            f"as {differing[differing].index[0]}; they were not evaluated against the same labels."
        )
    right_a = (a["predicted_label"].astype(str) == truth).to_numpy()
    right_b = (b["predicted_label"].astype(str) == truth).to_numpy()
    only_a_right = int((right_a & ~right_b).sum())
    only_b_right = int((~right_a & right_b).sum())
    discordant = only_a_right + only_b_right
    p_value = (
        float(scipy.stats.binomtest(only_a_right, discordant, 0.5, alternative="two-sided").pvalue)
        if discordant
        else 1.0
    )
    names = list(classes.CLASS_NAMES)
    matrix_a = sklearn.metrics.confusion_matrix(truth, a["predicted_label"].astype(str), labels=names)
    matrix_b = sklearn.metrics.confusion_matrix(truth, b["predicted_label"].astype(str), labels=names)
    return {
        "images": int(len(a)),
        "both_right": int((right_a & right_b).sum()),
        "only_a_right": only_a_right,
        "only_b_right": only_b_right,
        "both_wrong": int((~right_a & ~right_b).sum()),
        "accuracy_a": float(right_a.mean()),
        "accuracy_b": float(right_b.mean()),
        "statistic": min(only_a_right, only_b_right),
        "p_value": p_value,
        "method": "exact McNemar test (two-sided binomial test on the discordant images, p = 0.5)",
        "classes": names,
        "confusion_difference": (np.asarray(matrix_b) - np.asarray(matrix_a)).tolist(),
    }


def compare_runs(
    run_a: str | os.PathLike[str],
    run_b: str | os.PathLike[str],
    source: str = store.TEST_SOURCE,
    *,
    workspace: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """McNemar's test between the stored predictions of two runs on the same images.

    Args:
        run_a, run_b: run folders or run ids (looked up in ``workspace``).
        source: the evaluation both are compared on: ``"test"`` (their test splits, the same
            images when both runs used one split) or the fingerprint of an external folder
            both were evaluated on.
        workspace: where run ids are looked up (default: the default workspace).

    Returns:
        :func:`mcnemar`'s result plus ``run_a``, ``run_b``, ``model_a``, ``model_b`` and
        ``source``.

    Raises:
        kidney_lab.runs.RunNotFoundError: a run does not exist.
        store.EvaluationError: a run has no such evaluation.
        metrics.PredictionsError: damaged predictions, or not the same images.
    """
    folder_a = runs.resolve_run(run_a, workspace)
    folder_b = runs.resolve_run(run_b, workspace)
    result = mcnemar(store.load_predictions(folder_a, source), store.load_predictions(folder_b, source))
    return {
        "run_a": folder_a.name,
        "run_b": folder_b.name,
        "model_a": runs.read_run(folder_a).model,
        "model_b": runs.read_run(folder_b).model,
        "source": source,
        **result,
    }
