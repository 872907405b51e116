"""Bad input: the hostile-scan corpus through the scan reader, and broken dataset folders.

tests/data/test_scan.py pins the reader's behaviour format by format; here every entry of the
shared corpus (tests/reliability/corpus.py) is checked for what a user sees: a one-line
message that names the file and the problem, quickly, with nothing written anywhere; or, for a
format that is legitimately supported, a sensible image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom.pixels
import pytest
from PIL import Image, ImageFile

from kidney_lab.cli import main
from kidney_lab.data import discover
from kidney_lab.data import scan
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.errors import DatasetError, ScanReadError
from tests.reliability.corpus import (
    BOMB,
    HOSTILE_NAME,
    CorpusEntry,
    bad_input_corpus,
    entry_id,
    slice_pixels,
    write_corpus,
)

CORPUS = bad_input_corpus()
REFUSED = [entry for entry in CORPUS if entry.expected is not None]
READABLE = [entry for entry in CORPUS if entry.expected is None]
REPOSITORY = Path(__file__).resolve().parents[2]
# The inputs the issue names; the corpus must keep holding one of each.
REQUIRED = {
    "empty.png", "cut-data.jpg", "cut-data.png", "notes.png", "login.dcm", "pixel.png", "bomb.png",
    "16-bit.png", "cmyk.jpg", "palette-transparency.png", "animated.gif", "pages.tif",
    "no-pixels.dcm", "unknown-syntax.dcm", "monochrome1.dcm", "multi-frame.dcm", HOSTILE_NAME,
    "slices.jpg", "nan.tif", "infinity.tif",
}


def test_the_corpus_holds_every_required_kind_once() -> None:
    names = [entry.name for entry in CORPUS]
    assert len(names) >= 25 and len(set(names)) == len(names)
    assert REQUIRED <= set(names)
    assert len({entry_id(entry) for entry in CORPUS}) == len(CORPUS)
    assert all(entry.expected is None or entry.expected.strip() for entry in CORPUS)


def _read_quietly(entry: CorpusEntry) -> scan.Scan:
    with warnings.catch_warnings():
        # Pillow warns about the EXIF of a cut TIFF before the reader refuses it.
        warnings.simplefilter("ignore", UserWarning)
        return scan.read_scan(entry.data, name=entry.name)


@pytest.mark.parametrize("entry", REFUSED, ids=entry_id)
def test_a_broken_or_hostile_scan_is_refused_with_its_reason(
    entry: CorpusEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    with pytest.raises(ScanReadError) as caught:
        _read_quietly(entry)
    message = str(caught.value)
    assert entry.expected in message
    assert entry.name in message, "the message names the file"
    assert "\n" not in message and len(message) < 400
    assert " object at 0x" not in message, "no Python object reprs in what a user reads"
    assert time.perf_counter() - started < 2.0
    assert list(tmp_path.iterdir()) == []


def _close_to_slice(result: scan.Scan, tolerance: float) -> None:
    """Channel 0 differs from the slice by at most ``tolerance`` grey levels on average."""
    expected = slice_pixels()[: result.image.shape[0], : result.image.shape[1]].astype(int)
    assert np.abs(result.to_uint8()[..., 0].astype(int) - expected).mean() <= tolerance


def _check_sixteen_bit(result: scan.Scan) -> None:
    assert result.metadata["bit_depth"] == 16
    assert result.image.min() == 0.0 and result.image.max() == 1.0
    assert any("stretched" in note for note in result.metadata["notes"])


def _check_constant(result: scan.Scan) -> None:
    assert result.image.max() == 0.0
    assert any("constant image" in note for note in result.metadata["notes"])


def _check_thirty_two_bit(result: scan.Scan) -> None:
    assert result.metadata["mode"] == "I"
    assert result.image.min() == 0.0 and result.image.max() == 1.0
    # The stretch keeps the order of grey levels.
    pixels = slice_pixels().ravel()
    assert np.all(np.diff(result.image[..., 0].ravel()[np.argsort(pixels, kind="stable")]) >= 0)


def _check_one_bit(result: scan.Scan) -> None:
    assert set(np.unique(result.image).tolist()) == {0.0, 1.0}
    assert np.array_equal(result.image[..., 0] == 1.0, slice_pixels() > 127)


def _check_cmyk(result: scan.Scan) -> None:
    assert "CMYK image converted to RGB" in result.metadata["notes"]
    _close_to_slice(result, 12)


def _check_palette(result: scan.Scan) -> None:
    notes = result.metadata["notes"]
    assert "palette image converted to RGB" in notes and "alpha channel dropped" in notes
    _close_to_slice(result, 16)


def _check_exact(result: scan.Scan) -> None:
    _close_to_slice(result, 0.0)


def _check_jpeg(result: scan.Scan) -> None:
    _close_to_slice(result, 6)


def _check_pages(result: scan.Scan) -> None:
    # Page 0 of three flat pages at grey 10, 120 and 230; page 2 is read on request.
    assert result.metadata["frames"] == 3 and result.metadata["frame"] == 0
    assert result.to_uint8()[0, 0, 0] == 10


def _check_monochrome1(result: scan.Scan) -> None:
    # HU -1000 (air) and +1000 (bone) at (0, 0) and (0, 1): MONOCHROME1 shows bone bright.
    assert result.metadata["photometric"] == "MONOCHROME1" and result.metadata["inverted"] is True
    assert result.image[0, 0, 0] == 1.0 and result.image[0, 1, 0] == 0.0


def _check_multi_frame(result: scan.Scan) -> None:
    # Frame 0 is fat (-160 HU), the bottom of the default kidney window (W400 L40).
    assert result.metadata["frames"] == 3 and result.metadata["window"] == "kidney"
    assert result.image.max() == 0.0


READABLE_CHECKS: dict[str, Callable[[scan.Scan], None]] = {
    "16-bit.png": _check_sixteen_bit,
    "constant-16-bit.png": _check_constant,
    "32-bit-integer.tif": _check_thirty_two_bit,
    "one-bit.png": _check_one_bit,
    "cmyk.jpg": _check_cmyk,
    "palette-transparency.png": _check_palette,
    "progressive.jpg": _check_jpeg,
    "no-end-chunk.png": _check_exact,
    "smallest-16x16.png": _check_exact,
    "animated.gif": _check_pages,
    "pages.tif": _check_pages,
    "monochrome1.dcm": _check_monochrome1,
    "multi-frame.dcm": _check_multi_frame,
    HOSTILE_NAME: _check_exact,
}


def test_every_readable_entry_has_a_check() -> None:
    assert set(READABLE_CHECKS) == {entry.name for entry in READABLE}


@pytest.mark.parametrize("entry", READABLE, ids=entry_id)
def test_a_supported_unusual_scan_is_read_sensibly(
    entry: CorpusEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _read_quietly(entry)
    image = result.image
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= scan.MIN_SIDE
    assert 0.0 <= image.min() and image.max() <= 1.0 and not image.flags.writeable
    json.dumps(result.metadata)
    READABLE_CHECKS[entry.name](result)
    # The upload's name (path separators and all) is only ever a label.
    assert list(tmp_path.iterdir()) == []


def test_the_other_pages_of_multi_page_files_are_reachable() -> None:
    entries = {entry.name: entry for entry in READABLE}
    for name in ("animated.gif", "pages.tif"):
        assert scan.read_scan(entries[name].data, frame=2).to_uint8()[0, 0, 0] == 230
    last = scan.read_scan(entries["multi-frame.dcm"].data, frame=2)
    assert last.image.min() == 1.0  # 240 HU is the top of the kidney window.


def test_the_pixel_limit_refuses_bomb_headers_before_anything_is_decoded(monkeypatch) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    bombs = [entry for entry in REFUSED if entry.expected == BOMB]
    assert len(bombs) >= 6
    assert scan.MAX_PIXELS == 40_000_000
    tracemalloc.start()
    try:
        for entry in bombs:
            with pytest.raises(ScanReadError, match="decompression bomb protection"):
                scan.read_scan(entry.data, name=entry.name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 900 million declared pixels would be 10.8 GB as float32 RGB; nothing near that is made.
    assert peak < 16 * 1024 * 1024


def test_every_pixel_limit_message_names_the_one_limit() -> None:
    """Pillow refuses the largest images before kidney_lab's check; the message still says
    kidney_lab's limit (scan.MAX_PIXELS), never Pillow's own."""
    for entry in REFUSED:
        if entry.expected != BOMB or entry.name == "text-bomb.png":
            continue
        with pytest.raises(ScanReadError) as raised:
            scan.read_scan(entry.data, name=entry.name)
        message = str(raised.value)
        assert f"over the limit of {scan.MAX_PIXELS:,}" in message, message
        assert f"{Image.MAX_IMAGE_PIXELS}" not in message and f"{2 * Image.MAX_IMAGE_PIXELS}" not in message, message


# Dataset folders ------------------------------------------------------------------------------


def _audit(folder: Path, tmp_path: Path, capsys) -> tuple[int, str, str]:
    code = main(["data", "audit", str(folder), "--workspace", str(tmp_path / "workspace"),
                 "--json", str(tmp_path / "audit.json")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err
    assert "Traceback" not in err


def test_symbolic_link_loops_are_not_followed(make_dataset_folder, tmp_path: Path, capsys) -> None:
    root = make_dataset_folder(per_class=2)
    (root / "Cyst" / "again").symlink_to(root / "Cyst", target_is_directory=True)
    (root / "Normal" / "dataset").symlink_to(root, target_is_directory=True)
    (root / "Stone" / "self.png").symlink_to(root / "Stone" / "self.png")
    started = time.perf_counter()
    result = discover.scan_dataset(root)
    assert time.perf_counter() - started < 30
    assert len(result.table) == 2 * len(CLASS_NAMES)
    (skipped,) = result.skipped.to_dict("records")
    assert skipped["path"].endswith("self.png") and "cannot be read" in skipped["reason"]

    code, out, err = _audit(root, tmp_path, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["images"] == 2 * len(CLASS_NAMES)
    assert [item["path"] for item in report["skipped"]] == [skipped["path"]]


def test_a_dataset_folder_that_is_a_link_loop_is_refused(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(DatasetError, match="does not exist"):
        discover.scan_dataset(loop)


def test_the_audit_command_refuses_a_class_folder_that_is_a_file(make_dataset_folder, tmp_path: Path, capsys) -> None:
    # tests/data/test_discover.py covers scan_dataset itself (and an unreadable file).
    root = make_dataset_folder(per_class=2)
    shutil.rmtree(root / "Stone")
    (root / "Stone").write_text("not a folder")
    code, _, err = _audit(root, tmp_path, capsys)
    _assert_one_line_error(code, err, "no Stone folder")
    assert not (tmp_path / "audit.json").exists()


def test_a_dataset_without_images_is_refused(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True)
    (root / "Cyst" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="No usable images for class Cyst, Normal, Stone, Tumor"):
        discover.scan_dataset(root)
    code, _, err = _audit(root, tmp_path, capsys)
    _assert_one_line_error(code, err, "No usable images for class Cyst, Normal, Stone, Tumor")

    # The real command: a separate process, one line on stderr, exit status 1.
    process = subprocess.run(
        [sys.executable, "-m", "kidney_lab", "data", "audit", str(root), "--workspace",
         str(tmp_path / "workspace")],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
    )
    _assert_one_line_error(process.returncode, process.stderr, "No usable images for class")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_the_corpus_inside_a_dataset_is_skipped_file_by_file(make_dataset_folder) -> None:
    root = make_dataset_folder(per_class=2)
    written = write_corpus(root / "Stone" / "uploads")
    result = discover.scan_dataset(root)
    kept = set(result.table["path"])
    reasons = dict(zip(result.skipped["path"], result.skipped["reason"]))
    for path, entry in written:
        if path.suffix.lower() not in discover.IMAGE_EXTENSIONS:
            assert str(path) in result.ignored
        elif entry.expected is None:
            assert str(path) in kept, f"{entry.name} is readable but was skipped: {reasons.get(str(path))}"
        else:
            assert reasons.get(str(path)), f"{entry.name} was not skipped with a reason"
