"""Read one scan (an upload or a file) into a float image in [0, 1] with its metadata.

:func:`read_scan` is the one door. The format is found from the content, never from the
extension: DICOM when bytes 128-132 are ``DICM`` (or, for a file named ``.dcm``/``.dicom``
without that marker, when pydicom can still parse it), otherwise PNG, JPEG, BMP, TIFF or GIF
through Pillow. Every problem with the file is raised as
:class:`kidney_lab.errors.ScanReadError` with a message that says what is wrong and what to
do; nothing from Pillow, pydicom or numpy escapes.

Grey levels become [0, 1] as follows:

- 8-bit images (and palette, CMYK, 1-bit) are divided by 255; alpha is dropped, not composited.
- 16-bit, 32-bit integer and float images are stretched from their own [min, max] to [0, 1].
- Monochrome DICOM goes through the modality LUT (stored value -> Hounsfield units for CT) and
  then a linear window of width ``W`` and level ``L``::

      value = clip((hu - (L - W / 2)) / W, 0, 1)

  the plain form MONAI calls ``ScaleIntensityRange``, not DICOM's ``c - 0.5, w - 1`` variant.
  MONOCHROME1 is inverted after windowing so that bone is always bright.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.multival
import pydicom.pixels
import pydicom.uid
from PIL import Image

from kidney_lab import errors

# The most pixels (width x height x frames) a scan may declare; larger headers are refused
# before anything is decoded (decompression bomb protection).
MAX_PIXELS = 40_000_000
# The smallest width or height accepted; anything smaller cannot be a CT slice.
MIN_SIDE = 16
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "gif", "dcm", "dicom",
)
# Window presets in Hounsfield units: name -> (width, level).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "kidney": (400.0, 40.0),
    "soft_tissue": (400.0, 40.0),
    "abdomen": (350.0, 50.0),
    "bone": (1800.0, 400.0),
}
# Every name ``window=`` accepts: the presets, the file's own window, and min-max.
WINDOW_CHOICES: tuple[str, ...] = (*WINDOW_PRESETS, "file", "minmax")
# The note of a monochrome DICOM without RescaleSlope or RescaleIntercept (and without a modality
# LUT): its stored values were used as if they were Hounsfield units.
NOTE_NO_RESCALE = (
    "the file has no RescaleSlope/RescaleIntercept: stored values were taken as Hounsfield units "
    "(slope 1, intercept 0)"
)

_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La")
_MAGIC_NUMBERS = ((b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"%PDF", "pdf"), (b"\x1f\x8b", "gzip"))
_NOT_IMAGE_ADVICE = {
    "zip": "a ZIP archive, not an image; unzip it and upload the images inside",
    "pdf": "a PDF document, not an image; export the slice as PNG, JPEG or DICOM",
    "gzip": "a gzip-compressed file (a NIfTI volume?), not an image; "
            "decompress it and export single slices as PNG or DICOM",
}
_TEXT_BYTES = frozenset(range(32, 127)) | {9, 10, 13}
# Signatures of the image formats read here; a file that has one but that Pillow cannot open is
# a damaged image of that format, not a file of another kind.
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)

Window = tuple[str, tuple[float, float] | None]


@dataclasses.dataclass(frozen=True, eq=False)
class Scan:
    """One decoded slice.

    ``image`` is a read-only float32 array of shape (H, W, 3) with values in [0, 1]; grey
    images repeat their one channel three times. ``metadata`` is JSON-serialisable: format,
    width, height, mode (or photometric for DICOM), bit_depth, frames, frame, notes, and for
    DICOM also modality, transfer_syntax, rescale_slope, rescale_intercept, hu_range,
    window, window_width, window_center and inverted.
    """

    image: np.ndarray
    metadata: dict[str, Any]

    def to_uint8(self) -> np.ndarray:
        """Return the image as uint8 of shape (H, W, 3), 0-255, rounded to nearest."""
        return np.round(self.image * 255.0).astype(np.uint8)


def read_scan(
    source: bytes | str | os.PathLike[str],
    *,
    window: str | tuple[float, float] | None = None,
    frame: int | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> Scan:
    """Read a scan from its bytes (an upload) or from a path.

    ``window`` applies to monochrome DICOM only: ``None`` uses the file's own window, else the
    "kidney" preset for CT, else min-max; a name from :data:`WINDOW_CHOICES` or a
    ``(width, level)`` pair in Hounsfield units picks one. ``frame`` chooses the frame or page
    of a multi-frame file (default 0). ``name`` (the upload's file name) is used in messages
    and to recognise DICOM files without a preamble, never as a path.

    Raises:
        ScanReadError: the file is missing, empty, not an image, truncated, too large
            (over ``max_pixels``) or too small (under ``MIN_SIDE``), has NaN/infinite pixels,
            is compressed in a way that cannot be decoded here, or ``window``/``frame`` is
            invalid.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the upload")
    requested = _parse_window(window)
    data = _read_bytes(source, label)
    try:
        return _decode(data, label, requested, frame, max_pixels)
    except errors.ScanReadError:
        raise
    except Exception as error:  # Any decoder failure is a property of the file.
        raise errors.ScanReadError(f"could not read {label}: {errors.first_line(error, 200)}") from error


def _parse_window(window: str | tuple[float, float] | None) -> Window | None:
    """Return (name, (width, level) or None for "file"/"minmax"), or None for the default."""
    if window is None:
        return None
    if isinstance(window, str):
        key = window.strip().lower()
        if key in WINDOW_PRESETS:
            return key, WINDOW_PRESETS[key]
        if key in ("file", "minmax"):
            return key, None
        raise errors.ScanReadError(
            f"unknown window {window!r}; choose one of {', '.join(WINDOW_CHOICES)} "
            "or give (width, level) in Hounsfield units"
        )
    try:
        width, level = (float(value) for value in window)
    except (TypeError, ValueError):
        raise errors.ScanReadError(
            f"a window is a preset name or a (width, level) pair of numbers, not {window!r}"
        ) from None
    if not (math.isfinite(width) and math.isfinite(level) and width > 0):
        raise errors.ScanReadError(
            f"window width must be a positive number and level finite, got ({width}, {level})"
        )
    return "custom", (width, level)


def _read_bytes(source: bytes | str | os.PathLike[str], label: str) -> bytes:
    """Return the bytes of ``source``; raise ScanReadError when there are none to read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise errors.ScanReadError(f"no such file: {path}; check the path") from None
        except IsADirectoryError:
            raise errors.ScanReadError(f"{path} is a folder; give the path of one image") from None
        except OSError as error:
            raise errors.ScanReadError(f"could not open {path}: {error.strerror}") from None
    else:
        raise errors.ScanReadError(
            f"cannot read a scan from a {type(source).__name__}; pass its bytes or its path"
        )
    if not data:
        raise errors.ScanReadError(f"{label}: the file is empty (0 bytes); upload it again")
    return data


def _decode(
    data: bytes, label: str, requested: Window | None, frame: int | None, max_pixels: int
) -> Scan:
    """Dispatch on the content: DICOM, a known non-image, or an image Pillow can open."""
    kind = sniff_content(data)
    if kind == "dicom":
        return _read_dicom(data, label, requested, frame, max_pixels, forced=False)
    if kind in _NOT_IMAGE_ADVICE:
        raise errors.ScanReadError(f"{label} is {_NOT_IMAGE_ADVICE[kind]}")
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's warning; its hard error is converted.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as image:
                return _read_pil(image, label, requested, frame, max_pixels)
        except Image.DecompressionBombError as error:
            # Pillow refuses (at twice its own limit) before kidney_lab's check: say kidney_lab's one limit.
            declared = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than that"
            raise errors.ScanReadError(
                f"{label} is {size}, over the limit of {max_pixels:,} (decompression bomb protection); "
                "downscale it or export a single slice"
            ) from None
        except Image.UnidentifiedImageError:
            for signature, image_format in _IMAGE_SIGNATURES:
                if data.startswith(signature):
                    raise errors.ScanReadError(
                        f"{label} is truncated or corrupt (it starts as a {image_format} file, but "
                        "its header cannot be read); export or upload it again"
                    ) from None
        except OSError as error:  # A header cut short fails while Pillow opens it.
            raise _truncated(label, error) from error
        except ValueError as error:
            # Pillow refuses a compressed text chunk that inflates beyond its own limit.
            if "Decompressed data too large" not in str(error):
                raise
            raise errors.ScanReadError(
                f"{label} holds a metadata chunk that inflates beyond Pillow's limit "
                "(decompression bomb protection); export the image again without metadata"
            ) from None
    if kind == "text":
        raise errors.ScanReadError(
            f"{label} is a text/HTML file, not an image; download the image itself "
            "(not the web page) and upload that"
        )
    if label.lower().endswith(_DICOM_SUFFIXES):
        return _read_dicom(data, label, requested, frame, max_pixels, forced=True)
    raise errors.ScanReadError(
        f"{label} is not an image in a supported format; export the slice as "
        "PNG, JPEG, BMP, TIFF, GIF or DICOM"
    )


def apply_window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map Hounsfield units to [0, 1] through a linear window (see the module docstring).

    Raises:
        ValueError: ``width`` is not positive.
    """
    if width <= 0:
        raise ValueError(f"A window width must be positive, got {width}.")
    return np.clip((np.asarray(hu, dtype=np.float64) - (level - width / 2.0)) / width, 0.0, 1.0)


def sniff_content(data: bytes) -> str | None:
    """Say what a file's first bytes show it to be, when that is not a plain image.

    Returns:
        ``"dicom"``, ``"zip"``, ``"pdf"``, ``"gzip"``, ``"text"`` (markup or mostly printable
        ASCII), or None when nothing is recognised (the file may be an image).
    """
    if data[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC_NUMBERS:
        if data.startswith(magic):
            return kind
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head or head.startswith(b"<"):
        return "text"
    if sum(byte in _TEXT_BYTES for byte in head) >= 0.95 * len(head):
        return "text"
    return None


def _check_size(label: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    """Refuse a declared size over ``max_pixels`` or a side under ``MIN_SIDE``."""
    pixels = width * height * frames
    if pixels > max_pixels:
        shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise errors.ScanReadError(
            f"{label} is {shape} = {pixels:,} pixels, over the limit of {max_pixels:,} "
            "(decompression bomb protection); downscale it or export a single slice"
        )
    if min(width, height) < MIN_SIDE:
        raise errors.ScanReadError(
            f"{label}: image is {width}x{height} pixels; a CT slice needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}"
        )


def _choose_frame(frame: int | None, frames: int, label: str) -> int:
    """Return the index of the requested frame (default 0); raise when it does not exist."""
    if frame is None:
        return 0
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not (
        0 <= frame < frames
    ):
        raise errors.ScanReadError(
            f"frame {frame!r} does not exist: {label} has {frames} frame(s), "
            f"numbered 0 to {frames - 1}"
        )
    return int(frame)


def _stretch(values: np.ndarray, what: str, notes: list[str]) -> np.ndarray:
    """Min-max stretch ``values`` to [0, 1]; a constant image becomes zeros. Adds a note."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        notes.append(f"constant image (every pixel is {low:g}); shown as black")
        return np.zeros(values.shape)
    notes.append(f"{what} stretched from [{low:g}, {high:g}] to [0, 1]")
    return (values - low) / (high - low)


def _require_finite(values: np.ndarray, label: str) -> None:
    """Raise ScanReadError when ``values`` holds NaN or infinity."""
    if not np.isfinite(values).all():
        raise errors.ScanReadError(
            f"{label} contains NaN or infinite pixel values; re-export it with finite values "
            "(for example as a 16-bit PNG)"
        )


def _read_pil(
    image: Image.Image, label: str, requested: Window | None, frame: int | None,
    max_pixels: int,
) -> Scan:
    """Decode the chosen frame of an image Pillow opened (lazily, header only so far)."""
    _check_size(label, *image.size, 1, max_pixels)
    frames = getattr(image, "n_frames", 1)
    index = _choose_frame(frame, frames, label)
    if index:
        image.seek(index)
        _check_size(label, *image.size, 1, max_pixels)
    metadata: dict[str, Any] = {
        "format": image.format, "width": image.width, "height": image.height,
        "mode": image.mode, "bit_depth": _BIT_DEPTH.get(image.mode, 8),
        "frames": frames, "frame": index,
    }
    try:
        image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, zlib.error, ...
        raise _truncated(label, error) from error
    notes: list[str] = []
    if requested is not None:
        notes.append("window ignored: only DICOM files carry Hounsfield units")
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette image converted to RGB")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        notes.append(f"{image.mode} image converted to RGB")
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if image.mode in _ALPHA_MODES:
        notes.append("alpha channel dropped")
        pixels = pixels[..., :-1] if image.mode.startswith("RGB") else pixels[..., 0]
    if pixels.dtype in (np.uint8, np.bool_):
        values = pixels / (1.0 if pixels.dtype == np.bool_ else 255.0)
    else:
        values = pixels.astype(np.float64)
        _require_finite(values, label)
        values = _stretch(values, f"{metadata['bit_depth']}-bit {image.mode} image", notes)
    return _scan(values, metadata, notes)


def _read_dicom(
    data: bytes, label: str, requested: Window | None, frame: int | None, max_pixels: int,
    *, forced: bool,
) -> Scan:
    """Decode one frame of a DICOM file; ``forced`` when it lacks the DICM marker."""
    not_dicom = (
        f"{label} is not a DICOM file (no DICM marker, and it does not parse as DICOM); "
        "export it again as DICOM, or as PNG or JPEG"
    )
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=forced)
    except Exception as error:
        message = not_dicom if forced else f"{label} is a damaged DICOM file ({errors.first_line(error, 200)})"
        raise errors.ScanReadError(message) from error
    has_pixels = any(key in dataset for key in ("PixelData", "FloatPixelData",
                                                 "DoubleFloatPixelData"))
    if forced and not (has_pixels and "Rows" in dataset):
        raise errors.ScanReadError(not_dicom)
    if not has_pixels:
        raise errors.ScanReadError(
            f"{label}: DICOM file has no pixel data (it may be a report or a structured "
            "document, or cut short); export the image series instead"
        )
    if "Rows" not in dataset or "Columns" not in dataset:
        raise errors.ScanReadError(
            f"{label} is a damaged DICOM file (it has pixel data but no Rows/Columns); "
            "export it again"
        )
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = int(dataset.get("NumberOfFrames") or 1)
    _check_size(label, columns, rows, frames, max_pixels)
    index = _choose_frame(frame, frames, label)
    syntax = _check_decodable(dataset, label)
    try:
        pixels = pydicom.pixels.pixel_array(dataset, index=index)
    except Exception as error:
        raise errors.ScanReadError(
            f"could not decode the pixel data of {label} ({syntax}): {errors.first_line(error, 200)}; "
            "the file may be truncated or corrupt"
        ) from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    metadata: dict[str, Any] = {
        "format": "DICOM", "width": columns, "height": rows, "photometric": photometric,
        "bit_depth": int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 0),
        "frames": frames, "frame": index, "modality": str(dataset.get("Modality", "")),
        "transfer_syntax": syntax,
    }
    notes: list[str] = []
    if photometric == "PALETTE COLOR":
        pixels = pydicom.pixels.apply_color_lut(pixels, dataset)[..., :3]
        maximum = float(np.iinfo(pixels.dtype).max)
    else:
        maximum = float(2 ** (metadata["bit_depth"] or 8) - 1)
    if pixels.ndim == 3:
        notes.append("colour DICOM: scaled to [0, 1] without modality LUT or window")
        return _scan(pixels / maximum, metadata, notes)
    return _window_monochrome(pixels, dataset, index, label, requested, metadata, notes)


def _check_decodable(dataset: pydicom.Dataset, label: str) -> str:
    """Return the transfer syntax name; raise when no installed plugin can decode it.

    A file without a file meta header (no preamble) gets the uncompressed syntax that
    pydicom found while parsing it, which is the only kind such a file can hold.
    """
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        implicit, little_endian = dataset.original_encoding
        syntax = pydicom.uid.ImplicitVRLittleEndian if implicit else (
            pydicom.uid.ExplicitVRLittleEndian if little_endian
            else pydicom.uid.ExplicitVRBigEndian
        )
        dataset.file_meta.TransferSyntaxUID = syntax
    if not syntax.is_transfer_syntax:
        raise errors.ScanReadError(
            f"{label}: DICOM file names an unknown transfer syntax {syntax}, so its pixel data "
            "cannot be decoded; export the series again as standard (uncompressed) DICOM"
        )
    try:
        available = pydicom.pixels.get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise errors.ScanReadError(
            f"{label}: DICOM pixel data is compressed with {syntax.name} which cannot be "
            "decoded here; install pylibjpeg or GDCM, or export the series uncompressed"
        )
    return str(syntax.name)


def _attribute(dataset: pydicom.Dataset, keyword: str, sequence: str, index: int) -> Any:
    """Return ``keyword`` from the dataset or its functional groups (enhanced multi-frame)."""
    if keyword in dataset:
        return dataset[keyword].value
    for groups, position in (("SharedFunctionalGroupsSequence", 0),
                             ("PerFrameFunctionalGroupsSequence", index)):
        items = dataset.get(groups)
        if items and position < len(items):
            inner = items[position].get(sequence)
            if inner and keyword in inner[0]:
                return inner[0][keyword].value
    return None


def _first_number(value: Any) -> float | None:
    """Return the first of a possibly multi-valued DICOM number, or None when absent."""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)


def _window_monochrome(
    pixels: np.ndarray, dataset: pydicom.Dataset, index: int, label: str,
    requested: Window | None, metadata: dict[str, Any], notes: list[str],
) -> Scan:
    """Apply the modality LUT and a window (see the module docstring) to a grey frame."""
    slope = _first_number(_attribute(dataset, "RescaleSlope",
                                     "PixelValueTransformationSequence", index))
    intercept = _first_number(_attribute(dataset, "RescaleIntercept",
                                         "PixelValueTransformationSequence", index))
    if "ModalityLUTSequence" in dataset:
        hu = np.asarray(pydicom.pixels.apply_modality_lut(pixels, dataset), dtype=np.float64)
        notes.append("modality LUT sequence applied")
    else:
        if slope is None or intercept is None:
            notes.append(NOTE_NO_RESCALE)
        slope, intercept = (1.0 if slope is None else slope), (intercept or 0.0)
        hu = pixels.astype(np.float64) * slope + intercept
    _require_finite(hu, label)
    low, high = float(hu.min()), float(hu.max())
    name, (width, level) = _choose_window(requested, dataset, index, low, high, notes)
    if width > 0:
        values = apply_window(hu, width, level)
    else:  # Only the min-max window of a constant image has no width.
        values = _stretch(hu, "constant image", notes)
    inverted = metadata["photometric"] == "MONOCHROME1"
    if inverted:
        values = 1.0 - values
    metadata.update(
        rescale_slope=slope, rescale_intercept=intercept, hu_range=[low, high],
        window=name, window_width=width, window_center=level, inverted=inverted,
    )
    return _scan(values, metadata, notes)


def _choose_window(
    requested: Window | None, dataset: pydicom.Dataset, index: int, low: float, high: float,
    notes: list[str],
) -> tuple[str, tuple[float, float]]:
    """Resolve the requested window into (name, (width, level)); see :func:`read_scan`."""
    if requested is not None and requested[1] is not None:
        return requested[0], requested[1]
    minmax = ("minmax", (high - low, (high + low) / 2.0))
    if requested is not None and requested[0] == "minmax":
        return minmax
    width = _first_number(_attribute(dataset, "WindowWidth", "FrameVOILUTSequence", index))
    center = _first_number(_attribute(dataset, "WindowCenter", "FrameVOILUTSequence", index))
    if width is not None and center is not None and width > 0:
        return "file", (width, center)
    is_ct = str(dataset.get("Modality", "")).upper() == "CT"
    fallback = ("kidney", WINDOW_PRESETS["kidney"]) if is_ct else minmax
    if requested is not None:
        notes.append(f"the file has no usable window of its own; used {fallback[0]}")
    return fallback


def _scan(values: np.ndarray, metadata: dict[str, Any], notes: list[str]) -> Scan:
    """Wrap a grey (H, W) or colour (H, W, 3) array in [0, 1] as a read-only Scan."""
    image = np.clip(values, 0.0, 1.0).astype(np.float32)
    if image.ndim == 2:
        image = np.repeat(image[:, :, np.newaxis], 3, axis=2)
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return Scan(image=image, metadata={**metadata, "notes": notes})


def _truncated(label: str, error: BaseException) -> errors.ScanReadError:
    """Return the error for image data that ends early or does not decode."""
    return errors.ScanReadError(
        f"{label} is truncated or corrupt ({errors.first_line(error, 200)}); export or upload it again"
    )
