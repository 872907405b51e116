"""Checks of a decoded scan's content before any model sees it.

The models of kidney_lab were trained on grey axial CT slices (or phantoms of them); they answer
with confidence for anything they are given. :func:`check_scan` looks at a
:class:`kidney_lab.data.scan.Scan` and returns a warning for each sign that it is not such a
slice, as ``{"code", "message"}`` dicts (plain JSON data), codes from :data:`CODES`:

- ``modality_not_ct`` / ``modality_missing``: a DICOM file whose Modality is not CT (an
  ultrasound, a nuclear-medicine image, ...) or that has none;
- ``rescale_missing``: a CT DICOM without RescaleSlope/RescaleIntercept (and without a modality
  LUT), so its stored values were taken as Hounsfield units;
- ``rescale_odd``: a CT DICOM whose intercept is not near -1024 (or -1000) or 0, or whose slope
  is not between :data:`SLOPE_RANGE`;
- ``not_grey``: a colour image (more than :data:`COLOUR_SHARE` of its pixels have channels that
  differ by more than :data:`COLOUR_LEVEL` from their mean);
- ``constant_image``: no contrast (grey standard deviation under :data:`MIN_CONTRAST`);
- ``noise_like``: pure noise: the correlation of neighbouring pixels (the mean of the horizontal
  and vertical lag-1 autocorrelation of the grey image) is under :data:`NOISE_AUTOCORRELATION`.

The noise threshold is set from measurements: the 2,000 real slices of the CT sample have an
autocorrelation of 0.85 to 0.98 and phantoms 0.49 (32 px, whole abdomen) to 0.99, while uniform
or Gaussian pixel noise has 0 +/- 0.05 at 32 px and less at larger sizes. Noise that was smoothed
or enlarged after it was drawn is not caught by this check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kidney_lab.data import scan

MODALITY_NOT_CT = "modality_not_ct"
MODALITY_MISSING = "modality_missing"
RESCALE_MISSING = "rescale_missing"
RESCALE_ODD = "rescale_odd"
NOT_GREY = "not_grey"
CONSTANT_IMAGE = "constant_image"
NOISE_LIKE = "noise_like"
CODES = (MODALITY_NOT_CT, MODALITY_MISSING, RESCALE_MISSING, RESCALE_ODD, NOT_GREY, CONSTANT_IMAGE, NOISE_LIKE)

# Rescale intercepts of CT (HU = slope * stored + intercept): near one of these, within the tolerance.
CT_INTERCEPTS = (-1024.0, 0.0)
INTERCEPT_TOLERANCE = 100.0
SLOPE_RANGE = (0.25, 4.0)
# A pixel is coloured when a channel differs from the pixel's mean by more than this (0-1 scale);
# an image is not grey when more than this share of its pixels are coloured.
COLOUR_LEVEL = 0.1
COLOUR_SHARE = 0.02
# The grey standard deviation (0-1 scale) under which an image has no usable contrast.
MIN_CONTRAST = 0.01
# The neighbouring-pixel autocorrelation under which an image is taken for pure noise.
NOISE_AUTOCORRELATION = 0.3

_MODALITY_NAMES = {
    "US": "ultrasound", "NM": "nuclear medicine", "PT": "PET", "MR": "MRI", "CR": "radiograph",
    "DX": "radiograph", "XA": "X-ray angiography", "MG": "mammography", "OT": "other",
    "SC": "secondary capture", "RF": "fluoroscopy",
}


def measure(image: np.ndarray) -> dict[str, float]:
    """The content measures of an image in [0, 1], shape (H, W) or (H, W, channels).

    Returns:
        ``colour_share`` (share of coloured pixels, see :data:`COLOUR_LEVEL`), ``contrast``
        (standard deviation of the grey image, the mean of the channels) and
        ``autocorrelation`` (mean horizontal and vertical lag-1 correlation of the grey image;
        NaN for a constant image).

    Raises:
        ValueError: not a 2-D or 3-D array of finite numbers at least 2 x 2.
    """
    values = np.asarray(image, dtype=np.float64)
    if values.ndim not in (2, 3) or min(values.shape[:2]) < 2 or not np.isfinite(values).all():
        raise ValueError(
            f"An image must be a finite (H, W) or (H, W, channels) array at least 2 x 2; got shape {values.shape}."
        )
    grey = values.mean(axis=2) if values.ndim == 3 else values
    if values.ndim == 3:
        spread = np.abs(values - grey[..., None]).max(axis=2)
        colour_share = float((spread > COLOUR_LEVEL).mean())
    else:
        colour_share = 0.0
    autocorrelation = (_correlation(grey[:, :-1], grey[:, 1:]) + _correlation(grey[:-1], grey[1:])) / 2
    return {"colour_share": colour_share, "contrast": float(grey.std()), "autocorrelation": float(autocorrelation)}


def check_scan(decoded: scan.Scan) -> list[dict[str, str]]:
    """Warnings for a scan that does not look like a grey axial CT slice (see the module docstring).

    Args:
        decoded: a scan from :func:`kidney_lab.data.scan.read_scan`.

    Returns:
        A list of ``{"code", "message"}``, empty when nothing is wrong; codes from :data:`CODES`.
    """
    warnings = _dicom_warnings(decoded.metadata) if decoded.metadata.get("format") == "DICOM" else []
    found = measure(decoded.image)
    if found["colour_share"] > COLOUR_SHARE:
        warnings.append(_warning(
            NOT_GREY,
            f"This is a colour image ({found['colour_share']:.0%} of its pixels are coloured), not a grey CT "
            "slice; the models were trained on grey CT slices only, so their answers for it mean nothing.",
        ))
    if found["contrast"] < MIN_CONTRAST:
        warnings.append(_warning(
            CONSTANT_IMAGE,
            f"The image is {'constant' if found['contrast'] == 0 else 'nearly constant'} (grey standard deviation "
            f"{found['contrast']:.4f} on a 0-1 scale): there is nothing to classify; check the file or its window.",
        ))
    elif found["autocorrelation"] < NOISE_AUTOCORRELATION:
        warnings.append(_warning(
            NOISE_LIKE,
            f"The image looks like pure noise (neighbouring pixels correlate {found['autocorrelation']:.2f}; CT "
            f"slices and phantoms have {NOISE_AUTOCORRELATION} or more): it is not a CT slice, and the models' "
            "answers for it mean nothing.",
        ))
    return warnings


def _dicom_warnings(metadata: dict[str, Any]) -> list[dict[str, str]]:
    modality = str(metadata.get("modality") or "").strip().upper()
    if not modality:
        return [_warning(
            MODALITY_MISSING,
            "The DICOM file does not say its Modality, so it may not be CT; the models were trained on CT "
            "slices only.",
        )]
    if modality != "CT":
        name = _MODALITY_NAMES.get(modality)
        return [_warning(
            MODALITY_NOT_CT,
            f"The DICOM Modality is {modality}{f' ({name})' if name else ''}, not CT: the models were trained on "
            "CT slices only, so their answers for it mean nothing, and its values are not Hounsfield units.",
        )]
    if scan.NOTE_NO_RESCALE in metadata.get("notes", ()):
        return [_warning(
            RESCALE_MISSING,
            "The CT file has no RescaleSlope/RescaleIntercept, so its stored values were taken as Hounsfield "
            "units; if they are not, the window (and every answer) is wrong: export the series with its rescale.",
        )]
    slope, intercept = metadata.get("rescale_slope"), metadata.get("rescale_intercept")
    if slope is None or intercept is None:  # A modality LUT sequence replaced the rescale.
        return []
    odd = []
    if not SLOPE_RANGE[0] <= float(slope) <= SLOPE_RANGE[1]:
        odd.append(f"slope {float(slope):g} (expected about 1)")
    if min(abs(float(intercept) - usual) for usual in CT_INTERCEPTS) > INTERCEPT_TOLERANCE:
        odd.append(f"intercept {float(intercept):g} (expected about -1024 or 0)")
    if not odd:
        return []
    return [_warning(
        RESCALE_ODD,
        f"The CT file's rescale is unusual: {' and '.join(odd)}; its Hounsfield units and so the window may be "
        "wrong: check the export.",
    )]


def _correlation(first: np.ndarray, second: np.ndarray) -> float:
    first, second = first - first.mean(), second - second.mean()
    scale = np.sqrt((first * first).sum() * (second * second).sum())
    return float((first * second).sum() / scale) if scale > 0 else float("nan")


def _warning(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
