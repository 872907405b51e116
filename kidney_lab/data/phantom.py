"""Synthetic axial CT-like kidney slices ("phantoms") with a ground-truth lesion mask.

Phantoms are kidney_lab's built-in demo data, the data of every test, and the ground truth for
asking whether a heat map points at the lesion. Each slice is drawn in Hounsfield-like units
(HU): a body of fat and muscle on air, a spine, psoas and back muscles, bowel loops, sometimes a
liver and a spleen, an aorta and a vena cava, and two contrast-enhanced kidneys (bright cortex,
darker medulla, a notch at the hilum). A lesion class puts one lesion into one kidney:

- ``Cyst``: round, water-dark (0-20 HU), sharp-edged and homogeneous;
- ``Stone``: small but at least 3.5% of the image size in radius, very bright (600-1200 HU);
- ``Tumor``: larger, irregular outline that may bulge the kidney, mottled 40-120 HU;
- ``Normal``: no lesion and an empty mask.

Correlated noise and a slight blur are added, then the slice is shown in the kidney window
(width 400 HU, level 40 HU) as 8-bit grayscale. The lesion is painted last, so its mask is
exactly where it is drawn. Every anatomical parameter is drawn from the same distribution for
every class, so only the lesion tells the classes apart. All lengths are fractions of the
image size, so any size from 32 to 1024 pixels gives the same picture at another resolution.

Each image has its own random generator seeded by ``(seed, class index, image index)``: the
same arguments give byte-identical images, and the first N images of a class do not depend on
how many are generated.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import PIL.Image
import scipy.ndimage

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab.data import classes
from kidney_lab.data.scan import WINDOW_PRESETS, apply_window

# Bump when a change to the drawing changes the pixels that a given seed produces.
GENERATOR_VERSION = 2

# The kidney window of the scan reader: HU from LEVEL - WIDTH / 2 to LEVEL + WIDTH / 2 -> 0..255.
WINDOW_WIDTH_HU, WINDOW_LEVEL_HU = WINDOW_PRESETS["kidney"]

MIN_SIZE = 32
MAX_SIZE = 1024

# "abdomen" shows the whole slice, like the Kaggle images; "kidneys" zooms onto both kidneys,
# so that lesions cover about four times as many pixels (the built-in demo uses it: models
# trained from scratch for a minute on a CPU learn it, while the whole slice needs far longer).
FIELDS_OF_VIEW = ("abdomen", "kidneys")
# The kidneys view is drawn at this multiple of the size, then cropped to the square around
# both kidneys (widened by the margin) and resized to the size.
_KIDNEYS_DRAW_SCALE = 2
_KIDNEYS_MARGIN = 1.15
# Lesions of the kidneys view are this much larger in radius than in the abdomen view.
_KIDNEYS_LESION_SCALE = 1.4

# The folder next to the dataset folder that holds one mask PNG per phantom image.
MASKS_FOLDER_NAME = "masks"
# The file next to the dataset folder that records how the phantoms were made.
PARAMETERS_FILE_NAME = "phantoms.json"
# What that file's "generator" field says: the mark of a phantom set made here.
GENERATOR_NAME = "kidney_lab.data.phantom"

AIR_HU = -1000.0

# The round lesions: (range of minor/major axis ratio, range of HU). A stone is very bright and
# saturates the window; a cyst is water-dark and homogeneous.
_ROUND_LESIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "Stone": ((0.8, 1.0), (600.0, 1200.0)),
    "Cyst": ((0.85, 1.0), (0.0, 20.0)),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic slice and its ground truth.

    Attributes:
        image: uint8 array of shape (size, size), the slice in the kidney window.
        mask: bool array of shape (size, size), True exactly where the lesion is drawn;
            all False for ``Normal``.
        label: the class, one of ``CLASS_NAMES``.
        side: ``"left"`` or ``"right"``: the kidney with the lesion as seen on the image
            (``"left"`` is the kidney in the left half of the image); None for ``Normal``.
        kidney_mask: bool array of shape (size, size), the outlines of both kidneys (renal
            sinus included) as drawn before the lesion; always set by :func:`make_phantom`.
    """

    image: np.ndarray
    mask: np.ndarray
    label: str
    side: str | None
    kidney_mask: np.ndarray | None = None


