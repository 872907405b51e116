"""Audit a dataset for exact duplicates, label conflicts and near-duplicates.

Exact duplicates share an MD5 of their bytes; a group of them that spans two classes is a label
conflict. Near-duplicates are images whose 256-bit perceptual hashes (DCT hash, ``imagehash.phash``
with ``hash_size=16``) differ in at most :data:`NEAR_DUPLICATE_THRESHOLD` bits; clusters are the
connected components of that relation (single linkage), so the neighbouring slices of one CT
series chain into one cluster.

The threshold was set on the real sample (2,000 slices of the Kaggle dataset): neighbouring file
numbers, which are mostly neighbouring slices of one series, differ by a median of 6 bits
(90th percentile 12); random pairs of slices differ by a median of 116 bits (1st percentile 54).
From 20 to 24 bits the clustering is the same (54 clusters of whole series, none crossing a
class); 18 bits gives 55 clusters, 16 gives 59 and 28 gives 51. 20 is the lower end of that
plateau.

Pairs within the threshold are found by multi-index hashing: the 256 bits are cut into
``threshold + 1`` blocks (balanced by how informative each bit is on the data at hand), and by
the pigeonhole principle two hashes within ``threshold`` bits agree exactly on at least one
block. Only images that share a block value are compared, so the
work grows with the number of similar pairs, not with the square of the dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.csgraph

from kidney_lab.data import discover

NEAR_DUPLICATE_THRESHOLD = 20
HASH_BITS = discover.HASH_SIZE * discover.HASH_SIZE


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """Duplicates and near-duplicates of a scanned dataset.

    Attributes:
        scan: The scanned dataset the report is about.
        clusters: One near-duplicate cluster id per row of ``scan.table`` (singletons included);
            exact duplicates always share a cluster.
        exact_duplicate_groups: Groups (two or more paths) with identical bytes.
        label_conflicts: The exact-duplicate groups whose images carry different labels.
        near_duplicate_clusters: Clusters of two or more images, largest first.
        threshold: The Hamming distance (bits of 256) at or below which two images are near
            duplicates.
    """

    scan: discover.DatasetScan
    clusters: np.ndarray
    exact_duplicate_groups: list[list[str]]
    label_conflicts: list[list[str]]
    near_duplicate_clusters: list[list[str]]
    threshold: int

    @property
    def table(self) -> pd.DataFrame:
        """The scan table with a ``cluster`` column."""
        return self.scan.table.assign(cluster=self.clusters)

    def to_dict(self) -> dict[str, object]:
        """The JSON result of ``python -m kidney_lab data audit`` (paths absolute)."""
        sizes = [len(cluster) for cluster in self.near_duplicate_clusters]
        return {
            "root": str(self.scan.root),
            "fingerprint": self.scan.fingerprint,
            "images": int(len(self.scan.table)),
            "per_class": self.scan.per_class,
            "skipped": self.scan.skipped[["path", "reason"]].to_dict(orient="records"),
            "ignored_files": len(self.scan.ignored),
            "exact_duplicate_groups": self.exact_duplicate_groups,
            "exact_duplicate_images": sum(len(group) - 1 for group in self.exact_duplicate_groups),
            "label_conflicts": self.label_conflicts,
            "near_duplicate_clusters": self.near_duplicate_clusters,
            "near_duplicate_cluster_sizes": sizes,
            "images_in_near_duplicate_clusters": int(sum(sizes)),
            "clusters": int(len(np.unique(self.clusters))) if len(self.clusters) else 0,
            "near_duplicate_threshold": self.threshold,
            "near_duplicate_threshold_bits": HASH_BITS,
            "near_duplicate_method": (
                f"perceptual hash (imagehash.phash, {HASH_BITS} bits), Hamming distance "
                f"<= {self.threshold}, single-linkage clusters"
            ),
        }

    def format_report(self) -> str:
        """A readable plain-text report for the terminal."""
        summary = self.to_dict()
        lines = [
            f"Dataset  {summary['root']}",
            f"         fingerprint {summary['fingerprint']}, {summary['images']} usable images",
            "         "
            + ", ".join(f"{name} {count}" for name, count in self.scan.per_class.items()),
            f"Skipped  {len(summary['skipped'])} unusable image files"
            + (f", {summary['ignored_files']} other files ignored" if summary["ignored_files"] else ""),
        ]
        for entry in summary["skipped"][:10]:
            lines.append(f"         {entry['path']}: {entry['reason']}")
        if len(summary["skipped"]) > 10:
            lines.append(f"         ... and {len(summary['skipped']) - 10} more (see --json)")
        lines.append(
            f"Exact duplicates  {len(self.exact_duplicate_groups)} groups "
            f"({summary['exact_duplicate_images']} redundant images)"
        )
        for group in self.exact_duplicate_groups[:5]:
            lines.append("         " + "  =  ".join(_short(path, self.scan) for path in group))
        if len(self.exact_duplicate_groups) > 5:
            lines.append(f"         ... and {len(self.exact_duplicate_groups) - 5} more groups")
        lines.append(f"Label conflicts   {len(self.label_conflicts)} groups (same image, different classes)")
        for group in self.label_conflicts[:10]:
            lines.append("         " + "  =  ".join(_short(path, self.scan) for path in group))
        sizes = summary["near_duplicate_cluster_sizes"]
        lines.append(
            f"Near duplicates   {len(sizes)} clusters holding {summary['images_in_near_duplicate_clusters']}"
            f" images (threshold {self.threshold}/{HASH_BITS} bits); "
            f"{summary['clusters']} clusters in all, counting singletons"
        )
        if sizes:
            lines.append(
                f"         largest {', '.join(str(size) for size in sizes[:8])}; median {int(np.median(sizes))}"
            )
        lines.append(
            "A random image-level split puts members of one cluster on both sides; "
            "use --strategy grouped."
            if sizes
            else "No near-duplicate clusters: a random split is not at risk of this leakage."
        )
        return "\n".join(lines)


def audit_dataset(scan: discover.DatasetScan, threshold: int = NEAR_DUPLICATE_THRESHOLD) -> AuditReport:
    """Find exact duplicates, label conflicts and near-duplicate clusters in ``scan``.

    Args:
        scan: A scanned dataset (see :func:`kidney_lab.data.discover.scan_dataset`).
        threshold: Largest Hamming distance, in bits of 256, between near-duplicates.

    Raises:
        ValueError: ``threshold`` is outside 0..255.
    """
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold must be between 0 and {HASH_BITS - 1} bits, got {threshold}.")
    table = scan.table
    exact_groups: list[list[str]] = []
    conflicts: list[list[str]] = []
    repeated = table[table["md5"].duplicated(keep=False)]
    for _, group in repeated.groupby("md5", sort=False):
        paths = group["path"].tolist()
        exact_groups.append(paths)
        if group["label"].nunique() > 1:
            conflicts.append(paths)
    exact_groups.sort(key=lambda paths: paths[0])
    conflicts.sort(key=lambda paths: paths[0])

    bits = hashes_to_bits(table["phash"].tolist())
    # Identical bytes decode to identical pixels and hashes, so exact duplicates share a cluster.
    clusters = cluster_hashes(bits, threshold)

    members: dict[int, list[str]] = {}
    for path, cluster in zip(table["path"], clusters):
        members.setdefault(int(cluster), []).append(path)
    near = sorted((paths for paths in members.values() if len(paths) > 1), key=lambda p: (-len(p), p[0]))
    return AuditReport(
        scan=scan,
        clusters=clusters,
        exact_duplicate_groups=exact_groups,
        label_conflicts=conflicts,
        near_duplicate_clusters=near,
        threshold=threshold,
    )


def hashes_to_bits(hex_hashes: list[str]) -> np.ndarray:
    """Turn hex perceptual hashes into a boolean matrix, one row of bits per hash."""
    if not hex_hashes:
        return np.zeros((0, HASH_BITS), dtype=bool)
    raw = np.frombuffer(bytes.fromhex("".join(hex_hashes)), dtype=np.uint8)
    return np.unpackbits(raw).reshape(len(hex_hashes), -1).astype(bool)


def cluster_hashes(bits: np.ndarray, threshold: int) -> np.ndarray:
    """Single-linkage clusters of bit rows within ``threshold`` Hamming distance.

    Returns:
        One integer cluster id per row, numbered from 0 in order of first appearance.
    """
    count, width = bits.shape
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    # Identical hashes are collapsed first; only distinct hashes are compared.
    unique, inverse = np.unique(bits, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    words = _pack_words(unique)
    left_parts: list[np.ndarray] = []
    right_parts: list[np.ndarray] = []
    for columns in _balanced_blocks(unique, min(threshold + 1, width)):
        keys = unique[:, columns] @ (1 << np.arange(len(columns), dtype=np.int64))
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends):
            if end - start < 2:
                continue
            rows = order[start:end]
            first, second = np.triu_indices(len(rows), 1)
            left, right = rows[first], rows[second]
            distance = np.bitwise_count(words[left] ^ words[right]).sum(axis=1)
            close = distance <= threshold
            left_parts.append(left[close])
            right_parts.append(right[close])
    left = np.concatenate(left_parts) if left_parts else np.zeros(0, dtype=np.int64)
    right = np.concatenate(right_parts) if right_parts else np.zeros(0, dtype=np.int64)
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(left), dtype=np.int8), (left, right)), shape=(len(unique), len(unique))
    )
    _, unique_labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return _renumber(unique_labels[inverse])


def _balanced_blocks(bits: np.ndarray, blocks: int) -> list[np.ndarray]:
    """Cut the bit columns into ``blocks`` groups of similar selectivity.

    Perceptual-hash bits of CT slices are far from fair coins (on the real sample one bit is set
    in every image, another in 1%), and a block of nearly constant bits puts almost every image
    into one bucket. Dealing the columns out from the most to the least informative, in a snake
    order, gives every block a share of informative bits. Any partition keeps the pigeonhole
    guarantee, so this changes the cost, never the result.
    """
    ones = bits.mean(axis=0)
    order = np.argsort(-np.minimum(ones, 1.0 - ones), kind="stable")
    groups: list[list[int]] = [[] for _ in range(blocks)]
    for position, column in enumerate(order):
        lap, offset = divmod(position, blocks)
        groups[offset if lap % 2 == 0 else blocks - 1 - offset].append(int(column))
    return [np.array(sorted(group), dtype=np.int64) for group in groups if group]


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Pack bit rows into 64-bit words for fast XOR and popcount."""
    packed = np.packbits(bits, axis=1)
    padding = (-packed.shape[1]) % 8
    packed = np.pad(packed, ((0, 0), (0, padding)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, 2, ... in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _short(path: str, scan: discover.DatasetScan) -> str:
    """A path relative to the dataset root, for the terminal report."""
    try:
        return str(Path(path).relative_to(scan.root))
    except ValueError:
        return path
