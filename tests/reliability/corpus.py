"""A corpus of hostile and broken scans, generated in memory (nothing binary is committed).

Every consumer of an upload (the scan reader, ``python -m kidney_lab explain``, the Compare
page) must answer each entry the same way: either refuse it with a message that says what is
wrong, or read it as a sensible image when the format is legitimately supported. The corpus is
one list so that each of them is tested against the same inputs:

    for name, data, expected in bad_input_corpus():
        ...  # expected is a fragment of the refusal message, or None when the file is readable

``name`` is the file name the user would upload (one entry carries path separators and
non-ASCII letters on purpose; it must never become a path). :func:`write_corpus` stores every
entry under a harmless numbered name for the commands that read files from disk.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from tests.data.test_scan import big_png_header, dicom_bytes, encode, zip_bytes
from tests.helpers import textured

# What each kind of refusal says (fragments of kidney_lab.data.scan's messages).
EMPTY = "the file is empty"
TRUNCATED = "is truncated or corrupt"
TEXT = "is a text/HTML file, not an image"
UNSUPPORTED = "is not an image in a supported format"
BOMB = "decompression bomb protection"
TOO_SMALL = "a CT slice needs at least 16x16"
NOT_FINITE = "NaN or infinite pixel values"

# A 30000 x 30000 image declares 900 million pixels, far over kidney_lab.data.scan.MAX_PIXELS.
BOMB_SIDE = 30_000
# The name with path separators, a parent reference and non-ASCII letters.
HOSTILE_NAME = "../../etc/ниркa (1)\\срез ☢.png"


class CorpusEntry(NamedTuple):
    """One input: the uploaded file name, its bytes, and the expected refusal (None: readable)."""

    name: str
    data: bytes
    expected: str | None


def slice_pixels(size: int = 64, seed: int = 7) -> np.ndarray:
    """An 8-bit grey image with coarse structure, the stand-in for a CT slice."""
    return textured(seed, (size, size))


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with_text_bomb() -> bytes:
    """A valid PNG with a zTXt chunk that inflates to 4 MiB, over Pillow's 1 MiB text limit."""
    png = encode(slice_pixels(), "PNG")
    bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (4 * 1024 * 1024), 9))
    # The signature (8 bytes) and IHDR (25 bytes) come first; any ancillary chunk may follow.
    return png[:33] + bomb + png[33:]


