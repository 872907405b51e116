"""Split a dataset into train, validation and test sets, and store the split once by id.

Two strategies:

- ``random``: stratified by class at the image level. This is what the original study and most
  papers on this dataset did; neighbouring slices of one series land on both sides.
- ``grouped``: stratified by class at the level of near-duplicate clusters (see
  :mod:`kidney_lab.data.audit`; a cluster is roughly one CT series): every cluster is kept whole
  inside one subset, so no test image has an exact or near duplicate in training, and every
  class's clusters are spread over the three subsets.

``random`` uses scikit-learn's stratified ``train_test_split`` twice. ``grouped`` works class by
class (a cluster counts for its majority class, so a cluster whose images carry two labels stays
whole): it first decides how many of the class's clusters each subset gets, the asked fraction
of its clusters but at least :data:`MIN_TEST_CLUSTERS` for test and one for validation, as long
as training keeps one; then scikit-learn's ``GroupShuffleSplit`` draws that many whole clusters,
64 seeded times, and the first draw whose image fractions are within 2 points of the best draw's
wins. A class's test score resting on one or two series is the product's main risk on real
data, so cluster counts come before image fractions: on the real sample, Normal has only 5
clusters and gets 2 of them (about 28% of its images) in test. The fractions reached are
reported, and :attr:`Split.warnings` names every class whose test images come from fewer than
:data:`FEW_CLUSTERS` clusters. (scikit-learn's ``StratifiedGroupKFold`` stratifies images, not
clusters: it can give a class a single test cluster, and its ``shuffle`` only breaks ties between
groups, so on the real sample every seed gave the same split.)

A split is stored as ``<workspace>/splits/<split_id>/manifest.csv`` (path relative to the dataset
root, label, cluster, subset, md5, format, mode) with ``split.json`` beside it. The id is derived
from the splitter's version, the dataset fingerprint, the strategy, the fractions, the seed and
the near-duplicate threshold, so asking for the same split again reuses the stored manifest, and
a split made by an older version of the assignment keeps its id (it still loads) while the
current version makes a new one. The folds of a cross-validation
(:mod:`kidney_lab.data.folds`) are stored the same way, one split per fold.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import sklearn.model_selection

from kidney_lab.data import audit as audit_module
from kidney_lab.data import classes
from kidney_lab import errors
from kidney_lab import fileio

STRATEGIES = ("random", "grouped")
SUBSETS = ("train", "val", "test")
# Test clusters a grouped split gives each class that has enough clusters for them.
MIN_TEST_CLUSTERS = 2
# Validation clusters a grouped split gives each class (at least).
MIN_VAL_CLUSTERS = 1
# A class whose test images come from fewer clusters than this gets a warning: its recall is
# one or two series' recall.
FEW_CLUSTERS = 3
_GROUPED_TRIALS = 64
# A draw of clusters whose image fractions are within this much (summed over the held-out
# subsets, as fractions of the class's images) of the best of the draws is good enough; the first
# such draw is taken, so that seeds give different splits and not always the closest one.
_FRACTION_SLACK = 0.02
# Columns of a stored manifest; format and mode are absent from manifests of older versions.
_MANIFEST_COLUMNS = ("path", "label", "cluster", "subset", "md5", "format", "mode")
# Bump when the way subsets are assigned changes, so that old manifests are not reused: the id of
# a split includes it. Version 2 filled subsets greedily towards the image fractions; version 3
# stratifies clusters with a minimum count per subset (see the module docstring).
_SPLITTER_VERSION = "3"


@dataclasses.dataclass(frozen=True)
class Split:
    """A stored train/validation/test split of one dataset.

    Attributes:
        split_id: Derived from fingerprint, strategy, fractions, seed and threshold.
        strategy: ``random`` or ``grouped``.
        seed: The seed of the random assignment.
        val_fraction: Asked fraction of images for validation.
        test_fraction: Asked fraction of images for test.
        fingerprint: The dataset's fingerprint.
        root: The dataset root the manifest's paths resolve against.
        manifest: One row per image: path (absolute), label, cluster, subset, md5, and the
            format and mode the scan read, so that the pipeline need not open files to know
            how to decode them.
        threshold: Near-duplicate threshold (bits) the clusters were made with.
        cv_id: For one fold of a cross-validation, the id of its fold plan (see
            :mod:`kidney_lab.data.folds`); ``None`` for an ordinary split.
        fold: For one fold, its number (0-based); ``None`` otherwise.
        folds: For one fold, how many folds its plan has; ``None`` otherwise.
    """

    split_id: str
    strategy: str
    seed: int
    val_fraction: float
    test_fraction: float
    fingerprint: str
    root: Path
    manifest: pd.DataFrame
    threshold: int
    cv_id: str | None = None
    fold: int | None = None
    folds: int | None = None

    def subset(self, name: str) -> pd.DataFrame:
        """The manifest rows of one subset (``train``, ``val`` or ``test``)."""
        if name not in SUBSETS:
            raise ValueError(f"Unknown subset {name!r}; use one of {', '.join(SUBSETS)}.")
        return self.manifest[self.manifest["subset"] == name].reset_index(drop=True)

    @property
    def counts(self) -> dict[str, int]:
        """Images per subset."""
        counts = self.manifest["subset"].value_counts()
        return {name: int(counts.get(name, 0)) for name in SUBSETS}

    @property
    def counts_per_class(self) -> dict[str, dict[str, int]]:
        """Images per subset and class."""
        table = pd.crosstab(self.manifest["subset"], self.manifest["label"])
        return {
            subset: {label: int(table.at[subset, label]) if subset in table.index and label in table.columns else 0
                     for label in classes.CLASS_NAMES}
            for subset in SUBSETS
        }

    @property
    def clusters_per_class(self) -> dict[str, dict[str, int]]:
        """Distinct near-duplicate clusters per subset and class (see :func:`clusters_per_class`)."""
        return clusters_per_class(self.manifest)

    @property
    def warnings(self) -> list[str]:
        """One sentence per class whose test images come from fewer than :data:`FEW_CLUSTERS`
        clusters (grouped splits only: a random split's test clusters are shared with training).
        """
        if self.strategy != "grouped":
            return []
        return cluster_warnings(self.manifest, "test")

    def leakage(self, subset: str = "test") -> dict[str, int]:
        """How many images of ``subset`` have an exact or a near duplicate in train."""
        train = self.subset("train")
        rows = self.subset(subset)
        exact = rows["md5"].isin(set(train["md5"]))
        near = rows["cluster"].isin(set(train["cluster"]))
        return {"exact": int(exact.sum()), "exact_or_near": int((exact | near).sum())}

    def to_dict(self, manifest_path: Path | None = None) -> dict[str, object]:
        """The JSON result of ``python -m kidney_lab data split``."""
        test_leak = self.leakage("test")
        val_leak = self.leakage("val")
        total = max(len(self.manifest), 1)
        return {
            "split_id": self.split_id,
            "strategy": self.strategy,
            "seed": self.seed,
            "fractions": {
                "asked": {
                    "train": round(1 - self.val_fraction - self.test_fraction, 6),
                    "val": self.val_fraction,
                    "test": self.test_fraction,
                },
                "reached": {name: round(count / total, 4) for name, count in self.counts.items()},
            },
            "counts": self.counts,
            "counts_per_class": self.counts_per_class,
            "clusters": self.clusters_per_class,
            "warnings": self.warnings,
            "cv": None if self.cv_id is None else {"cv_id": self.cv_id, "fold": self.fold, "folds": self.folds},
            "test_with_duplicate_in_train": test_leak["exact_or_near"],
            "test_with_exact_duplicate_in_train": test_leak["exact"],
            "val_with_duplicate_in_train": val_leak["exact_or_near"],
            "near_duplicate_threshold": self.threshold,
            "fingerprint": self.fingerprint,
            "root": str(self.root),
            "manifest": str(manifest_path) if manifest_path is not None else None,
        }

    def format_report(self) -> str:
        """A readable plain-text summary for the terminal."""
        per_class = self.counts_per_class
        clusters = self.clusters_per_class
        lines = [f"Split {self.split_id}  ({self.strategy}, seed {self.seed})"]
        lines.append("Images   " + "".join(f"{name:>8}" for name in classes.CLASS_NAMES) + "   total")
        for subset in SUBSETS:
            row = per_class[subset]
            lines.append(
                f"  {subset:<6} " + "".join(f"{row[name]:>8}" for name in classes.CLASS_NAMES)
                + f"{self.counts[subset]:>8}"
            )
        lines.append("Clusters " + "".join(f"{name:>8}" for name in classes.CLASS_NAMES) + "   (distinct near-duplicate clusters)")
        for subset in SUBSETS:
            lines.append(f"  {subset:<6} " + "".join(f"{clusters[subset][name]:>8}" for name in classes.CLASS_NAMES))
        lines.extend(f"Warning: {warning}" for warning in self.warnings)
        leak = self.leakage("test")
        lines.append(
            f"Test images with a duplicate in train: {leak['exact_or_near']} "
            f"({leak['exact']} exact, {leak['exact_or_near'] - leak['exact']} near)"
        )
        if leak["exact_or_near"]:
            lines.append(
                "Scores on this split are inflated by leakage; use --strategy grouped for an "
                "honest estimate."
            )
        return "\n".join(lines)


def split_id_for(
    fingerprint: str, strategy: str, val_fraction: float, test_fraction: float, seed: int, threshold: int
) -> str:
    """The id of a split: a short hash of everything that determines it."""
    return f"{strategy}-" + fileio.short_hash(
        _SPLITTER_VERSION, fingerprint, strategy, f"{val_fraction:.6f}", f"{test_fraction:.6f}",
        str(seed), str(threshold), length=10,
    )


def make_split(
    audit: audit_module.AuditReport,
    strategy: str = "grouped",
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Split:
    """Split an audited dataset (deterministic for a seed).

    Raises:
        SplitError: Unknown strategy, fractions outside (0, 1) or summing to 1 or more, or a class
            with too few images (random) or clusters (grouped) for three subsets.
    """
    _check_arguments(strategy, val_fraction, test_fraction)
    table = audit.table
    labels = table["label"].to_numpy()
    groups = table["cluster"].to_numpy() if strategy == "grouped" else np.arange(len(table))
    units_per_class = pd.Series(groups).groupby(labels).nunique()
    smallest = int(units_per_class.min())
    unit = "near-duplicate clusters" if strategy == "grouped" else "images"
    if smallest < len(SUBSETS):
        weakest = str(units_per_class.idxmin())
        raise errors.SplitError(
            f"Class {weakest} has only {smallest} {unit}; a {strategy} split needs at least "
            f"{len(SUBSETS)} per class (one each for train, validation and test)."
        )
    if strategy == "grouped":
        subset = assign_clusters(
            labels, groups,
            (("test", test_fraction, MIN_TEST_CLUSTERS), ("val", val_fraction, MIN_VAL_CLUSTERS)),
            seed,
        )
    else:
        subset = _random_subsets(labels, val_fraction, test_fraction, seed)
    manifest = pd.DataFrame(
        {
            "path": table["path"],
            "label": table["label"],
            "cluster": table["cluster"],
            "subset": subset,
            "md5": table["md5"],
            "format": table["format"],
            "mode": table["mode"],
        }
    )
    fingerprint = audit.scan.fingerprint
    return Split(
        split_id=split_id_for(fingerprint, strategy, val_fraction, test_fraction, seed, audit.threshold),
        strategy=strategy,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        fingerprint=fingerprint,
        root=audit.scan.root,
        manifest=manifest,
        threshold=audit.threshold,
    )


def save_split(split: Split, workspace: str | os.PathLike[str]) -> Path:
    """Store ``split`` under ``<workspace>/splits/<split_id>/`` and return the manifest's path.

    The manifest's paths are stored relative to the dataset root.
    """
    folder = Path(workspace) / "splits" / split.split_id
    manifest_path = folder / "manifest.csv"
    stored = split.manifest.assign(
        path=[Path(path).relative_to(split.root).as_posix() for path in split.manifest["path"]]
    )
    with fileio.atomic_path(manifest_path) as temporary:
        stored.to_csv(temporary, index=False)
    meta = split.to_dict(manifest_path.resolve())
    meta["val_fraction"] = split.val_fraction
    meta["test_fraction"] = split.test_fraction
    fileio.atomic_write_json(folder / "split.json", meta)
    return manifest_path


def load_split(workspace: str | os.PathLike[str], split_id: str, root: str | os.PathLike[str] | None = None) -> Split:
    """Load a stored split; its paths resolve against ``root`` (default: the stored root).

    Raises:
        SplitError: No such split, or its files are unreadable or inconsistent.
    """
    if not split_id or Path(split_id).name != split_id or split_id.startswith("."):
        raise errors.SplitError(f"{split_id!r} is not a split id.")
    folder = Path(workspace) / "splits" / split_id
    try:
        meta = fileio.read_json(folder / "split.json")
        stored = pd.read_csv(
            folder / "manifest.csv",
            dtype={"path": str, "label": str, "subset": str, "md5": str, "format": str, "mode": str},
            keep_default_na=False,
        )
    except FileNotFoundError:
        raise errors.SplitError(f"No split {split_id} in {Path(workspace) / 'splits'}.") from None
    except (OSError, ValueError) as error:
        raise errors.SplitError(f"Split {split_id} cannot be read ({error}); delete {folder} and split again.") from None
    expected = set(_MANIFEST_COLUMNS[:5])
    if not expected <= set(stored.columns) or not set(stored["subset"]) <= set(SUBSETS):
        raise errors.SplitError(f"The manifest of split {split_id} is damaged; delete {folder} and split again.")
    base = Path(root) if root is not None else Path(meta["root"])
    manifest = stored.assign(path=[str(base / path) for path in stored["path"]])
    return Split(
        split_id=split_id,
        strategy=meta["strategy"],
        seed=int(meta["seed"]),
        val_fraction=float(meta["val_fraction"]),
        test_fraction=float(meta["test_fraction"]),
        fingerprint=meta["fingerprint"],
        root=base,
        manifest=manifest[[column for column in _MANIFEST_COLUMNS if column in manifest.columns]],
        threshold=int(meta["near_duplicate_threshold"]),
        **_fold_fields(meta.get("cv")),
    )


def get_or_make_split(
    audit: audit_module.AuditReport,
    workspace: str | os.PathLike[str],
    strategy: str = "grouped",
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> tuple[Split, Path]:
    """Return the stored split with these settings, making and storing it on first use."""
    _check_arguments(strategy, val_fraction, test_fraction)
    split_id = split_id_for(audit.scan.fingerprint, strategy, val_fraction, test_fraction, seed, audit.threshold)
    manifest_path = Path(workspace) / "splits" / split_id / "manifest.csv"
    if manifest_path.exists():
        try:
            return load_split(workspace, split_id, root=audit.scan.root), manifest_path
        except errors.SplitError:
            pass  # A damaged stored split is made again below and replaces the old files.
    split = make_split(audit, strategy, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    return split, save_split(split, workspace)


def _check_arguments(strategy: str, val_fraction: float, test_fraction: float) -> None:
    if strategy not in STRATEGIES:
        raise errors.SplitError(f"Unknown split strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    for name, value in (("validation", val_fraction), ("test", test_fraction)):
        if not 0 < value < 1:
            raise errors.SplitError(f"The {name} fraction must be between 0 and 1, got {value}.")
    if val_fraction + test_fraction >= 0.9:
        raise errors.SplitError(
            f"Validation ({val_fraction}) and test ({test_fraction}) fractions leave less than 10% "
            "for training; lower them."
        )


def _random_subsets(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Stratified image-level assignment of each row to a subset."""
    index = np.arange(len(labels))
    try:
        rest, test = sklearn.model_selection.train_test_split(
            index, test_size=test_fraction, stratify=labels, random_state=seed
        )
        train, val = sklearn.model_selection.train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
        )
    except ValueError as error:
        raise errors.SplitError(
            f"The dataset is too small for these fractions ({error}); add images or raise the "
            "validation and test fractions."
        ) from None
    subset = np.empty(len(labels), dtype=object)
    subset[train], subset[val], subset[test] = "train", "val", "test"
    return subset


