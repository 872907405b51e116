"""Statistics of stored predictions: paired comparisons, and intervals that respect series.

Two models evaluated on the same images disagree about some of them. McNemar's test asks
whether the images only model A gets right and those only model B gets right are as balanced
as chance would have them; the exact form is a two-sided binomial test (p = 0.5) on those
discordant images, valid for any count (Edwards 1948; Dietterich 1998 recommends it for
comparing classifiers). The test is only meaningful when both tables hold exactly the same
images with the same labels, so that is checked first.

McNemar's test, like the image bootstrap of :mod:`kidney_lab.evaluation.metrics`, treats images
as independent. The slices of one CT series are not: a model gets a whole series right or wrong
together, so a test set of 300 slices from 13 series carries about 13 observations' worth of
evidence. Where the images have near-duplicate clusters (a predictions table with a ``cluster``
column, from a grouped split, a cross-validation or an audited external folder), the functions
here resample and permute whole clusters instead:

- :func:`cluster_bootstrap_intervals`: percentile bootstrap of accuracy and macro F1 that draws
  clusters with replacement (not stratified by class, like the image bootstrap; each draw keeps
  all of a cluster's images), the same resamples, seed and level conventions;
- :func:`paired_cluster_test`: for two models on the same images, a paired cluster bootstrap
  interval of the difference (B - A) and a sign-flip permutation test over clusters (under the
  null hypothesis that the models are exchangeable, each cluster's predictions by A and by B may
  be swapped as a whole); McNemar's test stays for random, image-level splits;
- :func:`clusters_per_class` and :func:`cluster_verdicts`: how many series a class's score rests
  on, and each series' mean-probability verdict against its label.

Which of the two a stored evaluation gets is decided in one place, :func:`interval_resampling`:
clusters for a grouped split (a cross-validation fold is one), a pooled cross-validation and an
external folder, whenever the predictions carry their clusters; images for a random split (its
test series are also in training, so resampling them answers no better question) and for
predictions stored before clusters were recorded, labelled so. :func:`metrics_with_intervals`
(the metrics of every stored evaluation, the leaderboard and the pooled cross-validation) and
:func:`paired_comparison` (McNemar or the paired cluster test) both follow it.
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
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import store

# Split kinds whose intervals resample images: a random split's test series are also in training.
IMAGE_RESAMPLED_KINDS = ("random",)
# A class whose score rests on fewer clusters than this gets a warning (the split's threshold).
FEW_CLUSTERS = split_module.FEW_CLUSTERS
PAIRED_TESTS = ("mcnemar", "cluster")


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
    a, b = _paired(table_a, table_b, "McNemar's test")
    truth = a["true_label"].astype(str)
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
    source: str = runs.TEST_SOURCE,
    *,
    workspace: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The paired comparison (see :func:`paired_comparison`) of two runs' stored predictions on
    the same images.

    Args:
        run_a, run_b: run folders or run ids (looked up in ``workspace``).
        source: the evaluation both are compared on: ``"test"`` (their test splits, the same
            images when both runs used one split) or the fingerprint of an external folder
            both were evaluated on.
        workspace: where run ids are looked up (default: the default workspace).

    Returns:
        :func:`paired_comparison`'s result plus ``run_a``, ``run_b``, ``model_a``, ``model_b``,
        ``source`` and ``split_kind`` (of run A's evaluation; McNemar's test when either run's
        is random).

    Raises:
        kidney_lab.runs.RunNotFoundError: a run does not exist.
        store.EvaluationError: a run has no such evaluation.
        metrics.PredictionsError: damaged predictions, or not the same images.
    """
    folder_a = runs.resolve_run(run_a, workspace)
    folder_b = runs.resolve_run(run_b, workspace)
    kinds = [store.split_kind(folder, source) for folder in (folder_a, folder_b)]
    kind = next((item for item in kinds if item in IMAGE_RESAMPLED_KINDS), kinds[0])
    result = paired_comparison(
        store.load_predictions(folder_a, source), store.load_predictions(folder_b, source), kind
    )
    return {
        "run_a": folder_a.name,
        "run_b": folder_b.name,
        "model_a": runs.read_run(folder_a).model,
        "model_b": runs.read_run(folder_b).model,
        "source": source,
        "split_kind": kind,
        **result,
    }