def make_phantom(
    label: str, size: int = 256, seed: int = 0, index: int = 0, field_of_view: str = "abdomen"
) -> Phantom:
    """Draw phantom number ``index`` of class ``label``.

    Args:
        label: one of ``CLASS_NAMES`` (case-insensitive).
        size: width and height in pixels, 32 to 1024 (to 512 for the kidneys view).
        seed: non-negative integer that selects the whole set of phantoms.
        index: non-negative image number within the class.
        field_of_view: ``"abdomen"`` (the whole slice) or ``"kidneys"`` (zoomed onto both
            kidneys; see :data:`FIELDS_OF_VIEW`).

    Returns:
        The :class:`Phantom`; the same arguments always give byte-identical arrays.

    Raises:
        ValueError: for an unknown label or field of view, a size outside the range or a
            negative seed or index.
    """
    name = _check_label(label)
    _check_size(size, field_of_view)
    _check_non_negative("seed", seed)
    _check_non_negative("index", index)
    sequence = np.random.SeedSequence([seed, classes.class_index(name), index])
    if field_of_view == "abdomen":
        return _draw(name, size, np.random.default_rng(sequence))
    drawn = _draw(
        name, size * _KIDNEYS_DRAW_SCALE, np.random.default_rng(sequence), lesion_scale=_KIDNEYS_LESION_SCALE
    )
    return _crop_to_kidneys(drawn, size)


def _crop_to_kidneys(phantom: Phantom, size: int) -> Phantom:
    """The square around both kidneys, resized to ``size`` (masks stay exact to a pixel)."""
    rows, columns = np.nonzero(phantom.kidney_mask)
    centre_y, centre_x = (rows.min() + rows.max()) / 2.0, (columns.min() + columns.max()) / 2.0
    half = max(rows.max() - rows.min(), columns.max() - columns.min()) / 2.0 * _KIDNEYS_MARGIN
    box = tuple(int(round(value)) for value in (centre_x - half, centre_y - half, centre_x + half, centre_y + half))

    def crop(pixels: np.ndarray, resample: int) -> np.ndarray:
        image = PIL.Image.fromarray(pixels).crop(box)
        return np.asarray(image.resize((size, size), resample))

    def crop_mask(mask: np.ndarray) -> np.ndarray:
        return crop(mask.astype(np.uint8) * 255, PIL.Image.Resampling.BILINEAR) >= 128

    return dataclasses.replace(
        phantom,
        image=crop(phantom.image, PIL.Image.Resampling.BILINEAR),
        mask=crop_mask(phantom.mask),
        kidney_mask=crop_mask(phantom.kidney_mask),
    )


