"""Exact duplicates, label conflicts and near-duplicate clusters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph

from kidney_lab.data.audit import (
    NEAR_DUPLICATE_THRESHOLD,
    audit_dataset,
    cluster_hashes,
    hashes_to_bits,
)
from kidney_lab.data.discover import scan_dataset
from kidney_lab.data.phantom import make_phantom
from tests.helpers import encode


def _names(groups: list[list[str]]) -> list[list[str]]:
    return [sorted(f"{Path(path).parent.name}/{Path(path).name}" for path in group) for group in groups]


def test_exact_duplicates_within_a_class(make_dataset_folder):
    root = make_dataset_folder(per_class=3)
    (root / "Cyst" / "copy.png").write_bytes((root / "Cyst" / "Cyst- (1).png").read_bytes())
    report = audit_dataset(scan_dataset(root))
    assert _names(report.exact_duplicate_groups) == [["Cyst/Cyst- (1).png", "Cyst/copy.png"]]
    assert report.label_conflicts == []


def test_cross_class_duplicate_is_a_label_conflict(make_dataset_folder):
    root = make_dataset_folder(per_class=3)
    (root / "Tumor" / "same.png").write_bytes((root / "Normal" / "Normal- (2).png").read_bytes())
    report = audit_dataset(scan_dataset(root))
    assert _names(report.label_conflicts) == [["Normal/Normal- (2).png", "Tumor/same.png"]]
    assert report.exact_duplicate_groups == report.label_conflicts


def test_neighbouring_slices_cluster_and_different_slices_do_not(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    rng = np.random.default_rng(0)
    base = make_phantom("Cyst", size=256, seed=3).image.astype(np.int16)
    # A "series": each slice is its neighbour shifted by a pixel with fresh noise.
    for number in range(5):
        shifted = np.roll(base, number, axis=1) + rng.integers(-4, 5, base.shape)
        (root / "Cyst" / f"series-{number}.png").write_bytes(encode(np.clip(shifted, 0, 255).astype(np.uint8)))
    report = audit_dataset(scan_dataset(root))
    table = report.table
    series = table[table["path"].str.contains("series-")]["cluster"]
    assert series.nunique() == 1
    others = table[~table["path"].str.contains("series-")]["cluster"]
    assert others.nunique() == len(others)
    assert not set(others) & set(series)
    assert _names(report.near_duplicate_clusters) == [[f"Cyst/series-{n}.png" for n in range(5)]]


def test_json_fields(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    (root / "Cyst" / "broken.png").write_bytes(b"")
    result = json.loads(json.dumps(audit_dataset(scan_dataset(root)).to_dict()))
    for field in ("images", "per_class", "skipped", "exact_duplicate_groups", "label_conflicts",
                  "near_duplicate_clusters", "near_duplicate_threshold"):
        assert field in result
    assert result["images"] == 8
    assert result["skipped"][0]["reason"] == "empty file (0 bytes)"
    assert Path(result["skipped"][0]["path"]).is_absolute()
    assert result["near_duplicate_threshold"] == NEAR_DUPLICATE_THRESHOLD


def test_threshold_is_checked(make_dataset_folder):
    scan = scan_dataset(make_dataset_folder(per_class=1))
    with pytest.raises(ValueError, match="threshold"):
        audit_dataset(scan, threshold=256)


def _brute_force_clusters(bits: np.ndarray, threshold: int) -> np.ndarray:
    distances = (bits[:, None, :] != bits[None, :, :]).sum(axis=-1)
    _, labels = scipy.sparse.csgraph.connected_components(
        scipy.sparse.csr_matrix(distances <= threshold), directed=False
    )
    return labels


def _same_partition(first: np.ndarray, second: np.ndarray) -> bool:
    pairs = set(zip(first.tolist(), second.tolist()))
    return len(pairs) == len(set(first.tolist())) == len(set(second.tolist()))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0, 3, 20])
def test_multi_index_hashing_matches_brute_force(seed, threshold):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (12, 256)).astype(bool)
    rows = []
    for centre in centres:
        for _ in range(rng.integers(1, 8)):
            flips = rng.random(256) < rng.choice([0.01, 0.04, 0.08, 0.12])
            rows.append(centre ^ flips)
    bits = np.array(rows)
    clusters = cluster_hashes(bits, threshold)
    assert _same_partition(clusters, _brute_force_clusters(bits, threshold))


def test_hashes_round_trip_to_bits():
    bits = hashes_to_bits(["ff" + "00" * 31, "00" * 31 + "01"])
    assert bits.shape == (2, 256)
    assert bits[0, :8].all() and not bits[0, 8:].any()
    assert bits[1, -1] and bits[1].sum() == 1


@pytest.mark.realdata
def test_real_sample_duplicates_and_series(real_sample):
    report = audit_dataset(scan_dataset(real_sample))
    assert len(report.exact_duplicate_groups) == 86
    assert report.label_conflicts == []
    table = report.table.assign(
        number=lambda frame: frame["path"].map(lambda path: int(re.search(r"\((\d+)\)", path).group(1)))
    )
    # Neighbouring file numbers are mostly neighbouring slices of one series: nearly all share a
    # cluster (the rest are series boundaries).
    same = []
    for _, frame in table.groupby("label"):
        clusters = frame.set_index("number")["cluster"].sort_index()
        same.extend(clusters.to_numpy()[1:] == clusters.to_numpy()[:-1])
    assert np.mean(same) > 0.9
    cyst = table[table["label"] == "Cyst"].set_index("number")["cluster"]
    assert cyst.loc[2:10].nunique() == 1
    # Known exact duplicate pair of the sample.
    assert cyst.loc[351] == cyst.loc[431]
    # No cluster crosses a class, and the sample is many series, not one blob.
    assert (table.groupby("cluster")["label"].nunique() == 1).all()
    assert 30 <= table["cluster"].nunique() <= 200
    assert max(len(cluster) for cluster in report.near_duplicate_clusters) < 0.15 * len(table)
