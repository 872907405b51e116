"""Tests of kidney_lab/data/content.py: every file is generated here (DICOM through pydicom)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kidney_lab.data import content, phantom, scan
from kidney_lab.data.classes import CLASS_NAMES, KAGGLE_FOLDER_NAME
from tests.data.test_scan import dicom_bytes
from tests.helpers import encode

RNG_SEED = 0


def phantom_hu(size: int = 64, label: str = "Tumor") -> np.ndarray:
    """A phantom slice back in Hounsfield units (its kidney window undone), int16."""
    pixels = phantom.make_phantom(label, size=size, seed=1).image.astype(float)
    low = phantom.WINDOW_LEVEL_HU - phantom.WINDOW_WIDTH_HU / 2
    return np.round(low + pixels / 255.0 * phantom.WINDOW_WIDTH_HU).astype(np.int16)


def noise_hu(size: int = 64, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, (size, size)).astype(np.int16)


def codes(decoded: scan.Scan) -> list[str]:
    warnings = content.check_scan(decoded)
    json.dumps(warnings)
    assert all(set(warning) == {"code", "message"} and warning["message"] for warning in warnings)
    return [warning["code"] for warning in warnings]


def test_a_ct_dicom_of_a_phantom_has_no_warning() -> None:
    assert codes(scan.read_scan(dicom_bytes(phantom_hu()))) == []


@pytest.mark.parametrize(("modality", "named"), [("US", "ultrasound"), ("NM", "nuclear medicine"), ("MR", "MRI")])
def test_a_dicom_of_another_modality_is_flagged(modality: str, named: str) -> None:
    warnings = content.check_scan(scan.read_scan(dicom_bytes(phantom_hu(), Modality=modality)))
    assert [warning["code"] for warning in warnings] == [content.MODALITY_NOT_CT]
    assert modality in warnings[0]["message"] and named in warnings[0]["message"]


def test_a_dicom_without_modality_is_flagged() -> None:
    assert codes(scan.read_scan(dicom_bytes(phantom_hu(), Modality=None))) == [content.MODALITY_MISSING]


def test_a_ct_dicom_without_rescale_is_flagged() -> None:
    # dicom_bytes stores HU + 1024: these stored values are the phantom's HU themselves.
    as_hu = scan.read_scan(dicom_bytes(phantom_hu() - 1024, RescaleSlope=None, RescaleIntercept=None))
    assert scan.NOTE_NO_RESCALE in as_hu.metadata["notes"]
    assert codes(as_hu) == [content.RESCALE_MISSING]
    # Stored values offset by 1024 and read as HU fill the kidney window: the image goes blank too.
    offset = scan.read_scan(dicom_bytes(phantom_hu(), RescaleSlope=None))
    assert codes(offset)[0] == content.RESCALE_MISSING
    assert scan.NOTE_NO_RESCALE not in scan.read_scan(dicom_bytes(phantom_hu())).metadata["notes"]


@pytest.mark.parametrize(
    ("elements", "odd"),
    [({"RescaleIntercept": -3000}, "intercept -3000"), ({"RescaleSlope": 10}, "slope 10"),
     ({"RescaleSlope": -1}, "slope -1")],
)
def test_a_ct_dicom_with_an_odd_rescale_is_flagged(elements: dict, odd: str) -> None:
    warnings = content.check_scan(scan.read_scan(dicom_bytes(phantom_hu(), **elements)))
    assert content.RESCALE_ODD in [warning["code"] for warning in warnings]
    assert odd in next(w["message"] for w in warnings if w["code"] == content.RESCALE_ODD)


@pytest.mark.parametrize("intercept", [-1024, -1000, 0])
def test_usual_intercepts_are_not_flagged(intercept: int) -> None:
    assert content.RESCALE_ODD not in codes(scan.read_scan(dicom_bytes(phantom_hu(), RescaleIntercept=intercept)))


def test_a_noise_dicom_is_flagged() -> None:
    assert codes(scan.read_scan(dicom_bytes(noise_hu()))) == [content.NOISE_LIKE]
    # An ultrasound of noise says both.
    assert codes(scan.read_scan(dicom_bytes(noise_hu(), Modality="US"))) == [content.MODALITY_NOT_CT, content.NOISE_LIKE]


@pytest.mark.parametrize("size", [32, 64, 256])
@pytest.mark.parametrize("kind", ["uniform", "gaussian", "binary"])
def test_pixel_noise_images_are_flagged(kind: str, size: int) -> None:
    rng = np.random.default_rng(size)
    pixels = {
        "uniform": lambda: rng.integers(0, 256, (size, size)),
        "gaussian": lambda: np.clip(rng.normal(128, 50, (size, size)), 0, 255),
        "binary": lambda: rng.integers(0, 2, (size, size)) * 255,
    }[kind]().astype(np.uint8)
    assert codes(scan.read_scan(encode(pixels))) == [content.NOISE_LIKE]


def test_noise_saved_as_jpeg_is_flagged() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (128, 128)).astype(np.uint8)
    assert codes(scan.read_scan(encode(pixels, "JPEG", quality=75))) == [content.NOISE_LIKE]


def test_a_colour_photo_is_flagged() -> None:
    rows, columns = np.mgrid[0:96, 0:128]
    photo = np.stack([rows * 2, columns * 2, 255 - rows - columns // 2], axis=-1).clip(0, 255).astype(np.uint8)
    warnings = content.check_scan(scan.read_scan(encode(photo, "JPEG")))
    assert [warning["code"] for warning in warnings] == [content.NOT_GREY]
    assert "colour" in warnings[0]["message"]


def test_a_grey_image_saved_as_rgb_is_grey() -> None:
    slice_pixels = phantom.make_phantom("Cyst", size=128, seed=2).image
    assert codes(scan.read_scan(encode(np.repeat(slice_pixels[..., None], 3, axis=2), "JPEG"))) == []


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_constant_image_is_flagged_and_not_as_noise(value: int) -> None:
    assert codes(scan.read_scan(encode(np.full((64, 64), value, np.uint8)))) == [content.CONSTANT_IMAGE]
    assert codes(scan.read_scan(dicom_bytes(np.full((32, 32), value, np.int16)))) == [content.CONSTANT_IMAGE]


def test_a_nearly_constant_image_is_flagged() -> None:
    pixels = np.full((64, 64), 100, np.uint8)
    pixels[::7, ::5] = 101
    warnings = content.check_scan(scan.read_scan(encode(pixels)))
    assert [warning["code"] for warning in warnings] == [content.CONSTANT_IMAGE]
    assert "nearly constant" in warnings[0]["message"]


@pytest.mark.parametrize("size", [32, 48, 64, 128, 256])
@pytest.mark.parametrize("field_of_view", phantom.FIELDS_OF_VIEW)
def test_no_phantom_is_flagged(size: int, field_of_view: str) -> None:
    for label in CLASS_NAMES:
        for index in range(5):
            image = phantom.make_phantom(label, size=size, seed=3, index=index, field_of_view=field_of_view).image
            assert codes(scan.read_scan(encode(image))) == [], (label, index)


def test_measure_refuses_what_is_not_an_image() -> None:
    with pytest.raises(ValueError, match="at least 2 x 2"):
        content.measure(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        content.measure(np.full((4, 4), np.nan))
    assert content.measure(np.zeros((4, 4)))["contrast"] == 0.0


@pytest.mark.realdata
def test_no_real_slice_is_flagged(real_sample: Path) -> None:
    files = sorted((real_sample / KAGGLE_FOLDER_NAME).glob("*/*"))
    chosen = files[:: max(1, len(files) // 200)][:200]
    assert len(chosen) == 200
    flagged = {str(path): codes(scan.read_scan(path)) for path in chosen}
    assert {path: found for path, found in flagged.items() if found} == {}
