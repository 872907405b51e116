"""Grouped K-fold cross-validation plans, stored once by id, each fold an ordinary split."""

from __future__ import annotations

import pandas as pd
import pytest

from kidney_lab.data import folds as folds_module
from kidney_lab.data import split as split_module
from kidney_lab.data.audit import audit_dataset
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.data.discover import scan_dataset
from kidney_lab.errors import SplitError
from tests.data.test_split import REAL_LIKE, sized_audit, synthetic_audit


@pytest.fixture(scope="module")
def plan() -> folds_module.FoldPlan:
    return folds_module.plan_folds(sized_audit(REAL_LIKE), 5, seed=0)


def test_every_image_is_in_exactly_one_test_fold(plan):
    held = pd.concat([data_split.subset("test")["path"] for data_split in plan.splits])
    assert not held.duplicated().any()
    assert set(held) == set(sized_audit(REAL_LIKE).table["path"])
    assignment = plan.assignment
    assert len(assignment) == len(held) and set(assignment["fold"]) == set(range(5))
    for fold, data_split in enumerate(plan.splits):
        assert set(assignment.loc[assignment["fold"] == fold, "path"]) == set(data_split.subset("test")["path"])


def test_no_fold_trains_or_validates_on_a_cluster_of_its_test_fold(plan):
    for data_split in plan.splits:
        test_clusters = set(data_split.subset("test")["cluster"])
        assert test_clusters.isdisjoint(data_split.subset("train")["cluster"])
        assert test_clusters.isdisjoint(data_split.subset("val")["cluster"])
        assert set(data_split.subset("val")["cluster"]).isdisjoint(data_split.subset("train")["cluster"])
        assert data_split.leakage("test") == {"exact": 0, "exact_or_near": 0}


def test_every_class_is_in_every_subset_of_every_fold(plan):
    for data_split in plan.splits:
        for subset, per_class in data_split.clusters_per_class.items():
            assert all(count >= 1 for count in per_class.values()), (data_split.split_id, subset)


def test_stratification_spreads_each_class_over_the_folds():
    plan = folds_module.plan_folds(synthetic_audit(clusters_per_class=20), 4, seed=0)
    for label in CLASS_NAMES:
        counts = [clusters[label] for clusters in plan.test_clusters_per_fold]
        assert sum(counts) == 20 and min(counts) >= 3, (label, counts)
    images = [data_split.counts["test"] for data_split in plan.splits]
    assert max(images) - min(images) <= 0.1 * sum(images)


def test_deterministic_for_a_seed(plan):
    again = folds_module.plan_folds(sized_audit(REAL_LIKE), 5, seed=0)
    assert again.cv_id == plan.cv_id
    for first, second in zip(plan.splits, again.splits):
        pd.testing.assert_frame_equal(first.manifest, second.manifest)
    other = folds_module.plan_folds(sized_audit(REAL_LIKE), 5, seed=1)
    assert other.cv_id != plan.cv_id
    assert folds_module.plan_folds(sized_audit(REAL_LIKE), 4, seed=0).cv_id.startswith("cv4-")


def test_a_fold_is_an_ordinary_stored_split(tmp_path):
    audit = synthetic_audit()
    plan, plan_path = folds_module.get_or_make_plan(audit, tmp_path, 3, seed=0)
    assert plan_path == tmp_path / "splits" / plan.cv_id / folds_module.PLAN_FILE
    split_id = folds_module.fold_split_id(plan.cv_id, 2)
    assert split_id == f"{plan.cv_id}-fold2"
    loaded = split_module.load_split(tmp_path, split_id)
    assert (loaded.cv_id, loaded.fold, loaded.folds, loaded.strategy) == (plan.cv_id, 2, 3, "grouped")
    pd.testing.assert_frame_equal(loaded.manifest, plan.split(2).manifest, check_dtype=False)
    assert loaded.to_dict()["cv"] == {"cv_id": plan.cv_id, "fold": 2, "folds": 3}
    stamp = plan_path.stat().st_mtime_ns
    again, same = folds_module.get_or_make_plan(audit, tmp_path, 3, seed=0)
    assert same == plan_path and plan_path.stat().st_mtime_ns == stamp
    assert [data_split.counts for data_split in again.splits] == [data_split.counts for data_split in plan.splits]
    with pytest.raises(SplitError, match="does not exist"):
        plan.split(3)


def test_a_damaged_fold_is_planned_again(tmp_path):
    audit = synthetic_audit()
    plan, _ = folds_module.get_or_make_plan(audit, tmp_path, 3, seed=0)
    (tmp_path / "splits" / folds_module.fold_split_id(plan.cv_id, 1) / "manifest.csv").unlink()
    with pytest.raises(SplitError):
        folds_module.load_plan(tmp_path, plan.cv_id)
    repaired, _ = folds_module.get_or_make_plan(audit, tmp_path, 3, seed=0)
    assert repaired.split(1).counts == plan.split(1).counts
    with pytest.raises(SplitError, match="No cross-validation"):
        folds_module.load_plan(tmp_path, "cv3-0000000000")
    with pytest.raises(SplitError, match="not a cross-validation id"):
        folds_module.load_plan(tmp_path, "../x")


@pytest.mark.parametrize("folds", [1, 0, -3, 2.5, True, "5"])
def test_fewer_than_two_folds_are_refused(folds):
    with pytest.raises(SplitError, match="at least 2 folds"):
        folds_module.plan_folds(synthetic_audit(), folds)


def test_more_folds_than_a_class_has_clusters_are_refused():
    with pytest.raises(SplitError, match="Normal has only 5 near-duplicate clusters, fewer than 6 folds.*at most 5"):
        folds_module.plan_folds(sized_audit(REAL_LIKE), 6)


def test_too_large_a_validation_fraction_is_refused():
    with pytest.raises(SplitError, match="validation fraction"):
        folds_module.plan_folds(synthetic_audit(), 2, val_fraction=0.46)


def test_report_lists_test_images_and_clusters_per_fold(plan):
    lines = plan.format_report().splitlines()
    assert lines[0].startswith(f"Cross-validation {plan.cv_id}")
    assert len([line for line in lines if line.strip()[:1].isdigit()]) == 5
    summary = plan.to_dict()
    assert [entry["split_id"] for entry in summary["fold_splits"]] == [data_split.split_id for data_split in plan.splits]
    assert summary["images"] == sum(sum(sizes) for sizes in REAL_LIKE.values())


@pytest.mark.realdata
def test_real_sample_five_folds(real_sample, tmp_path):
    audit = audit_dataset(scan_dataset(real_sample))
    plan, _ = folds_module.get_or_make_plan(audit, tmp_path, 5, seed=0)
    assert plan.assignment["path"].is_unique and len(plan.assignment) == len(audit.table)
    for data_split in plan.splits:
        assert data_split.leakage("test")["exact_or_near"] == 0
        assert all(count >= 1 for count in data_split.clusters_per_class["val"].values())