def _png_with_bad_checksum() -> bytes:
    """A PNG whose compressed pixel data has one byte flipped."""
    data = bytearray(encode(slice_pixels(), "PNG"))
    data[data.find(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


def _jpeg_bomb() -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim 30000 x 30000."""
    data = bytearray(encode(slice_pixels(), "JPEG"))
    start = data.find(b"\xff\xc0")
    data[start + 5:start + 9] = struct.pack(">HH", BOMB_SIDE, BOMB_SIDE)
    return bytes(data)


def _gif_bomb() -> bytes:
    """A real small GIF whose logical screen is patched to 30000 x 30000."""
    data = bytearray(encode(slice_pixels(), "GIF"))
    data[6:10] = struct.pack("<HH", BOMB_SIDE, BOMB_SIDE)
    return bytes(data)


def _tiff_header(width: int, height: int) -> bytes:
    """A little-endian TIFF of one 8-bit grey strip that declares ``width`` x ``height``."""
    entries = [  # (tag, type: 3 SHORT or 4 LONG, value)
        (256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
        (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, 16),
    ]
    directory = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4
        else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + bytes(16)


def _pages(image_format: str, count: int = 3) -> bytes:
    """A multi-page file whose pages are flat grey at 10, 120, 230, ..."""
    pages = [Image.fromarray(np.full((32, 32), 10 + 110 * index, np.uint8)) for index in range(count)]
    if image_format == "GIF":
        pages = [page.convert("P") for page in pages]
    buffer = io.BytesIO()
    pages[0].save(buffer, format=image_format, save_all=True, append_images=pages[1:], duration=40)
    return buffer.getvalue()


def _float_tiff(special: float) -> bytes:
    """A 32-bit float TIFF with ``special`` (NaN or an infinity) in a third of its pixels."""
    pixels = slice_pixels().astype(np.float32)
    pixels[::3] = special
    return encode(pixels, "TIFF")


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(np.stack([slice_pixels()] * 3, axis=-1)).quantize(colors=16)
    return encode(image, "PNG", transparency=0)


def _dicom_with_unknown_syntax() -> bytes:
    """A DICOM file whose transfer syntax UID (same length, so lengths stay valid) is unknown."""
    data = dicom_bytes()
    explicit_little_endian = b"1.2.840.10008.1.2.1\x00"
    assert data.count(explicit_little_endian) == 1
    return data.replace(explicit_little_endian, b"1.2.826.0.1.99999.7\x00")


def _hu_frames() -> np.ndarray:
    """Three 20 x 24 frames in Hounsfield units: fat, kidney, contrast-enhanced vessel."""
    return np.stack([np.full((20, 24), value, np.int16) for value in (-160, 40, 240)])


def bad_input_corpus() -> list[CorpusEntry]:
    """Every hostile or broken input, with the refusal each must get (None: it is readable).

    Returns:
        At least 25 entries with unique names; built fresh on each call (about 0.1 s).
    """
    pixels = slice_pixels()
    png, jpeg = encode(pixels, "PNG"), encode(pixels, "JPEG", quality=90)
    tiff = encode(pixels, "TIFF", compression="tiff_lzw")
    text = b"Patient notes: left kidney 11 cm, no stones seen.\n" * 20
    html = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Login</body></html>"
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>'
    sixteen_bit = (pixels.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    refused = [
        CorpusEntry("empty.png", b"", EMPTY),
        CorpusEntry("cut-header.jpg", jpeg[:300], TRUNCATED),
        CorpusEntry("cut-data.jpg", jpeg[:-300], TRUNCATED),
        CorpusEntry("cut-data.png", png[:-60], TRUNCATED),
        CorpusEntry("signature-only.png", png[:8], TRUNCATED),
        CorpusEntry("marker-only.jpg", jpeg[:3], TRUNCATED),
        CorpusEntry("cut.tif", tiff[:-300], TRUNCATED),
        CorpusEntry("cut.gif", encode(pixels, "GIF")[:-100], TRUNCATED),
        CorpusEntry("cut.bmp", encode(pixels, "BMP")[:-500], TRUNCATED),
        CorpusEntry("bad-checksum.png", _png_with_bad_checksum(), TRUNCATED),
        CorpusEntry("notes.png", text, TEXT),
        CorpusEntry("login.dcm", html, TEXT),
        CorpusEntry("drawing.png", svg, TEXT),
        CorpusEntry("slices.jpg", zip_bytes(), "is a ZIP archive, not an image; unzip it"),
        CorpusEntry("report.png", b"%PDF-1.7\n" + bytes(range(256)), "is a PDF document, not an image"),
        CorpusEntry("volume.png", gzip.compress(bytes(4096)), "is a gzip-compressed file"),
        CorpusEntry("photo.png", encode(pixels, "WEBP"), UNSUPPORTED),
        CorpusEntry("icon.png", encode(Image.fromarray(pixels).resize((32, 32)), "ICO"), UNSUPPORTED),
        CorpusEntry("program.png", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, UNSUPPORTED),
        CorpusEntry("notes-utf16.png", text.decode("ascii").encode("utf-16"), UNSUPPORTED),
        CorpusEntry("noise.dcm", np.random.default_rng(0).bytes(2048), "is not a DICOM file"),
        CorpusEntry("pixel.png", encode(np.zeros((1, 1), np.uint8), "PNG"), "is 1x1 pixels; " + TOO_SMALL),
        CorpusEntry("line.tif", _tiff_header(64, 1), "is 64x1 pixels; " + TOO_SMALL),
        CorpusEntry("empty-frame.dcm", dicom_bytes(Rows=0, Columns=0), "is 0x0 pixels; " + TOO_SMALL),
        CorpusEntry("bomb.png", big_png_header(BOMB_SIDE, BOMB_SIDE), BOMB),
        CorpusEntry("bomb.jpg", _jpeg_bomb(), BOMB),
        CorpusEntry("bomb.gif", _gif_bomb(), BOMB),
        CorpusEntry("bomb.tif", _tiff_header(BOMB_SIDE, BOMB_SIDE), BOMB),
        CorpusEntry("bomb.dcm", dicom_bytes(Rows=BOMB_SIDE, Columns=BOMB_SIDE), BOMB),
        CorpusEntry("frames-bomb.dcm", dicom_bytes(NumberOfFrames=1000, Rows=256, Columns=256), BOMB),
        CorpusEntry("text-bomb.png", _png_with_text_bomb(), BOMB),
        CorpusEntry("nan.tif", _float_tiff(np.nan), NOT_FINITE),
        CorpusEntry("infinity.tif", _float_tiff(np.inf), NOT_FINITE),
        CorpusEntry("no-pixels.dcm", dicom_bytes(PixelData=None), "DICOM file has no pixel data"),
        CorpusEntry("unknown-syntax.dcm", _dicom_with_unknown_syntax(), "unknown transfer syntax"),
        CorpusEntry("short-pixels.dcm", dicom_bytes(PixelData=b"\x00" * 100), "could not decode the pixel data"),
    ]
    readable = [
        CorpusEntry("16-bit.png", encode(sixteen_bit, "PNG"), None),
        CorpusEntry("constant-16-bit.png", encode(np.full((32, 32), 700, np.uint16), "PNG"), None),
        CorpusEntry("32-bit-integer.tif", encode(pixels.astype(np.int32) * 1000 - 5000, "TIFF"), None),
        CorpusEntry("one-bit.png", encode(pixels > 127, "PNG"), None),
        CorpusEntry("cmyk.jpg", encode(Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=95), None),
        CorpusEntry("palette-transparency.png", _palette_with_transparency(), None),
        CorpusEntry("progressive.jpg", encode(pixels, "JPEG", progressive=True), None),
        CorpusEntry("no-end-chunk.png", png[:-12], None),
        CorpusEntry("smallest-16x16.png", encode(pixels[:16, :16], "PNG"), None),
        CorpusEntry("animated.gif", _pages("GIF"), None),
        CorpusEntry("pages.tif", _pages("TIFF"), None),
        CorpusEntry("monochrome1.dcm", dicom_bytes(PhotometricInterpretation="MONOCHROME1"), None),
        CorpusEntry("multi-frame.dcm", dicom_bytes(_hu_frames()), None),
        CorpusEntry(HOSTILE_NAME, png, None),
    ]
    return refused + readable


def entry_id(entry: CorpusEntry) -> str:
    """A short ASCII test id for an entry (its name, with anything unusual replaced)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", entry.name).strip("_.") or "entry"


def write_corpus(folder: str | Path) -> list[tuple[Path, CorpusEntry]]:
    """Write every entry to ``folder`` as ``NN-<id><suffix>`` and return (path, entry) pairs.

    The numbered names keep the entries' suffixes (``.dcm`` matters to the reader) while never
    using an entry's own name as a path.
    """
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    written = []
    for number, entry in enumerate(bad_input_corpus()):
        suffix = Path(entry.name.replace("\\", "/")).suffix
        path = base / f"{number:02d}-{Path(entry_id(entry)).stem}{suffix}"
        path.write_bytes(entry.data)
        written.append((path, entry))
    return written
