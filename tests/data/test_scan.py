"""Tests for kidney_lab.data.scan: every input is generated here, nothing binary is committed."""

from __future__ import annotations

import io
import json
import struct
import time
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from kidney_lab.data import scan
from kidney_lab.errors import ScanReadError

GRADIENT = (np.arange(32 * 24).reshape(24, 32) % 256).astype(np.uint8)
RGB = np.stack([GRADIENT, 255 - GRADIENT, np.full_like(GRADIENT, 7)], axis=-1)


def encode(image: Image.Image | np.ndarray, format: str, **options) -> bytes:
    """Return ``image`` saved in ``format`` as bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def grey(result: scan.Scan) -> np.ndarray:
    """Return channel 0 after checking the three channels are equal."""
    assert np.array_equal(result.image[..., 0], result.image[..., 1])
    assert np.array_equal(result.image[..., 0], result.image[..., 2])
    return result.image[..., 0]


def check_contract(result: scan.Scan) -> None:
    """Shape, dtype, range and JSON-serialisable metadata of any result."""
    assert result.image.dtype == np.float32
    assert result.image.ndim == 3 and result.image.shape[2] == 3
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert not result.image.flags.writeable
    json.dumps(result.metadata)
    assert result.metadata["width"] == result.image.shape[1]
    assert result.metadata["height"] == result.image.shape[0]


# Images through Pillow -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt", "mode"),
    [
        (encode(GRADIENT, "PNG"), "PNG", "L"),
        (encode(RGB, "PNG"), "PNG", "RGB"),
        (encode(GRADIENT, "BMP"), "BMP", "L"),
        (encode(GRADIENT, "TIFF"), "TIFF", "L"),
    ],
    ids=["png-L", "png-RGB", "bmp-L", "tiff-L"],
)
def test_lossless_8_bit_images_are_divided_by_255(data: bytes, fmt: str, mode: str) -> None:
    result = scan.read_scan(data)
    check_contract(result)
    expected = RGB if mode == "RGB" else np.repeat(GRADIENT[..., None], 3, axis=2)
    np.testing.assert_allclose(result.image, expected / 255.0, atol=1e-6)
    assert np.array_equal(result.to_uint8(), expected)
    assert result.metadata | {"notes": []} == {
        "format": fmt, "width": 32, "height": 24, "mode": mode, "bit_depth": 8,
        "frames": 1, "frame": 0, "notes": [],
    }


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(mode: str) -> None:
    colour = RGB if mode == "RGBA" else GRADIENT[..., None]
    pixels = np.concatenate([colour, np.zeros_like(GRADIENT)[..., None]], axis=-1)
    result = scan.read_scan(encode(pixels, "PNG"))
    assert result.metadata["mode"] == mode
    check_contract(result)
    expected = RGB if mode == "RGBA" else np.repeat(GRADIENT[..., None], 3, axis=2)
    assert np.array_equal(result.to_uint8(), expected)
    assert "alpha channel dropped" in result.metadata["notes"]


def test_palette_with_transparency_becomes_rgb() -> None:
    image = Image.fromarray(RGB).quantize(colors=16)
    image.info["transparency"] = 0
    data = encode(image, "PNG", transparency=0)
    result = scan.read_scan(data)
    check_contract(result)
    assert result.metadata["mode"] == "P"
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(result.to_uint8(), expected)
    assert "palette image converted to RGB" in result.metadata["notes"]
    assert "alpha channel dropped" in result.metadata["notes"]


def test_sixteen_bit_png_is_stretched_from_its_own_range() -> None:
    pixels = (1000 + np.arange(32 * 24) % 101).reshape(24, 32).astype(np.uint16)
    result = scan.read_scan(encode(pixels, "PNG"))
    check_contract(result)
    assert result.metadata["mode"] == "I;16" and result.metadata["bit_depth"] == 16
    np.testing.assert_allclose(grey(result), (pixels - 1000) / 100.0, atol=1e-6)
    assert any("stretched from [1000, 1100]" in note for note in result.metadata["notes"])


def test_float_tiff_is_stretched_and_constant_image_becomes_black() -> None:
    pixels = np.linspace(-2.0, 6.0, 32 * 24, dtype=np.float32).reshape(24, 32)
    result = scan.read_scan(encode(pixels, "TIFF"))
    check_contract(result)
    assert result.metadata["mode"] == "F"
    np.testing.assert_allclose(grey(result), (pixels + 2.0) / 8.0, atol=1e-6)
    constant = scan.read_scan(encode(np.full((24, 32), 3.5, np.float32), "TIFF"))
    assert constant.image.max() == 0.0
    assert any("constant image" in note for note in constant.metadata["notes"])


def test_float_tiff_with_nan_is_rejected() -> None:
    pixels = np.ones((24, 32), np.float32)
    pixels[3, 4] = np.nan
    with pytest.raises(ScanReadError, match="NaN or infinite"):
        scan.read_scan(encode(pixels, "TIFF"))


@pytest.mark.parametrize(
    ("image", "mode"),
    [(Image.fromarray(GRADIENT), "L"), (Image.fromarray(RGB), "RGB"),
     (Image.fromarray(RGB).convert("CMYK"), "CMYK")],
)
def test_jpeg_matches_pillows_own_decoding(image: Image.Image, mode: str) -> None:
    data = encode(image, "JPEG", quality=95)
    result = scan.read_scan(data)
    check_contract(result)
    assert result.metadata["format"] == "JPEG" and result.metadata["mode"] == mode
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(result.to_uint8(), expected)
    assert np.abs(expected.astype(int) - np.asarray(image.convert("RGB"))).mean() < 12
    assert ("CMYK image converted to RGB" in result.metadata["notes"]) == (mode == "CMYK")


def multi_page(format: str) -> bytes:
    pages = [Image.fromarray(np.full((24, 32), value, np.uint8)) for value in (10, 200, 90)]
    if format == "GIF":
        pages = [page.convert("P") for page in pages]
    buffer = io.BytesIO()
    pages[0].save(buffer, format=format, save_all=True, append_images=pages[1:])
    return buffer.getvalue()


@pytest.mark.parametrize("format", ["TIFF", "GIF"])
def test_multi_frame_images_take_the_chosen_frame(format: str) -> None:
    data = multi_page(format)
    first, second = scan.read_scan(data), scan.read_scan(data, frame=1)
    assert first.metadata["frames"] == 3 and first.metadata["frame"] == 0
    assert second.metadata["frame"] == 1
    assert first.to_uint8()[0, 0, 0] == 10 and second.to_uint8()[0, 0, 0] == 200
    with pytest.raises(ScanReadError, match="has 3 frame"):
        scan.read_scan(data, frame=3, name="stack.tif")


def test_bytes_and_path_give_the_same_result(tmp_path) -> None:
    data = encode(RGB, "PNG")
    path = tmp_path / "slice.png"
    path.write_bytes(data)
    from_bytes, from_path = scan.read_scan(data), scan.read_scan(path)
    assert np.array_equal(from_bytes.image, from_path.image)
    assert from_bytes.metadata == from_path.metadata
    assert np.array_equal(scan.read_scan(str(path)).image, from_path.image)


def test_window_is_ignored_with_a_note_for_plain_images() -> None:
    result = scan.read_scan(encode(GRADIENT, "PNG"), window="bone")
    assert any("window ignored" in note for note in result.metadata["notes"])


# Bad input ------------------------------------------------------------------------------------


def big_png_header(width: int, height: int) -> bytes:
    """A real tiny PNG whose IHDR is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(GRADIENT, "PNG"))
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = body[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("slice.png", encode(GRADIENT, "PNG"))
    return buffer.getvalue()


BAD_INPUTS = {
    "empty": (b"", None, "the file is empty"),
    "jpeg-header-cut": (encode(RGB, "JPEG")[:400], "cut.jpg", "cut.jpg is truncated or corrupt"),
    "jpeg-data-cut": (encode(RGB, "JPEG")[:-100], "cut.jpg", "truncated or corrupt"),
    "png-data-cut": (encode(RGB, "PNG")[:-60], "cut.png", "truncated or corrupt"),
    "text-as-png": (b"patient notes: kidney looks fine\n" * 5, "x.png", "text/HTML file, not"),
    "html-as-dcm": (b"<!DOCTYPE html><html><body>Login</body></html>", "x.dcm", "text/HTML"),
    "zip-as-jpg": (zip_bytes(), "x.jpg", "ZIP archive, not an image; unzip it"),
    "pdf": (b"%PDF-1.7\n" + bytes(range(256)), "report.png", "PDF document"),
    "binary-as-dcm": (bytes(range(256)) * 8, "x.dcm", "not a DICOM file"),
    "binary": (bytes(range(256)) * 8, "x.bin", "not an image in a supported format"),
    "1x1": (encode(np.zeros((1, 1), np.uint8), "PNG"), None, "1x1 pixels; a CT slice needs"),
    "thin": (encode(np.zeros((8, 400), np.uint8), "PNG"), None, "400x8 pixels"),
    "bomb-49M": (big_png_header(7000, 7000), "b.png", "49,000,000 pixels.*decompression bomb"),
    "bomb-100M": (big_png_header(10000, 10000), "b.png", "over the limit of 40,000,000"),
    "bomb-900M": (big_png_header(30000, 30000), "b.png", "900,000,000 pixels.*decompression bomb"),
}


@pytest.mark.parametrize(("data", "name", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_explained(data: bytes, name: str | None, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ScanReadError, match=match):
        scan.read_scan(data, name=name)
    assert time.perf_counter() - start < 1.0


def test_max_pixels_is_the_callers_limit() -> None:
    with pytest.raises(ScanReadError, match="over the limit of 100"):
        scan.read_scan(encode(GRADIENT, "PNG"), max_pixels=100)


def test_missing_path_folder_and_wrong_type(tmp_path) -> None:
    with pytest.raises(ScanReadError, match="no such file"):
        scan.read_scan(tmp_path / "absent.png")
    with pytest.raises(ScanReadError, match="is a folder"):
        scan.read_scan(tmp_path)
    with pytest.raises(ScanReadError, match="pass its bytes or its path"):
        scan.read_scan(12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("window", "match"),
    [("lung", "unknown window 'lung'; choose one of kidney"), ((0, 40), "positive"),
     ((400,), "pair of numbers"), ("x", "minmax")],
)
def test_invalid_window_is_rejected(window, match: str) -> None:
    with pytest.raises(ScanReadError, match=match):
        scan.read_scan(encode(GRADIENT, "PNG"), window=window)


@pytest.mark.parametrize("frame", [-1, 1, 1.5, True])
def test_invalid_frame_is_rejected(frame) -> None:
    with pytest.raises(ScanReadError, match="does not exist"):
        scan.read_scan(encode(GRADIENT, "PNG"), frame=frame)


def test_unexpected_decoder_failures_become_scan_read_errors(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(scan, "_read_pil", broken)
    with pytest.raises(ScanReadError, match="could not read x.png: unpack requires"):
        scan.read_scan(encode(GRADIENT, "PNG"), name="x.png")


# DICOM ------------------------------------------------------------------------------------------

HU = np.full((20, 24), 40, np.int16)
HU[0, 0], HU[0, 1], HU[0, 2] = -1000, 1000, 200


def dicom_bytes(hu: np.ndarray = HU, syntax: str = ExplicitVRLittleEndian, **elements) -> bytes:
    """A CT DICOM file (stored = HU + 1024); ``elements`` override or (None) remove tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Rows, dataset.Columns = hu.shape[-2:]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation = 1
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    if hu.ndim == 3:
        dataset.NumberOfFrames = hu.shape[0]
    dataset.PixelData = (hu.astype(np.int32) + 1024).astype(np.int16).tobytes()
    for keyword, value in elements.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_known_answer_windowing() -> None:
    result = scan.read_scan(dicom_bytes(), window="kidney")
    check_contract(result)
    values = grey(result)
    assert values[5, 5] == pytest.approx(0.5)
    assert values[0, 0] == 0.0 and values[0, 1] == 1.0
    assert values[0, 2] == pytest.approx(0.9)
    assert result.metadata | {"notes": []} == {
        "format": "DICOM", "width": 24, "height": 20, "photometric": "MONOCHROME2",
        "bit_depth": 16, "frames": 1, "frame": 0, "modality": "CT",
        "transfer_syntax": "Explicit VR Little Endian", "rescale_slope": 1.0,
        "rescale_intercept": -1024.0, "hu_range": [-1000.0, 1000.0], "window": "kidney",
        "window_width": 400.0, "window_center": 40.0, "inverted": False, "notes": [],
    }


def test_dicom_default_window_is_the_files_own_first_value() -> None:
    data = dicom_bytes(WindowCenter=[40, 400], WindowWidth=[80, 1800])
    result = scan.read_scan(data)
    assert result.metadata["window"] == "file"
    assert (result.metadata["window_width"], result.metadata["window_center"]) == (80.0, 40.0)
    assert grey(result)[0, 2] == 1.0  # HU 200 is above a W80 L40 window.
    assert scan.read_scan(data, window="file").metadata["window"] == "file"


def test_dicom_default_without_a_file_window_is_kidney_for_ct_else_minmax() -> None:
    assert scan.read_scan(dicom_bytes()).metadata["window"] == "kidney"
    other = scan.read_scan(dicom_bytes(Modality="MR"))
    assert other.metadata["window"] == "minmax"
    assert grey(other)[0, 0] == 0.0 and grey(other)[0, 1] == 1.0
    fallback = scan.read_scan(dicom_bytes(), window="file")
    assert fallback.metadata["window"] == "kidney" and fallback.metadata["notes"]


def test_dicom_bone_preset_tuple_and_minmax_differ() -> None:
    data = dicom_bytes()
    kidney = grey(scan.read_scan(data, window="kidney"))
    bone = grey(scan.read_scan(data, window="bone"))
    custom = grey(scan.read_scan(data, window=(2000, 0)))
    minmax = grey(scan.read_scan(data, window="minmax"))
    assert bone[0, 2] == pytest.approx((200 - (400 - 900)) / 1800)
    assert not np.allclose(bone, kidney)
    assert custom[5, 5] == pytest.approx(0.52)
    np.testing.assert_allclose(minmax, (HU + 1000) / 2000.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted() -> None:
    result = scan.read_scan(dicom_bytes(PhotometricInterpretation="MONOCHROME1"),
                            window="kidney")
    assert result.metadata["inverted"] is True
    assert grey(result)[0, 0] == 1.0 and grey(result)[0, 1] == 0.0


def test_dicom_multi_frame_picks_the_frame() -> None:
    frames = np.stack([np.full((20, 24), value, np.int16) for value in (-160, 40, 240)])
    data = dicom_bytes(frames)
    result = scan.read_scan(data, frame=2, window="kidney")
    assert result.metadata["frames"] == 3 and result.metadata["frame"] == 2
    assert grey(result).min() == 1.0
    assert grey(scan.read_scan(data, window="kidney")).max() == 0.0
    with pytest.raises(ScanReadError, match="has 3 frame"):
        scan.read_scan(data, frame=3)


def test_dicom_rgb_is_scaled_without_window() -> None:
    data = dicom_bytes(
        SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
        BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
        PixelData=RGB[:20, :24].tobytes(),
    )
    result = scan.read_scan(data)
    assert np.array_equal(result.to_uint8(), RGB[:20, :24])
    assert "window" not in result.metadata


def test_dicom_palette_colour_goes_through_its_lut() -> None:
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    data = dicom_bytes(
        PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8, BitsStored=8, HighBit=7,
        PixelRepresentation=0, PixelData=GRADIENT[:20, :24].tobytes(),
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=lut, GreenPaletteColorLookupTableData=lut,
        BluePaletteColorLookupTableData=lut,
    )
    result = scan.read_scan(data)
    np.testing.assert_allclose(grey(result), GRADIENT[:20, :24] / 255.0, atol=1e-6)


def test_enhanced_dicom_reads_rescale_and_window_from_functional_groups() -> None:
    transform, shared = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 1, -1024
    shared.PixelValueTransformationSequence = [transform]
    per_frame = []
    for width in (400, 100):
        voi, group = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = 40, width
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    frames = np.stack([np.full((20, 24), 80, np.int16)] * 2)
    data = dicom_bytes(
        frames, RescaleSlope=None, RescaleIntercept=None,
        SharedFunctionalGroupsSequence=[shared], PerFrameFunctionalGroupsSequence=per_frame,
    )
    first, second = scan.read_scan(data), scan.read_scan(data, frame=1)
    assert first.metadata["rescale_intercept"] == -1024.0
    assert first.metadata["window"] == "file" and second.metadata["window_width"] == 100.0
    assert grey(first)[0, 0] == pytest.approx(0.6) and grey(second)[0, 0] == pytest.approx(0.9)


def test_dicom_without_preamble_is_read_by_name() -> None:
    data = dicom_bytes()[132:]
    with pytest.raises(ScanReadError, match="not an image in a supported format"):
        scan.read_scan(data, name="slice.bin")
    result = scan.read_scan(data, name="slice.dcm", window="kidney")
    assert grey(result)[5, 5] == pytest.approx(0.5)


def test_dicom_without_pixel_data() -> None:
    with pytest.raises(ScanReadError, match="no pixel data .* export the image series"):
        scan.read_scan(dicom_bytes(PixelData=None))


def test_dicom_size_limits() -> None:
    with pytest.raises(ScanReadError, match="24x20x3 frames = 1,440 pixels"):
        scan.read_scan(dicom_bytes(np.zeros((3, 20, 24), np.int16)), max_pixels=1000)
    with pytest.raises(ScanReadError, match="needs at least 16x16"):
        scan.read_scan(dicom_bytes(np.zeros((4, 24), np.int16)))


@pytest.mark.parametrize(
    ("syntax", "match"),
    [
        (JPEGLSLossless, "compressed with JPEG-LS Lossless.*cannot be decoded here; install"),
        (JPEG2000Lossless, "could not decode the pixel data .*JPEG 2000"),
    ],
)
def test_dicom_compressed_pixel_data(syntax: str, match: str) -> None:
    data = dicom_bytes(syntax=syntax, PixelData=encapsulate([b"\xff\x4f" + b"\x00" * 60]))
    with pytest.raises(ScanReadError, match=match):
        scan.read_scan(data, name="compressed.dcm")


def test_damaged_dicom() -> None:
    with pytest.raises(ScanReadError, match="truncated or corrupt|damaged DICOM"):
        scan.read_scan(dicom_bytes()[:-200])
    with pytest.raises(ScanReadError, match="damaged DICOM file .*no Rows/Columns"):
        scan.read_scan(dicom_bytes(Rows=None))


def test_supported_extensions_and_presets_are_consistent() -> None:
    assert set(scan.SUPPORTED_EXTENSIONS) >= {"png", "jpg", "jpeg", "tif", "dcm", "dicom"}
    assert all(extension == extension.lower() for extension in scan.SUPPORTED_EXTENSIONS)
    assert scan.WINDOW_PRESETS["kidney"] == (400.0, 40.0)
    assert scan.WINDOW_PRESETS["bone"] == (1800.0, 400.0)
    assert set(scan.WINDOW_CHOICES) == {*scan.WINDOW_PRESETS, "file", "minmax"}
    assert pydicom.__version__.startswith("3")


def test_apply_window_known_answers() -> None:
    from kidney_lab.data.scan import apply_window

    np.testing.assert_allclose(apply_window(np.array([-1000.0, -160.0, 40.0, 240.0, 1000.0]), 400, 40),
                               [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        apply_window(np.zeros(1), 0, 40)
