"""Random and grouped splits, stored once by id."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidney_lab.data.audit import AuditReport, audit_dataset
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.data.discover import DatasetScan, scan_dataset
from kidney_lab.data.split import SUBSETS, get_or_make_split, load_split, make_split, save_split
from kidney_lab.errors import SplitError


def synthetic_audit(clusters_per_class: int = 12, max_cluster: int = 9, seed: int = 0) -> AuditReport:
    """An audit of a made-up dataset with clusters of varied size (no files needed)."""
    rng = np.random.default_rng(seed)
    rows, cluster_ids = [], []
    cluster = 0
    for label in CLASS_NAMES:
        for _ in range(clusters_per_class):
            for member in range(int(rng.integers(1, max_cluster + 1))):
                path = f"/data/{label}/c{cluster}-{member}.png"
                rows.append({"path": path, "label": label, "width": 8, "height": 8, "mode": "L",
                             "format": "PNG", "bytes": 1, "md5": hashlib.md5(path.encode()).hexdigest(),
                             "phash": "0" * 64})
                cluster_ids.append(cluster)
            cluster += 1
    scan = DatasetScan(root=Path("/data"), table=pd.DataFrame(rows), skipped=pd.DataFrame(columns=["path", "label", "reason"]),
                       ignored=(), class_folders={})
    return AuditReport(scan=scan, clusters=np.array(cluster_ids), exact_duplicate_groups=[], label_conflicts=[],
                       near_duplicate_clusters=[], threshold=20)


@pytest.mark.parametrize("strategy", ["random", "grouped"])
def test_deterministic_for_a_seed_and_varies_with_it(strategy):
    audit = synthetic_audit()
    first = make_split(audit, strategy, seed=3)
    again = make_split(audit, strategy, seed=3)
    other = make_split(audit, strategy, seed=4)
    pd.testing.assert_frame_equal(first.manifest, again.manifest)
    assert first.split_id == again.split_id != other.split_id
    assert not first.manifest["subset"].equals(other.manifest["subset"])


@pytest.mark.parametrize("strategy", ["random", "grouped"])
def test_every_class_in_every_subset_near_the_fractions(strategy):
    split = make_split(synthetic_audit(clusters_per_class=20), strategy, seed=0, val_fraction=0.2, test_fraction=0.1)
    for subset, per_class in split.counts_per_class.items():
        assert all(count > 0 for count in per_class.values()), subset
    total = len(split.manifest)
    reached = {name: count / total for name, count in split.counts.items()}
    tolerance = 0.02 if strategy == "random" else 0.06
    assert reached["val"] == pytest.approx(0.2, abs=tolerance)
    assert reached["test"] == pytest.approx(0.1, abs=tolerance)


def test_grouped_keeps_clusters_whole_and_random_does_not():
    audit = synthetic_audit()
    grouped = make_split(audit, "grouped", seed=0)
    assert (grouped.manifest.groupby("cluster")["subset"].nunique() == 1).all()
    assert grouped.leakage("test") == {"exact": 0, "exact_or_near": 0}
    random = make_split(audit, "random", seed=0)
    assert random.leakage("test")["exact_or_near"] > 0


def test_labels_stay_with_their_paths():
    audit = synthetic_audit()
    split = make_split(audit, "grouped", seed=1)
    assert (split.manifest["path"].str.split("/").str[2] == split.manifest["label"]).all()
    assert sorted(split.manifest["path"]) == sorted(audit.scan.table["path"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"strategy": "stratified"}, "Unknown split strategy"),
        ({"val_fraction": 0.0}, "between 0 and 1"),
        ({"test_fraction": 1.5}, "between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "less than 10%"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(SplitError, match=message):
        make_split(synthetic_audit(), **arguments)


def test_too_few_clusters_for_a_grouped_split():
    with pytest.raises(SplitError, match="only 2 near-duplicate clusters"):
        make_split(synthetic_audit(clusters_per_class=2), "grouped")


def test_stored_once_and_reused(tmp_path):
    audit = synthetic_audit()
    split, manifest = get_or_make_split(audit, tmp_path, "grouped", seed=0)
    assert manifest == tmp_path / "splits" / split.split_id / "manifest.csv"
    stamp = manifest.stat().st_mtime_ns
    again, same = get_or_make_split(audit, tmp_path, "grouped", seed=0)
    assert same == manifest and manifest.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.manifest, split.manifest, check_dtype=False)
    stored = pd.read_csv(manifest)
    assert list(stored.columns)[:4] == ["path", "label", "cluster", "subset"]
    assert not stored["path"].str.startswith("/").any()  # relative to the dataset root


def test_load_resolves_paths_against_a_new_root(tmp_path):
    audit = synthetic_audit()
    split = make_split(audit, "random", seed=0)
    save_split(split, tmp_path)
    moved = load_split(tmp_path, split.split_id, root="/elsewhere")
    assert moved.manifest["path"].str.startswith("/elsewhere/").all()
    assert moved.counts == split.counts


def test_damaged_manifest_is_made_again(tmp_path):
    audit = synthetic_audit()
    split, manifest = get_or_make_split(audit, tmp_path, "grouped")
    manifest.write_text("nonsense\n1,2\n")
    with pytest.raises(SplitError, match="damaged"):
        load_split(tmp_path, split.split_id)
    repaired, _ = get_or_make_split(audit, tmp_path, "grouped")
    assert repaired.counts == split.counts


@pytest.mark.parametrize("bad_id", ["../x", "/etc", "", ".hidden", "a/b"])
def test_split_ids_cannot_leave_the_workspace(tmp_path, bad_id):
    with pytest.raises(SplitError):
        load_split(tmp_path, bad_id)


def test_missing_split(tmp_path):
    with pytest.raises(SplitError, match="No split"):
        load_split(tmp_path, "grouped-0000000000")


def test_phantoms_split_without_leakage(phantom_root, tmp_path):
    audit = audit_dataset(scan_dataset(phantom_root))
    split, _ = get_or_make_split(audit, tmp_path, "grouped", seed=0)
    assert split.leakage("test")["exact_or_near"] == 0
    assert set(split.manifest["subset"]) == set(SUBSETS)


@pytest.mark.realdata
def test_real_sample_random_leaks_and_grouped_does_not(real_sample, tmp_path):
    audit = audit_dataset(scan_dataset(real_sample))
    random, _ = get_or_make_split(audit, tmp_path, "random", seed=0)
    grouped, _ = get_or_make_split(audit, tmp_path, "grouped", seed=0)
    assert random.leakage("test")["exact_or_near"] > 0.5 * random.counts["test"]
    assert random.leakage("test")["exact"] > 0
    assert grouped.to_dict()["test_with_duplicate_in_train"] == 0
    assert grouped.counts["test"] == pytest.approx(300, rel=0.25)
