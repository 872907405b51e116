"""Grouped K-fold cross-validation: which near-duplicate clusters each fold holds out.

Every image is in the test set of exactly one fold. The test folds are scikit-learn's
``StratifiedGroupKFold`` over the images (groups: near-duplicate clusters, roughly CT series;
y: labels), so whole clusters are held out and each class's clusters are spread over the folds.
Each fold's validation set is then taken from its training folds by cluster, with the grouped
split's cluster-stratified draw (:func:`kidney_lab.data.split.assign_clusters`: at least one
validation cluster per class), so no fold's model is trained or validated on a cluster of its
own test fold.

A plan is deterministic for its seed. ``StratifiedGroupKFold``'s ``shuffle`` only breaks ties
between equally distributed clusters, so on the real sample, whose clusters have distinct
sizes, every seed gives the same test folds (the validation draws do change with the seed).

A plan is stored once, by id, beside the splits: ``<workspace>/splits/<cv_id>/plan.json`` names
the folds, and fold ``i`` is an ordinary stored split ``<workspace>/splits/<cv_id>-fold<i>/``
(manifest with train/val/test subsets, ``split.json`` with a ``cv`` entry), so the training
engine and the evaluation read a fold with :func:`kidney_lab.data.split.load_split` like any
other split. The cv id is derived from the plan's version, the dataset fingerprint, the number of
folds, the seed, the validation fraction and the near-duplicate threshold.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn.model_selection

from kidney_lab.data import split as split_module
from kidney_lab.data import audit as audit_module
from kidney_lab.data import classes
from kidney_lab import errors
from kidney_lab import fileio

DEFAULT_FOLDS = 5
PLAN_FILE = "plan.json"
# Bump when the way folds are assigned changes, so that old plans are not reused under their id.
_PLAN_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """A stored K-fold cross-validation of one dataset.

    Attributes:
        cv_id: Derived from version, fingerprint, folds, seed, validation fraction and threshold.
        folds: The number of folds, K.
        seed: The seed of the fold and validation assignment.
        val_fraction: Asked fraction of all images for each fold's validation set.
        fingerprint: The dataset's fingerprint.
        root: The dataset root the manifests' paths resolve against.
        threshold: Near-duplicate threshold (bits) the clusters were made with.
        splits: One split per fold, in fold order; fold ``i``'s test subset is test fold ``i``.
    """

    cv_id: str
    folds: int
    seed: int
    val_fraction: float
    fingerprint: str
    root: Path
    threshold: int
    splits: tuple[split_module.Split, ...]

    def split(self, fold: int) -> split_module.Split:
        """The split of fold ``fold`` (0-based).

        Raises:
            SplitError: No such fold.
        """
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < self.folds:
            raise errors.SplitError(f"Fold {fold!r} does not exist; cross-validation {self.cv_id} has folds 0 to {self.folds - 1}.")
        return self.splits[int(fold)]

    @property
    def assignment(self) -> pd.DataFrame:
        """One row per image: path (absolute), label, cluster and ``fold``, the fold whose test set
        holds it; in the order of fold 0's manifest."""
        held = pd.concat([data_split.subset("test").assign(fold=index) for index, data_split in enumerate(self.splits)])
        order = self.splits[0].manifest["path"]
        return held.set_index("path").loc[order].reset_index()[["path", "label", "cluster", "fold"]]

    @property
    def test_clusters_per_fold(self) -> list[dict[str, int]]:
        """Distinct clusters per class in each fold's test set, in fold order."""
        return [data_split.clusters_per_class["test"] for data_split in self.splits]

    @property
    def warnings(self) -> list[str]:
        """One sentence per class whose pooled out-of-fold predictions rest on fewer than
        :data:`kidney_lab.data.split.FEW_CLUSTERS` clusters."""
        return split_module.cluster_warnings(self.splits[0].manifest.assign(subset="test"), "test")

    def to_dict(self, plan_path: Path | None = None) -> dict[str, Any]:
        """A JSON summary: id, settings, and per fold its split id, counts and clusters."""
        return {
            "cv_id": self.cv_id,
            "folds": self.folds,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "fingerprint": self.fingerprint,
            "root": str(self.root),
            "near_duplicate_threshold": self.threshold,
            "images": int(len(self.splits[0].manifest)),
            "fold_splits": [
                {
                    "fold": index,
                    "split_id": data_split.split_id,
                    "counts": data_split.counts,
                    "clusters": data_split.clusters_per_class,
                }
                for index, data_split in enumerate(self.splits)
            ],
            "warnings": self.warnings,
            "plan": str(plan_path) if plan_path is not None else None,
        }

    def format_report(self) -> str:
        """A readable plain-text summary: test images and clusters per class of every fold."""
        lines = [f"Cross-validation {self.cv_id}  ({self.folds} folds, seed {self.seed})",
                 "Test fold  " + "".join(f"{name:>14}" for name in classes.CLASS_NAMES) + "   images (clusters)"]
        for index, data_split in enumerate(self.splits):
            images = data_split.counts_per_class["test"]
            clusters = data_split.clusters_per_class["test"]
            lines.append(f"  {index:<8} " + "".join(f"{f'{images[name]} ({clusters[name]})':>14}" for name in classes.CLASS_NAMES))
        lines.extend(f"Warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def cv_id_for(fingerprint: str, folds: int, seed: int, val_fraction: float, threshold: int) -> str:
    """The id of a fold plan: ``cv<K>-`` and a short hash of everything that determines it."""
    return f"cv{folds}-" + fileio.short_hash(
        _PLAN_VERSION, fingerprint, str(folds), str(seed), f"{val_fraction:.6f}", str(threshold), length=10
    )


def fold_split_id(cv_id: str, fold: int) -> str:
    """The split id of fold ``fold`` of plan ``cv_id``: ``<cv_id>-fold<fold>``."""
    return f"{cv_id}-fold{fold}"


def check_folds(folds: int) -> int:
    """Return ``folds`` if it is a usable number of folds.

    Raises:
        SplitError: Not a whole number of at least 2.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise errors.SplitError(f"Cross-validation needs a whole number of at least 2 folds; got {folds!r}.")
    return int(folds)


def plan_folds(
    audit: audit_module.AuditReport, folds: int = DEFAULT_FOLDS, *, seed: int = 0, val_fraction: float = 0.15
) -> FoldPlan:
    """Assign every image of an audited dataset to one test fold, and each fold a validation set.

    Args:
        audit: The audited dataset (its clusters are the groups).
        folds: K, at least 2 and at most the number of clusters of the class with fewest.
        seed: Seed of ``StratifiedGroupKFold``'s shuffle and of the validation draws.
        val_fraction: Fraction of all images each fold's validation set should hold (taken from
            that fold's training folds, by cluster).

    Raises:
        SplitError: Fewer than 2 folds; a class with fewer clusters than folds; a validation
            fraction that leaves less than 10% of a fold's training images for training; or a
            fold left without a test or validation cluster of some class.
    """
    folds = check_folds(folds)
    val_share = val_fraction / (1 - 1 / folds) if 0 < val_fraction < 1 else -1.0
    if not 0 < val_share < 0.9:
        raise errors.SplitError(
            f"The validation fraction must be above 0 and leave at least 10% of each fold's training "
            f"images for training; {val_fraction} does not with {folds} folds."
        )
    table = audit.table
    labels = table["label"].to_numpy()
    groups = table["cluster"].to_numpy()
    clusters_per_class = pd.Series(groups).groupby(labels).nunique()
    weakest = str(clusters_per_class.idxmin())
    if int(clusters_per_class.min()) < folds:
        raise errors.SplitError(
            f"Class {weakest} has only {int(clusters_per_class.min())} near-duplicate clusters, fewer than "
            f"{folds} folds: some test fold would hold none of its series. Use at most "
            f"{int(clusters_per_class.min())} folds, or add images of other series."
        )
    splitter = sklearn.model_selection.StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fingerprint = audit.scan.fingerprint
    cv_id = cv_id_for(fingerprint, folds, seed, val_fraction, audit.threshold)
    splits = []
    for fold, (training, test) in enumerate(splitter.split(np.zeros(len(table)), labels, groups)):
        missing = sorted(set(classes.CLASS_NAMES) & set(labels) - set(labels[test]))
        if missing:
            raise errors.SplitError(
                f"Fold {fold} of {folds} holds no test cluster of {', '.join(missing)}: the clusters are too "
                "unequal in size for this many folds. Use fewer folds."
            )
        subset = np.full(len(table), "test", dtype=object)
        try:
            subset[training] = split_module.assign_clusters(
                labels[training], groups[training], (("val", val_share, split_module.MIN_VAL_CLUSTERS),), seed
            )
        except errors.SplitError:
            left = pd.Series(groups[training]).groupby(labels[training]).nunique()
            raise errors.SplitError(
                f"Fold {fold} leaves {str(left.idxmin())} only {int(left.min())} cluster(s) for training and "
                "validation, which need one each. Use fewer folds, or add images of other series."
            ) from None
        manifest = pd.DataFrame(
            {
                "path": table["path"], "label": table["label"], "cluster": table["cluster"], "subset": subset,
                "md5": table["md5"], "format": table["format"], "mode": table["mode"],
            }
        )
        splits.append(
            split_module.Split(
                split_id=fold_split_id(cv_id, fold), strategy="grouped", seed=seed, val_fraction=val_fraction,
                test_fraction=round(1 / folds, 6), fingerprint=fingerprint, root=audit.scan.root, manifest=manifest,
                threshold=audit.threshold, cv_id=cv_id, fold=fold, folds=folds,
            )
        )
    return FoldPlan(
        cv_id=cv_id, folds=folds, seed=seed, val_fraction=val_fraction, fingerprint=fingerprint,
        root=audit.scan.root, threshold=audit.threshold, splits=tuple(splits),
    )


def save_plan(plan: FoldPlan, workspace: str | os.PathLike[str]) -> Path:
    """Store every fold's split, then ``<workspace>/splits/<cv_id>/plan.json``; return its path.

    The plan file is written last, so a plan whose file exists has all its folds.
    """
    for data_split in plan.splits:
        split_module.save_split(data_split, workspace)
    plan_path = Path(workspace) / "splits" / plan.cv_id / PLAN_FILE
    fileio.atomic_write_json(plan_path, plan.to_dict(plan_path.resolve()))
    return plan_path


def load_plan(workspace: str | os.PathLike[str], cv_id: str, root: str | os.PathLike[str] | None = None) -> FoldPlan:
    """Load a stored plan; its paths resolve against ``root`` (default: the stored root).

    Raises:
        SplitError: No such plan, or it or one of its fold splits is unreadable or inconsistent.
    """
    if not cv_id or Path(cv_id).name != cv_id or cv_id.startswith("."):
        raise errors.SplitError(f"{cv_id!r} is not a cross-validation id.")
    folder = Path(workspace) / "splits" / cv_id
    try:
        meta = fileio.read_json(folder / PLAN_FILE)
        folds = check_folds(int(meta["folds"]))
        splits = tuple(split_module.load_split(workspace, fold_split_id(cv_id, fold), root=root) for fold in range(folds))
    except FileNotFoundError:
        raise errors.SplitError(f"No cross-validation {cv_id} in {Path(workspace) / 'splits'}.") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise errors.SplitError(
            f"Cross-validation {cv_id} cannot be read ({error}); delete {folder} and its fold folders and plan again."
        ) from None
    held = pd.concat([data_split.subset("test")["path"] for data_split in splits])
    if held.duplicated().any() or set(held) != set(splits[0].manifest["path"]):
        raise errors.SplitError(f"The folds of cross-validation {cv_id} do not hold every image once; delete {folder} and plan again.")
    return FoldPlan(
        cv_id=cv_id, folds=folds, seed=int(meta["seed"]), val_fraction=float(meta["val_fraction"]),
        fingerprint=str(meta["fingerprint"]), root=splits[0].root, threshold=int(meta["near_duplicate_threshold"]),
        splits=splits,
    )


def get_or_make_plan(
    audit: audit_module.AuditReport,
    workspace: str | os.PathLike[str],
    folds: int = DEFAULT_FOLDS,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
) -> tuple[FoldPlan, Path]:
    """Return the stored plan with these settings, making and storing it on first use.

    Raises:
        SplitError: See :func:`plan_folds`.
    """
    folds = check_folds(folds)
    cv_id = cv_id_for(audit.scan.fingerprint, folds, seed, val_fraction, audit.threshold)
    plan_path = Path(workspace) / "splits" / cv_id / PLAN_FILE
    if plan_path.exists():
        try:
            return load_plan(workspace, cv_id, root=audit.scan.root), plan_path
        except errors.SplitError:
            pass  # A damaged stored plan is made again below and replaces the old files.
    plan = plan_folds(audit, folds, seed=seed, val_fraction=val_fraction)
    return plan, save_plan(plan, workspace)
