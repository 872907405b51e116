"""Finding a dataset in the Kaggle layout and reading every image once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kidney_lab.data.classes import CLASS_NAMES, KAGGLE_FOLDER_NAME
from kidney_lab.data.discover import TABLE_COLUMNS, find_root, scan_dataset
from kidney_lab.errors import DatasetError
from tests.helpers import encode, textured


def test_root_at_class_parent(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    scan = scan_dataset(root)
    assert scan.root == root.resolve()
    assert scan.per_class == {name: 2 for name in CLASS_NAMES}
    assert list(scan.table.columns) == list(TABLE_COLUMNS)


def test_root_found_from_folders_above(tmp_path, make_dataset_folder):
    root = make_dataset_folder(per_class=1, root=tmp_path / "downloads" / "archive")
    (tmp_path / "downloads" / "archive" / "kidneyData.csv").write_text("image,target\n")
    found, classes = find_root(tmp_path)
    assert found == root.resolve()
    assert set(classes) == set(CLASS_NAMES)


def test_kaggle_folder_preferred_over_sibling_masks(tmp_path, make_dataset_folder):
    make_dataset_folder(per_class=1)
    for label in CLASS_NAMES:
        (tmp_path / "masks" / label).mkdir(parents=True)
    found, _ = find_root(tmp_path)
    assert found.name == KAGGLE_FOLDER_NAME


def test_two_datasets_at_one_depth_are_ambiguous(tmp_path, make_dataset_folder):
    make_dataset_folder(per_class=1, root=tmp_path / "a")
    make_dataset_folder(per_class=1, root=tmp_path / "b")
    with pytest.raises(DatasetError, match="several datasets"):
        find_root(tmp_path)


def test_class_folders_match_case_insensitively(tmp_path):
    for label in ("cyst", "NORMAL", "Stone", "tUmOr"):
        folder = tmp_path / label
        folder.mkdir()
        (folder / "a.png").write_bytes(encode(textured(len(label))))
    scan = scan_dataset(tmp_path)
    assert scan.per_class == {name: 1 for name in CLASS_NAMES}
    assert set(scan.table["label"]) == set(CLASS_NAMES)


def test_stray_files_are_ignored_and_counted(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    (root / "kidneyData.csv").write_text("x")
    (root / "Cyst" / ".DS_Store").write_bytes(b"\0\0")
    (root / "Cyst" / "notes.txt").write_text("hello")
    scan = scan_dataset(root)
    assert len(scan.ignored) == 3
    assert scan.summary()["ignored_files"] == 3
    assert len(scan.table) == 4


@pytest.mark.parametrize(
    ("mode", "image_format", "suffix", "size"),
    [
        ("L", "JPEG", ".jpg", (512, 512)),
        ("RGB", "JPEG", ".jpeg", (1400, 1100)),
        ("RGBA", "PNG", ".png", (64, 80)),
        ("LA", "PNG", ".png", (64, 64)),
        ("I;16", "PNG", ".png", (64, 64)),
        ("RGB", "BMP", ".bmp", (40, 30)),
        ("L", "TIFF", ".tif", (64, 64)),
        ("RGB", "TIFF", ".tiff", (64, 64)),
    ],
)
def test_any_format_mode_and_size(make_dataset_folder, mode, image_format, suffix, size):
    root = make_dataset_folder(per_class=1)
    gray = textured(99, (size[1], size[0]))
    channels = {"L": gray, "I;16": gray.astype(np.uint16) * 200, "RGB": np.dstack([gray] * 3),
                "RGBA": np.dstack([gray] * 3 + [np.full_like(gray, 255)]), "LA": np.dstack([gray, gray])}
    (root / "Stone" / f"extra{suffix}").write_bytes(encode(channels[mode], image_format))
    scan = scan_dataset(root)
    row = scan.table[scan.table["path"].str.endswith(f"extra{suffix}")].iloc[0]
    assert (row["width"], row["height"]) == size
    assert row["format"] == image_format
    assert row["label"] == "Stone"
    assert scan.skipped.empty


def test_summary_and_table_values(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    scan = scan_dataset(root)
    summary = scan.summary()
    assert summary["images"] == 8
    assert summary["sizes"] == [{"width": 48, "height": 48, "images": 8}]
    first = scan.table.iloc[0]
    assert first["bytes"] == Path(first["path"]).stat().st_size
    assert len(first["md5"]) == 32 and len(first["phash"]) == 64


def test_table_in_natural_order(make_dataset_folder):
    root = make_dataset_folder(per_class=11)
    names = [Path(path).name for path in scan_dataset(root).table.query("label == 'Cyst'")["path"]]
    assert names[:3] == ["Cyst- (1).png", "Cyst- (2).png", "Cyst- (3).png"]
    assert names[-1] == "Cyst- (11).png"


def test_fingerprint_is_stable_and_follows_content(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    first = scan_dataset(root).fingerprint
    assert scan_dataset(root).fingerprint == first
    (root / "Tumor" / "Tumor- (1).png").write_bytes(encode(textured(12345)))
    assert scan_dataset(root).fingerprint != first


def test_bad_files_are_skipped_with_reasons(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    good = encode(textured(7, (64, 64)), "JPEG")
    (root / "Cyst" / "empty.jpg").write_bytes(b"")
    (root / "Cyst" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "Normal" / "text.jpg").write_text("this is not an image\n" * 10)
    (root / "Normal" / "page.png").write_text("<html><body>404</body></html>")
    (root / "Stone" / "tiny.png").write_bytes(encode(np.zeros((1, 1), np.uint8)))
    scan = scan_dataset(root)
    reasons = dict(zip(scan.skipped["path"].map(lambda path: Path(path).name), scan.skipped["reason"]))
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in reasons["truncated.jpg"]
    assert "text or HTML file" in reasons["text.jpg"]
    assert "text or HTML" in reasons["page.png"]
    assert "too small" in reasons["tiny.png"]
    assert len(scan.table) == 8
    assert not scan.table["path"].str.contains("empty|truncated|text|page|tiny").any()


def test_nonexistent_root():
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset("/no/such/folder")


def test_root_that_is_a_file(tmp_path):
    file = tmp_path / "data.zip"
    file.write_bytes(b"PK")
    with pytest.raises(DatasetError, match="is a file"):
        scan_dataset(file)


def test_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="No class folders"):
        scan_dataset(tmp_path)


def test_missing_class_folder(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    for file in (root / "Stone").iterdir():
        file.unlink()
    (root / "Stone").rmdir()
    with pytest.raises(DatasetError, match="no Stone folder"):
        scan_dataset(root)


def test_class_folder_that_is_a_file(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    for file in (root / "Tumor").iterdir():
        file.unlink()
    (root / "Tumor").rmdir()
    (root / "Tumor").write_text("not a folder")
    with pytest.raises(DatasetError, match="no Tumor folder"):
        scan_dataset(root)


def test_empty_class_folder(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    (root / "Normal" / "Normal- (1).png").unlink()
    with pytest.raises(DatasetError, match="No usable images for class Normal"):
        scan_dataset(root)


def test_class_of_only_corrupt_files(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    (root / "Cyst" / "Cyst- (1).png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="No usable images for class Cyst"):
        scan_dataset(root)


def test_duplicate_class_folders(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    if (root / "cyst").exists():
        pytest.skip("case-insensitive file system: Cyst and cyst are one folder")
    (root / "cyst").mkdir()
    with pytest.raises(DatasetError, match="two folders for class Cyst"):
        scan_dataset(root)


def test_symlink_loop_does_not_hang(make_dataset_folder):
    root = make_dataset_folder(per_class=1)
    os.symlink(root, root / "Cyst" / "loop")
    scan = scan_dataset(root)
    assert scan.per_class["Cyst"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files whatever their permissions")
def test_unreadable_file_is_skipped(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    locked = root / "Cyst" / "Cyst- (1).png"
    locked.chmod(0)
    try:
        scan = scan_dataset(root)
    finally:
        locked.chmod(0o644)
    assert "cannot be read" in scan.skipped["reason"].iloc[0]


def test_progress_is_reported(make_dataset_folder):
    root = make_dataset_folder(per_class=2)
    calls: list[tuple[int, int]] = []
    scan_dataset(root, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (8, 8)
    assert len(calls) == 8


@pytest.mark.realdata
def test_real_sample(real_sample):
    scan = scan_dataset(real_sample)
    assert scan.per_class == {name: 500 for name in CLASS_NAMES}
    assert scan.skipped.empty
    assert set(scan.table["mode"]) == {"L"}


def test_cache_skips_unchanged_files_and_rereads_changed_ones(make_dataset_folder, tmp_path, monkeypatch):
    import kidney_lab.data.discover as discover

    root = make_dataset_folder(per_class=2)
    cache = tmp_path / "cache"
    first = scan_dataset(root, cache=cache)
    reads: list[Path] = []
    original = discover.inspect_image
    monkeypatch.setattr(discover, "inspect_image", lambda path: reads.append(path) or original(path))
    second = scan_dataset(root, cache=cache)
    assert reads == []
    assert second.table.equals(first.table)
    changed = root / "Cyst" / "Cyst- (1).png"
    changed.write_bytes(encode(textured(4242, (50, 50))))
    third = scan_dataset(root, cache=cache)
    assert reads == [changed]
    assert third.fingerprint != first.fingerprint
    assert third.table.set_index("path").at[str(changed), "width"] == 50


def test_cache_keeps_skip_reasons_and_survives_damage(make_dataset_folder, tmp_path):
    root = make_dataset_folder(per_class=1)
    (root / "Cyst" / "empty.png").write_bytes(b"")
    cache = tmp_path / "cache"
    scan_dataset(root, cache=cache)
    again = scan_dataset(root, cache=cache)
    assert again.skipped["reason"].tolist() == ["empty file (0 bytes)"]
    for file in cache.iterdir():
        file.write_text("garbage,\n\x00\x01")
    assert len(scan_dataset(root, cache=cache).table) == 4


def test_files_the_scan_reader_rejects_are_skipped(make_dataset_folder):
    # Training reads TIFFs through the scan reader; what it would reject must never get that far.
    root = make_dataset_folder(per_class=1)
    pixels = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    pixels[3, 3] = np.nan
    (root / "Tumor" / "nan.tif").write_bytes(encode(pixels, "TIFF"))
    (root / "Tumor" / "fine.tif").write_bytes(encode(np.nan_to_num(pixels), "TIFF"))
    scan = scan_dataset(root)
    assert scan.skipped["path"].str.endswith("nan.tif").all()
    assert "NaN" in scan.skipped["reason"].iloc[0]
    assert scan.table["path"].str.endswith("fine.tif").any()
