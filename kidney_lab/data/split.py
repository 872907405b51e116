"""Split a dataset into train, validation and test sets, and store the split once by id.

Two strategies:

- ``random``: stratified by class at the image level. This is what the original study and most
  papers on this dataset did; neighbouring slices of one series land on both sides.
- ``grouped``: stratified by class, with every near-duplicate cluster (see
  :mod:`kidney_lab.data.audit`) kept whole inside one subset, so no test image has an exact or
  near duplicate in training.

``random`` uses scikit-learn's stratified ``train_test_split`` twice. ``grouped`` gives whole
clusters to subsets, class by class (a cluster counts for its majority class): over 64
seeded random orders of the clusters, each cluster goes to the subset furthest below its target
size, and the order that comes closest to the asked fractions wins. (scikit-learn's
``StratifiedGroupKFold`` was tried first: it can only reach fractions in whole folds, and its
``shuffle`` only breaks ties between groups, so on the real sample every seed gave the same
split.) The fractions reached are reported; with large clusters they can differ from the asked
ones.

A split is stored as ``<workspace>/splits/<split_id>/manifest.csv`` (path relative to the dataset
root, label, cluster, subset, md5, format, mode) with ``split.json`` beside it. The id is derived from the dataset
fingerprint, the strategy, the fractions, the seed and the near-duplicate threshold, so asking
for the same split again reuses the stored manifest.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn.model_selection

from kidney_lab.data.audit import AuditReport
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.errors import SplitError
from kidney_lab.fileio import atomic_path, atomic_write_json, read_json, short_hash

STRATEGIES = ("random", "grouped")
SUBSETS = ("train", "val", "test")
_GROUPED_TRIALS = 64
# Columns of a stored manifest; format and mode are absent from manifests of older versions.
_MANIFEST_COLUMNS = ("path", "label", "cluster", "subset", "md5", "format", "mode")
# Bump when the way subsets are assigned changes, so that old manifests are not reused.
_SPLITTER_VERSION = "2"


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
                     for label in CLASS_NAMES}
            for subset in SUBSETS
        }

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
        lines = [f"Split {self.split_id}  ({self.strategy}, seed {self.seed})"]
        lines.append("         " + "".join(f"{name:>8}" for name in CLASS_NAMES) + "   total")
        for subset in SUBSETS:
            row = per_class[subset]
            lines.append(
                f"  {subset:<6} " + "".join(f"{row[name]:>8}" for name in CLASS_NAMES)
                + f"{self.counts[subset]:>8}"
            )
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
    return f"{strategy}-" + short_hash(
        _SPLITTER_VERSION, fingerprint, strategy, f"{val_fraction:.6f}", f"{test_fraction:.6f}",
        str(seed), str(threshold), length=10,
    )


def make_split(
    audit: AuditReport,
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
        raise SplitError(
            f"Class {weakest} has only {smallest} {unit}; a {strategy} split needs at least "
            f"{len(SUBSETS)} per class (one each for train, validation and test)."
        )
    if strategy == "grouped":
        subset = _grouped_subsets(labels, groups, val_fraction, test_fraction, seed)
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
    with atomic_path(manifest_path) as temporary:
        stored.to_csv(temporary, index=False)
    meta = split.to_dict(manifest_path.resolve())
    meta["val_fraction"] = split.val_fraction
    meta["test_fraction"] = split.test_fraction
    atomic_write_json(folder / "split.json", meta)
    return manifest_path


def load_split(workspace: str | os.PathLike[str], split_id: str, root: str | os.PathLike[str] | None = None) -> Split:
    """Load a stored split; its paths resolve against ``root`` (default: the stored root).

    Raises:
        SplitError: No such split, or its files are unreadable or inconsistent.
    """
    if not split_id or Path(split_id).name != split_id or split_id.startswith("."):
        raise SplitError(f"{split_id!r} is not a split id.")
    folder = Path(workspace) / "splits" / split_id
    try:
        meta = read_json(folder / "split.json")
        stored = pd.read_csv(
            folder / "manifest.csv",
            dtype={"path": str, "label": str, "subset": str, "md5": str, "format": str, "mode": str},
            keep_default_na=False,
        )
    except FileNotFoundError:
        raise SplitError(f"No split {split_id} in {Path(workspace) / 'splits'}.") from None
    except (OSError, ValueError) as error:
        raise SplitError(f"Split {split_id} cannot be read ({error}); delete {folder} and split again.") from None
    expected = set(_MANIFEST_COLUMNS[:5])
    if not expected <= set(stored.columns) or not set(stored["subset"]) <= set(SUBSETS):
        raise SplitError(f"The manifest of split {split_id} is damaged; delete {folder} and split again.")
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
    )


def get_or_make_split(
    audit: AuditReport,
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
        except SplitError:
            pass  # A damaged stored split is made again below and replaces the old files.
    split = make_split(audit, strategy, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    return split, save_split(split, workspace)


def _check_arguments(strategy: str, val_fraction: float, test_fraction: float) -> None:
    if strategy not in STRATEGIES:
        raise SplitError(f"Unknown split strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    for name, value in (("validation", val_fraction), ("test", test_fraction)):
        if not 0 < value < 1:
            raise SplitError(f"The {name} fraction must be between 0 and 1, got {value}.")
    if val_fraction + test_fraction >= 0.9:
        raise SplitError(
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
        raise SplitError(
            f"The dataset is too small for these fractions ({error}); add images or raise the "
            "validation and test fractions."
        ) from None
    subset = np.empty(len(labels), dtype=object)
    subset[train], subset[val], subset[test] = "train", "val", "test"
    return subset


def _grouped_subsets(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Assign whole groups to subsets, per majority class, as close to the fractions as it can."""
    fractions = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    frame = pd.DataFrame({"label": labels, "group": groups})
    sizes = frame.groupby("group").size()
    majority = frame.groupby("group")["label"].agg(lambda values: values.value_counts().index[0])
    rng = np.random.default_rng(seed)
    subset_of_group: dict[object, str] = {}
    for label in CLASS_NAMES:
        members = majority.index[majority == label].to_numpy()
        if len(members) == 0:
            continue
        member_sizes = sizes.loc[members].to_numpy()
        targets = fractions * member_sizes.sum()
        best_error, best_choice = np.inf, np.zeros(len(members), dtype=np.int64)
        for _ in range(_GROUPED_TRIALS):
            order = rng.permutation(len(members))
            filled = np.zeros(len(SUBSETS))
            chosen = np.empty(len(members), dtype=np.int64)
            for position in order:
                # Subsets still empty come first, so each subset gets a group when it can.
                deficit = targets - filled + np.where(filled == 0, member_sizes.sum(), 0)
                chosen[position] = int(np.argmax(deficit))
                filled[chosen[position]] += member_sizes[position]
            error = float(np.abs(filled - targets).sum())
            if error < best_error:
                best_error, best_choice = error, chosen
        for member, choice in zip(members, best_choice):
            subset_of_group[member] = SUBSETS[choice]
    return np.array([subset_of_group[group] for group in groups], dtype=object)