def write_phantom_dataset(
    out: str | os.PathLike[str],
    per_class: int,
    size: int = 256,
    seed: int = 0,
    field_of_view: str = "abdomen",
) -> Path:
    """Write ``per_class`` phantoms of every class in the Kaggle folder layout.

    Images go to ``out/CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/<Class>/<Class>- (<n>).png``
    (n from 1, image n is ``make_phantom(Class, size, seed, n - 1)``), their masks (0 or 255)
    to ``out/masks/<Class>/<Class>- (<n>).png``, outside the class folders, and the parameters
    to ``out/phantoms.json``, which is written last: its presence means the set is complete.
    Every file is written atomically. Phantom images left in ``out`` by an earlier, larger
    run with the same layout are removed so that the folder holds exactly this set.

    Returns:
        The dataset folder, the one that holds the class folders.

    Raises:
        kidney_lab.errors.ConfigError (a ValueError): per_class < 1, a size outside 32..1024
            or a negative seed.
        kidney_lab.errors.DatasetError (a ValueError): when a class folder in ``out`` already
            holds files that are not phantom images.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise errors.ConfigError(
            f"per_class must be a whole number of at least 1 (images per class); got {per_class!r}."
        )
    _check_size(size, field_of_view)
    _check_non_negative("seed", seed)
    root = Path(out)
    dataset = root / classes.KAGGLE_FOLDER_NAME
    masks = root / MASKS_FOLDER_NAME
    stale = _stale_phantom_files(dataset, masks, per_class)
    parameters_path = root / PARAMETERS_FILE_NAME
    parameters_path.unlink(missing_ok=True)
    for stale_path in stale:
        stale_path.unlink(missing_ok=True)
    for name in classes.CLASS_NAMES:
        for number in range(1, per_class + 1):
            phantom = make_phantom(name, size=size, seed=seed, index=number - 1, field_of_view=field_of_view)
            file_name = f"{name}- ({number}).png"
            fileio.atomic_write_bytes(dataset / name / file_name, _png_bytes(phantom.image))
            mask_pixels = phantom.mask.astype(np.uint8) * 255
            fileio.atomic_write_bytes(masks / name / file_name, _png_bytes(mask_pixels))
    fileio.atomic_write_json(
        parameters_path,
        {
            "generator": GENERATOR_NAME,
            "generator_version": GENERATOR_VERSION,
            "per_class": per_class,
            "size": size,
            "seed": seed,
            "field_of_view": field_of_view,
            "classes": list(classes.CLASS_NAMES),
            "images": per_class * len(classes.CLASS_NAMES),
            "dataset_folder": classes.KAGGLE_FOLDER_NAME,
            "masks_folder": MASKS_FOLDER_NAME,
            "window_hu": {"width": WINDOW_WIDTH_HU, "level": WINDOW_LEVEL_HU},
        },
    )
    return dataset


def phantom_root(folder: str | os.PathLike[str] | None) -> Path | None:
    """The folder of the phantom set that ``folder`` is, or ``None`` when it is not phantom data.

    This is kidney_lab's one answer to "is this phantom data": a set written by
    :func:`write_phantom_dataset` has a complete ``phantoms.json`` (written last) whose
    ``generator`` is :data:`GENERATOR_NAME`, in its own folder, next to its dataset folder.

    Args:
        folder: The set's folder (``out`` of :func:`write_phantom_dataset`) or its dataset
            folder (the one holding the class folders, as a run's ``data_root`` names it);
            ``None``, ``""`` or anything not a path (a run that records no data folder) is
            not phantom data.

    Returns:
        The set's folder, absolute, or ``None``: no such file there, or unreadable, or written
        by something else.
    """
    if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
        return None
    start = Path(folder).expanduser().resolve()
    for candidate in (start, start.parent):
        try:
            parameters = fileio.read_json(candidate / PARAMETERS_FILE_NAME)
        except (OSError, ValueError):
            continue
        if isinstance(parameters, dict) and parameters.get("generator") == GENERATOR_NAME:
            return candidate
    return None


def is_phantom_data(folder: str | os.PathLike[str] | None) -> bool:
    """True when ``folder`` is a phantom set made by kidney_lab or its dataset folder (see
    :func:`phantom_root`), such as a run's ``data_root`` for a run trained on the demo."""
    return phantom_root(folder) is not None


def mask_path_for(image_path: str | os.PathLike[str]) -> Path | None:
    """Return the mask PNG of a phantom image written by :func:`write_phantom_dataset`.

    ``<root>/<dataset folder>/<Class>/<file>`` maps to ``<root>/masks/<Class>/<file>``.
    Returns None when that file does not exist (the image is not a phantom, or its mask is
    gone).
    """
    image = Path(image_path)
    candidate = image.parent.parent.parent / MASKS_FOLDER_NAME / image.parent.name / image.name
    return candidate if candidate.is_file() else None


def window_to_uint8(hu: np.ndarray) -> np.ndarray:
    """Map HU values to 0..255 through the kidney window (W400 L40), rounding to uint8."""
    return np.rint(apply_window(hu, WINDOW_WIDTH_HU, WINDOW_LEVEL_HU) * 255.0).astype(np.uint8)


def _check_label(label: str) -> str:
    name = classes.match_class(label) if isinstance(label, str) else None
    if name is None:
        raise errors.ConfigError(
            f"Unknown phantom label {label!r}; pass one of {', '.join(classes.CLASS_NAMES)}."
        )
    return name


def _check_size(size: int, field_of_view: str = "abdomen") -> None:
    if field_of_view not in FIELDS_OF_VIEW:
        raise errors.ConfigError(
            f"Unknown field of view {field_of_view!r}; use one of {', '.join(FIELDS_OF_VIEW)}."
        )
    largest = MAX_SIZE if field_of_view == "abdomen" else MAX_SIZE // _KIDNEYS_DRAW_SCALE
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= largest:
        raise errors.ConfigError(
            f"size must be a whole number of pixels from {MIN_SIZE} to {largest}; got {size!r}."
        )


def _check_non_negative(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise errors.ConfigError(f"{what} must be a whole number of at least 0; got {value!r}.")


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _stale_phantom_files(dataset: Path, masks: Path, per_class: int) -> list[Path]:
    """List phantom files numbered above ``per_class`` and temporary files of an interrupted
    run; raise DatasetError when a class or mask folder holds anything else."""
    stale: list[Path] = []
    for name in classes.CLASS_NAMES:
        pattern = re.compile(rf"^{re.escape(name)}- \((\d+)\)\.png$")
        for folder in (dataset / name, masks / name):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.name.startswith("."):
                    if entry.name.endswith(".tmp") and entry.is_file():
                        stale.append(entry)
                    continue
                match = pattern.match(entry.name)
                if match is None or not entry.is_file():
                    raise errors.DatasetError(
                        f"{folder} already holds {entry.name!r}, which is not a phantom image; "
                        "write the phantoms to an empty folder."
                    )
                if int(match.group(1)) > per_class:
                    stale.append(entry)
    return stale


class _Canvas:
    """An HU image being painted, shape by shape, inside bounding boxes for speed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hu = np.full((size, size), AIR_HU, dtype=np.float32)

    def region(
        self,
        centre_y: float,
        centre_x: float,
        radius_y: float,
        radius_x: float,
        angle: float = 0.0,
        power: float = 2.0,
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        """Return the bounding box and the mask in it of a rotated (super)ellipse.

        ``radius_y`` and ``radius_x`` are the semi-axes in pixels before rotation by ``angle``
        radians; ``power`` 2 is an ellipse, larger values are boxier. The box is clipped to the
        image and may be empty.
        """
        if power > 2.0:
            reach = math.hypot(radius_y, radius_x) + 1.0
        else:
            reach = max(radius_y, radius_x) + 1.0
        y0 = min(max(int(math.floor(centre_y - reach)), 0), self.size)
        y1 = min(max(int(math.ceil(centre_y + reach)) + 1, 0), self.size)
        x0 = min(max(int(math.floor(centre_x - reach)), 0), self.size)
        x1 = min(max(int(math.ceil(centre_x + reach)) + 1, 0), self.size)
        rows, columns = np.ogrid[y0:y1, x0:x1]
        dy = rows.astype(np.float32) - np.float32(centre_y)
        dx = columns.astype(np.float32) - np.float32(centre_x)
        if angle:
            cosine, sine = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            along_x = dx * cosine + dy * sine
            along_y = dy * cosine - dx * sine
        else:
            along_x, along_y = dx, dy
        if power == 2.0:
            inside = (along_x / radius_x) ** 2 + (along_y / radius_y) ** 2 <= 1.0
        else:
            inside = (
                np.abs(along_x / radius_x) ** power + np.abs(along_y / radius_y) ** power <= 1.0
            )
        return (slice(y0, y1), slice(x0, x1)), inside

    def paint(self, value: float, box: tuple[slice, slice], inside: np.ndarray) -> None:
        self.hu[box][inside] = value

    def full(self, box: tuple[slice, slice], inside: np.ndarray) -> np.ndarray:
        """Return ``inside`` placed into a full-size boolean image."""
        result = np.zeros((self.size, self.size), dtype=bool)
        result[box] = inside
        return result


def _draw(label: str, size: int, rng: np.random.Generator, lesion_scale: float = 1.0) -> Phantom:
    """Draw one phantom; the order of the random draws is part of GENERATOR_VERSION."""
    s = float(size)
    canvas = _Canvas(size)

    # Body: a boxy ellipse of subcutaneous fat, a muscle wall, and an abdominal cavity of fat.
    centre_y = s * rng.uniform(0.46, 0.53)
    centre_x = s * rng.uniform(0.47, 0.53)
    half_width = s * rng.uniform(0.38, 0.46)
    half_height = half_width * rng.uniform(0.66, 0.80)
    power = rng.uniform(2.0, 2.6)
    fat_thickness = s * rng.uniform(0.015, 0.045)
    wall_thickness = s * rng.uniform(0.012, 0.022)
    fat_hu = rng.uniform(-115.0, -85.0)
    muscle_hu = rng.uniform(40.0, 60.0)
    body_box, body = canvas.region(centre_y, centre_x, half_height, half_width, power=power)
    canvas.paint(fat_hu, body_box, body)
    box, inside = canvas.region(
        centre_y, centre_x, half_height - fat_thickness, half_width - fat_thickness, power=power
    )
    canvas.paint(muscle_hu, box, inside)
    inner = fat_thickness + wall_thickness
    cavity_box, cavity = canvas.region(
        centre_y, centre_x, half_height - inner, half_width - inner, power=power
    )
    canvas.paint(fat_hu + rng.uniform(0.0, 25.0), cavity_box, cavity)
    cavity_full = canvas.full(cavity_box, cavity)

    # Solid organs and bowel loops, clipped to the cavity; they lie anterior to the kidneys.
    if rng.uniform() < 0.7:
        box, inside = canvas.region(
            centre_y - half_height * rng.uniform(0.0, 0.25),
            centre_x - half_width * rng.uniform(0.45, 0.65),
            half_height * rng.uniform(0.35, 0.6),
            half_width * rng.uniform(0.25, 0.4),
            angle=rng.uniform(-0.5, 0.5),
        )
        canvas.paint(rng.uniform(50.0, 75.0), box, inside & cavity_full[box])
    if rng.uniform() < 0.4:
        box, inside = canvas.region(
            centre_y + half_height * rng.uniform(-0.05, 0.15),
            centre_x + half_width * rng.uniform(0.6, 0.72),
            half_height * rng.uniform(0.18, 0.3),
            half_width * rng.uniform(0.12, 0.2),
            angle=rng.uniform(-0.6, 0.6),
        )
        canvas.paint(rng.uniform(45.0, 70.0), box, inside & cavity_full[box])
    for _ in range(int(rng.integers(5, 11))):
        loop_y = centre_y + half_height * rng.uniform(-0.75, 0.05)
        loop_x = centre_x + half_width * rng.uniform(-0.6, 0.6)
        radius = s * rng.uniform(0.025, 0.06)
        box, inside = canvas.region(
            loop_y, loop_x, radius, radius * rng.uniform(0.7, 1.4), angle=rng.uniform(0, np.pi)
        )
        canvas.paint(rng.uniform(10.0, 60.0), box, inside & cavity_full[box])
        if rng.uniform() < 0.45:
            box, inside = canvas.region(
                loop_y - radius * 0.35, loop_x, radius * 0.4, radius * 0.6
            )
            canvas.paint(AIR_HU, box, inside & cavity_full[box])

    # Spine, and the muscles around it, posterior on the midline.
    vertebra_radius = s * rng.uniform(0.042, 0.055)
    vertebra_y = centre_y + half_height * rng.uniform(0.38, 0.48)
    vertebra_x = centre_x + s * rng.uniform(-0.01, 0.01)
    canal_radius = vertebra_radius * rng.uniform(0.4, 0.5)
    canal_y = vertebra_y + vertebra_radius + canal_radius * 1.1
    for direction in (-1.0, 1.0):
        box, inside = canvas.region(
            canal_y + canal_radius * 1.8,
            vertebra_x + direction * vertebra_radius * 1.35,
            vertebra_radius * rng.uniform(1.1, 1.4),
            vertebra_radius * rng.uniform(0.95, 1.2),
        )
        canvas.paint(muscle_hu + rng.uniform(-5.0, 5.0), box, inside & cavity_full[box])
        box, inside = canvas.region(
            vertebra_y - vertebra_radius * 0.2,
            vertebra_x + direction * vertebra_radius * rng.uniform(1.35, 1.6),
            vertebra_radius * rng.uniform(0.65, 0.9),
            vertebra_radius * rng.uniform(0.45, 0.65),
            angle=direction * rng.uniform(0.2, 0.5),
        )
        canvas.paint(muscle_hu + rng.uniform(-5.0, 5.0), box, inside)

    # Two kidneys, each in a halo of perirenal fat, with a cortex, a medulla and a hilum notch.
    kidney_full = np.zeros((size, size), dtype=bool)
    kidneys: dict[str, tuple[float, float, float, float, float]] = {}
    cortex_hu = rng.uniform(135.0, 180.0)
    medulla_hu = cortex_hu - rng.uniform(15.0, 45.0)
    kidney_y = vertebra_y + s * rng.uniform(-0.05, 0.0)
    for kidney_side, direction in (("left", -1.0), ("right", 1.0)):
        long_radius = s * rng.uniform(0.085, 0.105)
        short_radius = s * rng.uniform(0.060, 0.075)
        k_y = kidney_y + s * rng.uniform(-0.02, 0.02)
        k_x = vertebra_x + direction * s * rng.uniform(0.17, 0.21)
        # The long axis leans with its upper end towards the midline.
        angle = -direction * rng.uniform(0.25, 0.7)
        kidneys[kidney_side] = (k_y, k_x, long_radius, short_radius, angle)
        box, inside = canvas.region(
            k_y, k_x, long_radius * 1.22, short_radius * 1.28, angle=angle
        )
        canvas.paint(fat_hu + rng.uniform(0.0, 20.0), box, inside & cavity_full[box])
        box, kidney = canvas.region(k_y, k_x, long_radius, short_radius, angle=angle)
        canvas.paint(cortex_hu + rng.uniform(-10.0, 10.0), box, kidney)
        medulla_fraction = rng.uniform(0.55, 0.7)
        box_m, inside = canvas.region(
            k_y, k_x, long_radius * medulla_fraction, short_radius * medulla_fraction, angle=angle
        )
        canvas.paint(medulla_hu, box_m, inside)
        # The hilum: a notch of sinus fat where the medial, slightly anterior edge lies.
        towards_x, towards_y = -direction / math.sqrt(1.25), -0.5 / math.sqrt(1.25)
        along_short = towards_x * math.cos(angle) + towards_y * math.sin(angle)
        along_long = towards_y * math.cos(angle) - towards_x * math.sin(angle)
        edge = 1.0 / math.hypot(along_short / short_radius, along_long / long_radius)
        box_h, notch = canvas.region(
            k_y + towards_y * edge * 0.88,
            k_x + towards_x * edge * 0.88,
            short_radius * rng.uniform(0.3, 0.4),
            short_radius * rng.uniform(0.22, 0.3),
            angle=math.atan2(-towards_x, towards_y),
        )
        canvas.paint(fat_hu + rng.uniform(10.0, 40.0), box_h, notch)
        kidney_full[box] |= kidney

    # Great vessels in front of the spine, and the bones drawn over everything above.
    aorta_radius = s * rng.uniform(0.02, 0.028)
    box, inside = canvas.region(
        vertebra_y - vertebra_radius - aorta_radius * 1.2,
        vertebra_x + s * rng.uniform(0.01, 0.03),
        aorta_radius,
        aorta_radius,
    )
    canvas.paint(rng.uniform(120.0, 200.0), box, inside)
    box, inside = canvas.region(
        vertebra_y - vertebra_radius - aorta_radius * 1.1,
        vertebra_x - s * rng.uniform(0.04, 0.06),
        aorta_radius * rng.uniform(0.8, 1.1),
        aorta_radius * rng.uniform(1.1, 1.5),
    )
    canvas.paint(rng.uniform(80.0, 140.0), box, inside)

    bone_hu = rng.uniform(600.0, 800.0)
    box, inside = canvas.region(
        canal_y + canal_radius * 1.6,
        vertebra_x,
        canal_radius * rng.uniform(1.9, 2.3),
        canal_radius * rng.uniform(0.45, 0.6),
    )
    canvas.paint(bone_hu, box, inside & cavity_full[box])
    box, inside = canvas.region(canal_y, vertebra_x, canal_radius * 1.55, canal_radius * 1.9)
    canvas.paint(bone_hu, box, inside)
    box, inside = canvas.region(canal_y, vertebra_x, canal_radius, canal_radius * 1.1)
    canvas.paint(rng.uniform(10.0, 30.0), box, inside)
    box, inside = canvas.region(vertebra_y, vertebra_x, vertebra_radius, vertebra_radius * 1.08)
    canvas.paint(bone_hu, box, inside)
    box, inside = canvas.region(
        vertebra_y, vertebra_x, vertebra_radius * 0.8, vertebra_radius * 0.86
    )
    canvas.paint(rng.uniform(220.0, 350.0), box, inside)

    # Ribs: bright cross-sections in the posterolateral muscle wall.
    wall_half_height = half_height - fat_thickness - wall_thickness / 2.0
    wall_half_width = half_width - fat_thickness - wall_thickness / 2.0
    for direction in (-1.0, 1.0):
        for _ in range(int(rng.integers(1, 4))):
            theta = rng.uniform(0.15, 1.1)
            rib_y = centre_y + wall_half_height * math.sin(theta) ** (2.0 / power)
            rib_x = centre_x + direction * wall_half_width * math.cos(theta) ** (2.0 / power)
            rib_radius = s * rng.uniform(0.008, 0.013)
            box, inside = canvas.region(
                rib_y,
                rib_x,
                rib_radius,
                rib_radius * rng.uniform(1.2, 1.8),
                angle=-direction * theta,
            )
            canvas.paint(bone_hu * rng.uniform(0.6, 1.0), box, inside)

    # The scanner table: a thin arc under the body whose ends rise at the sides.
    if rng.uniform() < 0.7:
        table_y = centre_y + half_height + s * rng.uniform(0.02, 0.05)
        curvature = np.float32(rng.uniform(0.5, 1.2) / s)
        top = max(int(table_y - curvature * (s / 2.0 + abs(centre_x - s / 2.0)) ** 2) - 2, 0)
        rows, columns = np.ogrid[top:size, 0:size]
        offset = columns.astype(np.float32) - np.float32(centre_x)
        arc = np.float32(table_y) - curvature * offset**2
        band = np.abs(rows.astype(np.float32) - arc) <= np.float32(max(s * 0.004, 0.5))
        below = canvas.hu[top:]
        below[band & (below <= AIR_HU)] = rng.uniform(100.0, 300.0)

    # The lesion, painted last so that its mask is exactly what is drawn.
    mask = np.zeros((size, size), dtype=bool)
    side: str | None = None
    if label != "Normal":
        side = "left" if rng.uniform() < 0.5 else "right"
        mask = _paint_lesion(canvas, label, kidneys[side], cavity_full, rng, lesion_scale)

    # Correlated noise and a slight blur in one filter: white noise is scaled so that the
    # filtered noise has the drawn standard deviation.
    blur_sigma = rng.uniform(0.55, 0.85) * s / 256.0
    noise_std = rng.uniform(15.0, 30.0)
    white = rng.standard_normal((size, size), dtype=np.float32)
    white *= np.float32(noise_std / _filtered_noise_gain(blur_sigma))
    hu = scipy.ndimage.gaussian_filter(canvas.hu + white, blur_sigma, mode="nearest")
    return Phantom(
        image=window_to_uint8(hu),
        mask=mask,
        label=label,
        side=side,
        kidney_mask=kidney_full,
    )


def _paint_lesion(
    canvas: _Canvas,
    label: str,
    kidney: tuple[float, float, float, float, float],
    allowed: np.ndarray,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> np.ndarray:
    """Paint a cyst, stone or tumor into ``kidney``, only where ``allowed``; return its mask.

    ``scale`` multiplies the lesion's radius (the random draws stay the same).
    """
    s = float(canvas.size)
    k_y, k_x, long_radius, short_radius, angle = kidney
    if label == "Stone":
        radius = s * rng.uniform(0.036, 0.046)
        room = 1.0
    elif label == "Cyst":
        radius = s * rng.uniform(0.042, 0.062)
        room = 0.85
    else:
        radius = s * rng.uniform(0.072, 0.1)
        room = 0.95
    radius *= scale
    # A point in the kidney, far enough from its edge that the lesion stays mostly inside.
    spread = rng.uniform(0.0, 1.0) ** 0.5
    theta = rng.uniform(0.0, 2.0 * np.pi)
    reach_long = max(long_radius - radius * room, 0.0) * spread
    reach_short = max(short_radius - radius * room, 0.0) * spread
    local_x = reach_short * math.cos(theta)
    local_y = reach_long * math.sin(theta)
    cosine, sine = math.cos(angle), math.sin(angle)
    centre_x = k_x + local_x * cosine - local_y * sine
    centre_y = k_y + local_x * sine + local_y * cosine

    if label in _ROUND_LESIONS:
        aspect, hounsfield = _ROUND_LESIONS[label]
        box, inside = canvas.region(
            centre_y, centre_x, radius, radius * rng.uniform(*aspect), angle=rng.uniform(0, np.pi)
        )
        inside &= allowed[box]
        canvas.paint(rng.uniform(*hounsfield), box, inside)
        return canvas.full(box, inside)

    # Tumor: a disc whose radius wobbles with angle, filled with smoothed noise.
    reach = radius * 1.5
    box, _ = canvas.region(centre_y, centre_x, reach, reach)
    rows, columns = np.ogrid[box[0], box[1]]
    dy = rows.astype(np.float32) - np.float32(centre_y)
    dx = columns.astype(np.float32) - np.float32(centre_x)
    distance = np.hypot(dx, dy)
    bearing = np.arctan2(dy, dx)
    outline = np.ones_like(bearing)
    for harmonic in range(2, 7):
        amplitude = rng.uniform(0.04, 0.2) / harmonic ** 0.5
        outline += np.float32(amplitude) * np.cos(harmonic * bearing + rng.uniform(0, 2 * np.pi))
    inside = (distance <= np.float32(radius) * outline) & allowed[box]
    # Blotches at two scales, stretched so that they span the tumor's HU range.
    coarse = rng.standard_normal(inside.shape, dtype=np.float32)
    coarse = scipy.ndimage.gaussian_filter(coarse, max(radius * 0.18, 0.5), mode="nearest")
    fine = rng.standard_normal(inside.shape, dtype=np.float32)
    fine = scipy.ndimage.gaussian_filter(fine, max(radius * 0.07, 0.5), mode="nearest")
    texture = coarse / max(float(coarse.std()), 1e-6) + 0.6 * fine / max(float(fine.std()), 1e-6)
    texture = np.clip(0.5 + 0.3 * texture, 0.0, 1.0)
    low = rng.uniform(30.0, 45.0)
    high = rng.uniform(100.0, 120.0)
    values = low + (high - low) * texture
    canvas.hu[box][inside] = values[inside]
    return canvas.full(box, inside)


def _filtered_noise_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after scipy's 2-D Gaussian filter of ``sigma``."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    return float(np.sum(kernel**2))