def has_clusters(table: pd.DataFrame) -> bool:
    """Whether every row of a predictions table names its near-duplicate cluster."""
    try:
        _clusters(table)
    except metrics_module.PredictionsError:
        return False
    return True


def interval_resampling(table: pd.DataFrame, split_kind: str | None) -> tuple[str, str]:
    """Which units the intervals and paired tests of an evaluation resample, and why.

    Args:
        table: the evaluation's predictions table.
        split_kind: what it was measured on: ``"random"``, ``"grouped"`` (a cross-validation
            fold is one), ``"cv"`` (pooled out-of-fold predictions), ``"external"``, or None
            when unknown.

    Returns:
        ``("cluster", reason)`` when the table has a complete cluster column and the split is not
        random; ``("image", reason)`` otherwise. The reason is a sentence for the user.
    """
    if split_kind in IMAGE_RESAMPLED_KINDS:
        return "image", (
            "random split: its test series are also in training, so the interval says how well the "
            "model knows those series"
        )
    if not has_clusters(table):
        return "image", (
            "these predictions were stored without their near-duplicate clusters; evaluate the run "
            "again for intervals over series"
        )
    return "cluster", "a series' slices are not independent, so whole series are drawn"


def metrics_with_intervals(
    table: pd.DataFrame,
    split_kind: str | None,
    *,
    resamples: int = metrics_module.BOOTSTRAP_RESAMPLES,
    seed: int = metrics_module.BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """The metrics of one evaluation, with the intervals its kind of split calls for.

    This is what every stored ``metrics.json`` holds (the run's test split, an external folder,
    a pooled cross-validation) and what the leaderboard recomputes.

    Args:
        table: a predictions table, with a ``cluster`` column where the clusters are known.
        split_kind: see :func:`interval_resampling`.
        resamples, seed: of the bootstrap.

    Returns:
        :func:`kidney_lab.evaluation.metrics.compute_metrics` of the table, whose ``intervals``
        are :func:`cluster_bootstrap_intervals` or the image bootstrap as
        :func:`interval_resampling` decides (``resampling`` says which, ``clusters`` how many
        were resampled, ``None`` for images, and ``reason`` why), plus ``clusters_per_class``
        (see :func:`clusters_per_class`; ``None`` when the clusters are not known) and
        ``few_clusters`` (the classes whose score rests on fewer than :data:`FEW_CLUSTERS`
        clusters, in class order; ``None`` when not known).

    Raises:
        metrics.PredictionsError: see :func:`kidney_lab.evaluation.metrics.check_predictions`.
    """
    result = metrics_module.compute_metrics(table, resamples=resamples, seed=seed, intervals=False)
    resampling, reason = interval_resampling(table, split_kind)
    if resampling == "cluster":
        intervals = cluster_bootstrap_intervals(table, resamples=resamples, seed=seed)
    else:
        intervals = metrics_module.bootstrap_intervals(table, resamples=resamples, seed=seed)
    per_class = clusters_per_class(table) if has_clusters(table) else None
    result.update(
        {
            "intervals": {**intervals, "reason": reason},
            "clusters_per_class": per_class,
            "few_clusters": None if per_class is None else few_clusters(per_class),
        }
    )
    return result


def resampling_words(intervals: dict[str, Any]) -> str:
    """What an interval's bootstrap drew, in words for a table or a caption: "over 13
    near-duplicate clusters (series)" or "over images (as if independent)"."""
    if intervals.get("resampling") == "cluster":
        return f"over {intervals['clusters']} near-duplicate clusters (series)"
    return "over images (as if independent)"


def few_clusters(per_class: dict[str, int]) -> list[str]:
    """The classes (in class order) whose images come from fewer than :data:`FEW_CLUSTERS`
    clusters, given :func:`clusters_per_class`."""
    return [name for name in classes.CLASS_NAMES if int(per_class.get(name, 0)) < FEW_CLUSTERS]


def few_cluster_warnings(per_class: dict[str, int] | None) -> list[str]:
    """One sentence per class whose score rests on fewer than :data:`FEW_CLUSTERS` clusters
    (none when the clusters are not known)."""
    if per_class is None:
        return []
    sentences = []
    for name in few_clusters(per_class):
        count = int(per_class.get(name, 0))
        if count == 0:
            sentences.append(f"{name}: no images here, so it has no recall.")
        else:
            sentences.append(
                f"{name} rests on {count} near-duplicate cluster{'s' if count != 1 else ''} (series): "
                "its recall is one or two patients' recall."
            )
    return sentences


def paired_comparison(
    table_a: pd.DataFrame,
    table_b: pd.DataFrame,
    split_kind: str | None,
    *,
    resamples: int = metrics_module.BOOTSTRAP_RESAMPLES,
    seed: int = metrics_module.BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Compare two models on the same images with the test their split calls for.

    McNemar's exact test (:func:`mcnemar`) on a random split or where a table lacks clusters;
    the paired cluster test (:func:`paired_cluster_test`) otherwise, as
    :func:`interval_resampling` decides for both tables.

    Returns:
        ``test`` (``"mcnemar"`` or ``"cluster"``), ``resampling`` (``"image"`` or
        ``"cluster"``), ``reason``, ``p_value`` and ``method`` of the test used, McNemar's
        descriptive counts (``images``, ``both_right``, ``only_a_right``, ``only_b_right``,
        ``both_wrong``, ``accuracy_a``, ``accuracy_b``, ``confusion_difference``, ``classes``),
        and for McNemar its ``statistic``, for the cluster test the rest of
        :func:`paired_cluster_test`'s result (``clusters``, ``difference``,
        ``difference_interval``, ...).

    Raises:
        metrics.PredictionsError: see :func:`mcnemar` and :func:`paired_cluster_test`.
    """
    counts = mcnemar(table_a, table_b)
    choices = [interval_resampling(table, split_kind) for table in (table_a, table_b)]
    resampling, reason = next((choice for choice in choices if choice[0] == "image"), choices[0])
    if resampling == "image":
        return {**counts, "test": "mcnemar", "resampling": "image", "reason": reason}
    cluster = paired_cluster_test(table_a, table_b, resamples=resamples, seed=seed)
    descriptive = {key: value for key, value in counts.items() if key not in ("statistic", "p_value", "method")}
    return {**descriptive, **cluster, "test": "cluster", "reason": reason}


def cluster_bootstrap_intervals(
    table: pd.DataFrame,
    *,
    resamples: int = metrics_module.BOOTSTRAP_RESAMPLES,
    seed: int = metrics_module.BOOTSTRAP_SEED,
    level: float = metrics_module.CONFIDENCE_LEVEL,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy and macro F1 that resample whole clusters.

    Each resample draws as many clusters as the table has, with replacement, from a NumPy
    generator seeded with ``seed``, and scores all images of the drawn clusters (a cluster drawn
    twice counts twice). Clusters are put in order of their ids as text first, so the interval
    does not depend on the order of the rows. With one image per cluster it is exactly
    :func:`kidney_lab.evaluation.metrics.bootstrap_intervals` (clusters in path order).

    Args:
        table: a predictions table with a ``cluster`` column.
        resamples, seed, level: as for the image bootstrap.

    Returns:
        ``resampling`` (``"cluster"``), ``clusters`` (how many), ``images``, ``accuracy`` and
        ``macro_f1`` as ``[low, high]``, ``clusters_per_class`` (see :func:`clusters_per_class`),
        ``level``, ``resamples``, ``seed`` and ``method``.

    Raises:
        metrics.PredictionsError: see :func:`kidney_lab.evaluation.metrics.check_predictions`; no
            or an incomplete cluster column; ``resamples`` below 1 or ``level`` outside (0, 1).
    """
    units = _clusters(metrics_module.check_predictions(table))
    metrics_module.percentile_interval(np.zeros(1), level)  # Refuses a bad level before any work.
    cells = metrics_module.unit_confusions(table, units)
    accuracy, macro_f1 = metrics_module.resampled_scores(cells, resamples=resamples, seed=seed)
    return {
        "resampling": "cluster",
        "clusters": int(len(cells)),
        "images": int(len(table)),
        "accuracy": metrics_module.percentile_interval(accuracy, level),
        "macro_f1": metrics_module.percentile_interval(macro_f1, level),
        "clusters_per_class": clusters_per_class(table),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "method": "percentile bootstrap over near-duplicate clusters",
    }


def paired_cluster_test(
    table_a: pd.DataFrame,
    table_b: pd.DataFrame,
    *,
    resamples: int = metrics_module.BOOTSTRAP_RESAMPLES,
    seed: int = metrics_module.BOOTSTRAP_SEED,
    level: float = metrics_module.CONFIDENCE_LEVEL,
) -> dict[str, Any]:
    """Is model B better than model A on the same images, keeping each series together?

    The difference is B's score minus A's, for accuracy and macro F1. Its interval is a paired
    cluster bootstrap: each resample draws clusters with replacement and scores both models on
    the same drawn clusters. Its p-value is a two-sided sign-flip permutation test over
    clusters: each of ``resamples`` permutations swaps A's and B's predictions on a random half
    of the clusters (every cluster with probability 1/2), and the p-value is the share of
    permutations, counting the observed one, whose difference is at least as large in absolute
    value as the observed difference (1.0 when the models agree on every image). The
    permutations use the generator seeded with ``[seed, 1]``, the bootstrap the one seeded with
    ``seed``.

    Args:
        table_a: predictions of model A, with a ``cluster`` column.
        table_b: predictions of model B on the same images; its rows may be in another order;
            a ``cluster`` column there, if any, must agree with A's.
        resamples: bootstrap resamples and permutations.
        seed, level: as for :func:`cluster_bootstrap_intervals`.

    Returns:
        ``resampling`` (``"cluster"``), ``clusters``, ``images``, ``accuracy_a``,
        ``accuracy_b``, ``macro_f1_a``, ``macro_f1_b``, ``difference`` and
        ``difference_interval`` (each ``{"accuracy", "macro_f1"}``, B - A, intervals as
        ``[low, high]``), ``p_value`` (of the macro F1 difference), ``p_value_accuracy``,
        ``level``, ``resamples``, ``seed`` and ``method``.

    Raises:
        metrics.PredictionsError: a table is not a valid predictions table, the two tables do
            not hold the same images or labels, the cluster column is missing or they disagree
            about it; ``resamples`` below 1 or ``level`` outside (0, 1).
    """
    a, b = _paired(table_a, table_b, "A paired cluster test")
    units = _clusters(a)
    if metrics_module.CLUSTER_COLUMN in b.columns:
        if (b[metrics_module.CLUSTER_COLUMN].astype(str) != units.astype(str)).any():
            raise metrics_module.PredictionsError(
                "The two tables put some images in different clusters; they were not evaluated "
                "on the same split or folder audit."
            )
    metrics_module.percentile_interval(np.zeros(1), level)  # Refuses a bad level before any work.
    cells = np.stack([metrics_module.unit_confusions(a, units), metrics_module.unit_confusions(b, units)])
    observed_accuracy, observed_f1 = metrics_module.scores_of_confusions(cells.sum(axis=1))
    accuracy, macro_f1 = metrics_module.resampled_scores(cells, resamples=resamples, seed=seed)
    flipped_accuracy, flipped_f1 = _sign_flips(cells, resamples, seed)
    difference = {
        "accuracy": float(observed_accuracy[1] - observed_accuracy[0]),
        "macro_f1": float(observed_f1[1] - observed_f1[0]),
    }
    return {
        "resampling": "cluster",
        "clusters": int(cells.shape[1]),
        "images": int(len(a)),
        "accuracy_a": float(observed_accuracy[0]),
        "accuracy_b": float(observed_accuracy[1]),
        "macro_f1_a": float(observed_f1[0]),
        "macro_f1_b": float(observed_f1[1]),
        "difference": difference,
        "difference_interval": {
            "accuracy": metrics_module.percentile_interval(accuracy[1] - accuracy[0], level),
            "macro_f1": metrics_module.percentile_interval(macro_f1[1] - macro_f1[0], level),
        },
        "p_value": _permutation_p(flipped_f1, difference["macro_f1"]),
        "p_value_accuracy": _permutation_p(flipped_accuracy, difference["accuracy"]),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "method": (
            "paired percentile bootstrap over near-duplicate clusters (interval of B - A); "
            "two-sided sign-flip permutation test over clusters (p-value)"
        ),
    }


def clusters_per_class(table: pd.DataFrame) -> dict[str, int]:
    """Distinct clusters among each class's images (by true label) of a predictions table.

    Every class is listed, with 0 where it has no images. A cluster whose images carry two
    labels counts for both.

    Raises:
        metrics.PredictionsError: no or an incomplete ``cluster`` column.
    """
    counts = pd.Series(_clusters(table)).groupby(table["true_label"].astype(str).to_numpy()).nunique()
    return {name: int(counts.get(name, 0)) for name in classes.CLASS_NAMES}


def cluster_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Series-level results: each cluster's mean-probability verdict against its label.

    A cluster's verdict is the class with the highest mean probability over its images; its
    label is the most common true label of its images (the first in class order on a tie).

    Args:
        table: a predictions table with a ``cluster`` column.

    Returns:
        One row per cluster, wrong verdicts first, then by cluster: ``cluster``, ``true_label``,
        ``predicted_label`` (the verdict), ``correct``, ``images``, ``images_right`` (the share of
        its images predicted right one by one) and one mean ``prob_<Class>`` column per class.

    Raises:
        metrics.PredictionsError: see :func:`kidney_lab.evaluation.metrics.check_predictions`; no
            or an incomplete cluster column.
    """
    units = _clusters(metrics_module.check_predictions(table))
    columns = metrics_module.probability_columns()
    frame = pd.DataFrame(table[columns]).apply(pd.to_numeric).assign(
        cluster=units,
        right=(table["predicted_label"].astype(str) == table["true_label"].astype(str)).to_numpy(),
        **{f"is_{name}": (table["true_label"].astype(str) == name).to_numpy() for name in classes.CLASS_NAMES},
    )
    grouped = frame.groupby("cluster", sort=True)
    means = grouped[columns].mean()
    label_counts = grouped[[f"is_{name}" for name in classes.CLASS_NAMES]].sum().to_numpy()
    names = np.asarray(classes.CLASS_NAMES)
    result = pd.DataFrame(
        {
            "cluster": means.index,
            "true_label": names[label_counts.argmax(axis=1)],
            "predicted_label": names[means.to_numpy().argmax(axis=1)],
            "images": grouped.size().to_numpy(),
            "images_right": grouped["right"].mean().to_numpy(),
        }
    )
    result.insert(3, "correct", result["true_label"] == result["predicted_label"])
    result = pd.concat([result, means.reset_index(drop=True)], axis=1)
    return result.sort_values(["correct", "cluster"], kind="stable").reset_index(drop=True)


def series_scores(table: pd.DataFrame) -> dict[str, Any]:
    """Series-level results beside the slice-level metrics: each cluster's verdict
    (:func:`cluster_verdicts`), how many series are right, and that per class (by a series'
    label).

    Returns:
        ``verdicts`` (the DataFrame of :func:`cluster_verdicts`, wrong series first), ``series``,
        ``right``, ``accuracy`` (the share of series whose verdict is their label), and
        ``per_class``: for every class, ``series``, ``right`` and ``recall`` (``None`` for a class
        without series).

    Raises:
        metrics.PredictionsError: see :func:`cluster_verdicts`.
    """
    verdicts = cluster_verdicts(table)
    per_class = {}
    for name in classes.CLASS_NAMES:
        own = verdicts[verdicts["true_label"] == name]
        right = int(own["correct"].sum())
        per_class[name] = {"series": int(len(own)), "right": right, "recall": right / len(own) if len(own) else None}
    right = int(verdicts["correct"].sum())
    return {
        "verdicts": verdicts,
        "series": int(len(verdicts)),
        "right": right,
        "accuracy": right / len(verdicts),
        "per_class": per_class,
    }


def _paired(table_a: pd.DataFrame, table_b: pd.DataFrame, test: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both checked tables indexed by path, B's rows in A's order.

    Raises:
        metrics.PredictionsError: invalid tables, not the same images, or different labels.
    """
    metrics_module.check_predictions(table_a, source="predictions of A")
    metrics_module.check_predictions(table_b, source="predictions of B")
    a = table_a.set_index(table_a["path"].astype(str), drop=False)
    b = table_b.set_index(table_b["path"].astype(str), drop=False)
    only_a = a.index.difference(b.index)
    only_b = b.index.difference(a.index)
    if len(only_a) or len(only_b):
        example = (only_a if len(only_a) else only_b)[0]
        raise metrics_module.PredictionsError(
            f"The two tables are not evaluations of the same images ({len(only_a)} only in A, "
            f"{len(only_b)} only in B, such as {example}); {test} needs paired "
            "predictions: evaluate both runs on the same split or folder."
        )
    b = b.loc[a.index]
    differing = a["true_label"].astype(str) != b["true_label"].astype(str)
    if differing.any():
        raise metrics_module.PredictionsError(
            f"{int(differing.sum())} images have different true labels in the two tables, such "
            f"as {differing[differing].index[0]}; they were not evaluated against the same labels."
        )
    return a, b


def _clusters(table: pd.DataFrame) -> np.ndarray:
    """The cluster column of a predictions table.

    Raises:
        metrics.PredictionsError: the column is missing or has empty cells.
    """
    column = metrics_module.CLUSTER_COLUMN
    if column not in table.columns:
        raise metrics_module.PredictionsError(
            f"The predictions have no {column!r} column, so their near-duplicate clusters are not "
            "known; evaluate on a grouped split, a cross-validation or an audited folder."
        )
    values = table[column]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        raise metrics_module.PredictionsError(
            f"{int(values.isna().sum())} or more images of the predictions have no cluster; "
            "evaluate the run again."
        )
    return values.to_numpy()


def _sign_flips(cells: np.ndarray, permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """B - A accuracy and macro F1 after swapping A and B on a random half of the clusters."""
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise metrics_module.PredictionsError(f"The permutation test needs at least 1 permutation; got {permutations!r}.")
    total_a, total_b = cells[0].sum(axis=0), cells[1].sum(axis=0)
    change = cells[1] - cells[0]
    rng = np.random.default_rng([seed, 1])
    chunk = max(1, metrics_module.BOOTSTRAP_CHUNK_ROWS // cells.shape[1])
    accuracy = np.empty(permutations)
    macro_f1 = np.empty(permutations)
    for start in range(0, permutations, chunk):
        size = min(chunk, permutations - start)
        moved = rng.integers(0, 2, size=(size, cells.shape[1])) @ change
        matrices = np.stack([total_a + moved, total_b - moved])
        scores_accuracy, scores_f1 = metrics_module.scores_of_confusions(matrices)
        accuracy[start:start + size] = scores_accuracy[1] - scores_accuracy[0]
        macro_f1[start:start + size] = scores_f1[1] - scores_f1[0]
    return accuracy, macro_f1


def _permutation_p(permuted: np.ndarray, observed: float) -> float:
    """Two-sided permutation p-value, counting the observed arrangement as one permutation."""
    at_least = int((np.abs(permuted) >= abs(observed) - 1e-12).sum())
    return (at_least + 1) / (len(permuted) + 1)