def assign_clusters(
    labels: np.ndarray,
    groups: np.ndarray,
    held_out: Sequence[tuple[str, float, int]],
    seed: int,
) -> np.ndarray:
    """Give whole clusters to ``train`` and the held-out subsets, stratified by cluster class.

    Class by class (a cluster counts for its majority class), each held-out subset gets the
    asked fraction of the class's clusters, rounded, but at least its minimum, as long as
    training keeps one cluster (when it would not, the later subsets of ``held_out`` give way
    first, down to one cluster each). Which clusters is drawn by scikit-learn's
    ``GroupShuffleSplit``, 64 seeded times; the first draw whose image fractions are within
    2 points of the best draw's is kept.

    Args:
        labels: One class name per image.
        groups: One cluster id per image.
        held_out: ``(subset name, fraction of images, minimum clusters)`` in order of priority,
            such as ``(("test", 0.15, 2), ("val", 0.15, 1))``.
        seed: Seed of the draws.

    Returns:
        One subset name per image (``"train"`` or a held-out name).

    Raises:
        SplitError: A class has fewer clusters than one per subset.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    frame = pd.DataFrame({"label": labels, "group": groups})
    majority = frame.groupby("group")["label"].agg(lambda values: values.value_counts().index[0])
    class_of_row = majority.loc[groups].to_numpy()
    subset = np.full(len(labels), "train", dtype=object)
    names = [name for name, _, _ in held_out]
    fractions = np.array([fraction for _, fraction, _ in held_out])
    for class_index, label in enumerate(classes.CLASS_NAMES):
        rows = np.flatnonzero(class_of_row == label)
        if len(rows) == 0:
            continue
        clusters = int(majority.eq(label).sum())
        counts = held_out_cluster_counts(clusters, held_out)
        states = np.random.default_rng([seed, class_index]).integers(0, 2**31 - 1, size=(_GROUPED_TRIALS, len(names)))
        draws, misses = [], []
        for trial_states in states:
            chosen = np.full(len(rows), "train", dtype=object)
            remaining = np.arange(len(rows))
            for name, count, state in zip(names, counts, trial_states):
                splitter = sklearn.model_selection.GroupShuffleSplit(n_splits=1, test_size=count, random_state=int(state))
                kept, drawn = next(splitter.split(remaining, groups=groups[rows[remaining]]))
                chosen[remaining[drawn]] = name
                remaining = remaining[kept]
            reached = np.array([(chosen == name).mean() for name in names])
            draws.append(chosen)
            misses.append(float(np.abs(reached - fractions).sum()))
        good_enough = np.flatnonzero(np.asarray(misses) <= min(misses) + _FRACTION_SLACK)
        subset[rows] = draws[int(good_enough[0])]
    return subset


def held_out_cluster_counts(clusters: int, held_out: Sequence[tuple[str, float, int]]) -> list[int]:
    """How many of a class's ``clusters`` each held-out subset gets (see :func:`assign_clusters`).

    Raises:
        SplitError: Fewer clusters than one per subset, training included.
    """
    if clusters < len(held_out) + 1:
        raise errors.SplitError(
            f"A class with {clusters} near-duplicate clusters cannot be split into {len(held_out) + 1} "
            "subsets of whole clusters; add images of other series."
        )
    wanted = [max(minimum, int(np.floor(fraction * clusters + 0.5))) for _, fraction, minimum in held_out]
    for position in reversed(range(len(wanted))):
        excess = sum(wanted) - (clusters - 1)
        if excess <= 0:
            break
        wanted[position] -= min(excess, wanted[position] - 1)
    return wanted


def cluster_warnings(manifest: pd.DataFrame, subset: str = "test") -> list[str]:
    """A sentence for each class whose ``subset`` images come from fewer than :data:`FEW_CLUSTERS`
    clusters, saying how many clusters the class has in all.

    Args:
        manifest: A split manifest (``label``, ``cluster``, ``subset`` columns).
        subset: The subset whose clusters are counted.
    """
    present = clusters_per_class(manifest)[subset]
    totals = manifest.groupby("label")["cluster"].nunique()
    sentences = []
    for label in classes.CLASS_NAMES:
        count, total = present[label], int(totals.get(label, 0))
        if count >= FEW_CLUSTERS or total == 0:
            continue
        series = "one series'" if count == 1 else f"{count} series'"
        sentence = (
            f"{label}: the {subset} images come from {count} near-duplicate cluster"
            f"{'' if count == 1 else 's'} (of {total}); its {subset} recall is {series} recall."
        )
        if count < MIN_TEST_CLUSTERS and total < MIN_TEST_CLUSTERS + 2:
            sentence += f" The class has too few clusters for {MIN_TEST_CLUSTERS} test clusters."
        sentences.append(sentence)
    return sentences


def clusters_per_class(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Distinct clusters per subset and class of a manifest (``label``, ``cluster``, ``subset``).

    A cluster counts for every class its images in that subset carry, so the number says how many
    series a class's score on the subset rests on.
    """
    table = manifest.groupby(["subset", "label"])["cluster"].nunique()
    return {subset: {label: int(table.get((subset, label), 0)) for label in classes.CLASS_NAMES} for subset in SUBSETS}


def _fold_fields(cv: Any) -> dict[str, Any]:
    """The fold fields of :class:`Split` from the ``cv`` entry of a ``split.json``."""
    if not isinstance(cv, dict):
        return {}
    return {"cv_id": str(cv["cv_id"]), "fold": int(cv["fold"]), "folds": int(cv["folds"])}
