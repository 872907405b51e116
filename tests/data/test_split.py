"""Random and grouped splits, stored once by id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidney_lab.data.audit import AuditReport, audit_dataset
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.data.discover import DatasetScan, scan_dataset
from kidney_lab.data import split as split_module
from kidney_lab.data.split import SUBSETS, get_or_make_split, load_split, make_split, save_split
from kidney_lab.errors import SplitError


def synthetic_audit(clusters_per_class: int = 12, max_cluster: int = 9, seed: int = 0) -> AuditReport:
    """An audit of a made-up dataset with clusters of varied size (no files needed)."""
    rng = np.random.default_rng(seed)
    return sized_audit({label: [int(rng.integers(1, max_cluster + 1)) for _ in range(clusters_per_class)]
                        for label in CLASS_NAMES})


def sized_audit(sizes: dict[str, list[int]], mixed: dict[int, str] | None = None) -> AuditReport:
    """An audit with one cluster per entry of ``sizes[label]``, of that many images.

    ``mixed`` relabels the first image of the numbered clusters, making clusters whose images
    carry two labels.
    """
    rows, cluster_ids = [], []
    cluster = 0
    for label in CLASS_NAMES:
        for size in sizes.get(label, []):
            for member in range(size):
                path = f"/data/{label}/c{cluster}-{member}.png"
                own = (mixed or {}).get(cluster, label) if member == 0 else label
                rows.append({"path": path, "label": own, "width": 8, "height": 8, "mode": "L",
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
    # Normal has 5 clusters (69 to 133 slices) and Tumor 6, so two test clusters each take the test
    # set above the asked 15% (300 images); it stays below a quarter of the sample.
    assert 300 <= grouped.counts["test"] <= 500
    assert all(count >= 2 for count in grouped.to_dict()["clusters"]["test"].values())


# Like the real sample: many small Cyst and Stone series, few large Normal and Tumor ones.
REAL_LIKE = {
    "Cyst": [1, 1, 1, 1, 3, 6, 7, 9, 13, 13, 14, 15, 19, 23, 25, 27, 28, 60, 74, 160],
    "Normal": [69, 71, 102, 125, 133],
    "Stone": [4, 4, 4, 5, 6, 6, 6, 7, 7, 8, 9, 11, 12, 13, 13, 14, 14, 15, 18, 20, 62, 69, 173],
    "Tumor": [1, 8, 85, 103, 121, 182],
}


@pytest.mark.parametrize("seed", range(6))
def test_grouped_gives_every_class_two_test_clusters_and_a_validation_cluster(seed):
    split = make_split(sized_audit(REAL_LIKE), "grouped", seed=seed)
    clusters = split.to_dict()["clusters"]
    assert set(clusters) == set(SUBSETS)
    for label in CLASS_NAMES:
        assert clusters["test"][label] >= split_module.MIN_TEST_CLUSTERS, label
        assert clusters["val"][label] >= 1 and clusters["train"][label] >= 1, label
        assert sum(clusters[subset][label] for subset in SUBSETS) == len(REAL_LIKE[label])
    # Classes with many clusters get the asked share of them: 15% of 20 Cyst clusters is 3.
    assert clusters["test"]["Cyst"] == 3 and clusters["val"]["Cyst"] == 3
    assert (split.manifest.groupby("cluster")["subset"].nunique() == 1).all()
    # Normal and Tumor rest on two test clusters each, and the report says so.
    warnings = split.to_dict()["warnings"]
    assert [warning.split(":")[0] for warning in warnings] == ["Normal", "Tumor"]
    assert "2 near-duplicate clusters (of 5)" in warnings[0]


def test_clusters_counts_are_distinct_clusters_per_class_and_subset():
    split = make_split(sized_audit(REAL_LIKE), "grouped", seed=0)
    manifest = split.manifest
    for subset in SUBSETS:
        for label in CLASS_NAMES:
            rows = manifest[(manifest["subset"] == subset) & (manifest["label"] == label)]
            assert split.clusters_per_class[subset][label] == rows["cluster"].nunique()


@pytest.mark.parametrize(
    ("clusters", "expected"),
    [(3, [1, 1]), (4, [2, 1]), (5, [2, 1]), (6, [2, 1]), (10, [2, 2]), (20, [3, 3]), (100, [15, 15])],
)
def test_cluster_counts_per_subset(clusters, expected):
    held_out = (("test", 0.15, 2), ("val", 0.15, 1))
    assert split_module.held_out_cluster_counts(clusters, held_out) == expected


def test_a_class_with_three_clusters_gets_one_test_cluster_and_a_warning():
    sizes = dict(REAL_LIKE, Normal=[100, 120, 140])
    split = make_split(sized_audit(sizes), "grouped", seed=0)
    assert split.clusters_per_class["test"]["Normal"] == 1
    normal = [warning for warning in split.warnings if warning.startswith("Normal")]
    assert len(normal) == 1 and "one series' recall" in normal[0] and "too few clusters" in normal[0]
    assert any(line.startswith("Warning: Normal") for line in split.format_report().splitlines())


def test_a_cluster_with_two_labels_stays_whole_and_counts_for_both():
    # Cluster 20 is the first Normal one; its first image is filed under Cyst.
    audit = sized_audit(REAL_LIKE, mixed={20: "Cyst"})
    split = make_split(audit, "grouped", seed=0)
    rows = split.manifest[split.manifest["cluster"] == 20]
    assert rows["subset"].nunique() == 1 and set(rows["label"]) == {"Cyst", "Normal"}
    subset = rows["subset"].iloc[0]
    cyst = split.manifest[(split.manifest["label"] == "Cyst") & (split.manifest["subset"] == subset)]
    assert 20 in set(cyst["cluster"]) and split.clusters_per_class[subset]["Cyst"] == cyst["cluster"].nunique()


def test_random_splits_report_clusters_without_warnings():
    split = make_split(sized_audit(REAL_LIKE), "random", seed=0)
    assert split.warnings == [] and split.to_dict()["warnings"] == []
    assert split.clusters_per_class["test"]["Normal"] == 5  # every series on both sides


def test_report_prints_the_cluster_table():
    report = make_split(sized_audit(REAL_LIKE), "grouped", seed=0).format_report()
    lines = report.splitlines()
    assert any(line.startswith("Clusters") for line in lines)
    assert any(line.split()[:1] == ["test"] and line.split()[1:] == ["3", "2", "3", "2"] for line in lines)


def test_split_id_names_the_assignment_version(monkeypatch):
    audit = synthetic_audit()
    current = make_split(audit, "grouped", seed=0).split_id
    monkeypatch.setattr(split_module, "_SPLITTER_VERSION", "2")
    assert make_split(audit, "grouped", seed=0).split_id != current


def test_a_split_stored_by_an_older_version_still_loads(tmp_path):
    split = make_split(synthetic_audit(), "grouped", seed=0)
    save_split(split, tmp_path)
    folder = tmp_path / "splits" / split.split_id
    # Older split.json files had no clusters, warnings or cv entries; older manifests no format.
    meta = json.loads((folder / "split.json").read_text())
    for key in ("clusters", "warnings", "cv"):
        meta.pop(key)
    (folder / "split.json").write_text(json.dumps(meta))
    manifest = pd.read_csv(folder / "manifest.csv").drop(columns=["format", "mode"])
    manifest.to_csv(folder / "manifest.csv", index=False)
    loaded = load_split(tmp_path, split.split_id)
    assert loaded.cv_id is None and loaded.counts == split.counts
    assert loaded.to_dict()["clusters"] == split.clusters_per_class
