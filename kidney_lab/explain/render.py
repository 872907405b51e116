"""Heat maps drawn over their scan, in RGB, and PNG bytes a user can download.

The colour map is "turbo" by default (Mikhailov, Google, 2019): a rainbow map made to be
perceptually smoother than "jet", dark blue for 0 through cyan, green and yellow to dark red for
1. "jet" is offered for people used to older Grad-CAM figures, and "viridis" and "inferno"
(perceptually uniform, readable in greyscale) for those who prefer them. The colours are
plotly's samples of each map, interpolated linearly into a 256-entry table.

Everything here is RGB, channel 0 red: the original study drew OpenCV's BGR colour maps as if
they were RGB, which turned hot regions blue. A test checks that the hot end lands in the red
channel.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import plotly.colors
from PIL import Image

from kidney_lab import errors
from kidney_lab.data import scan as scan_module

COLORMAPS: dict[str, str] = {"turbo": "Turbo", "jet": "Jet", "viridis": "Viridis", "inferno": "Inferno"}
DEFAULT_COLORMAP = "turbo"
DEFAULT_OPACITY = 0.4


@functools.lru_cache(maxsize=len(COLORMAPS))
def colormap_table(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The colour map ``name`` as a uint8 table ``(256, 3)`` of RGB colours, 0 to 1.

    Raises:
        kidney_lab.errors.ConfigError: an unknown colour map.
    """
    if name not in COLORMAPS:
        raise errors.ConfigError(f"Unknown colour map {name!r}; choose from {', '.join(COLORMAPS)}.")
    scale = plotly.colors.get_colorscale(COLORMAPS[name])
    positions = np.linspace(0.0, 1.0, 256)
    samples = plotly.colors.sample_colorscale(scale, list(positions))
    table = np.array([plotly.colors.unlabel_rgb(colour) for colour in samples], dtype=np.float64)
    table = np.clip(np.round(table), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Colour a ``(H, W)`` map in [0, 1] (values outside are clipped): uint8 ``(H, W, 3)`` RGB."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    indices = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.intp)
    return colormap_table(colormap)[indices]


def overlay(
    image: scan_module.Scan | np.ndarray,
    heatmap: np.ndarray,
    opacity: float = DEFAULT_OPACITY,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Blend a coloured heat map over its scan.

    Each pixel is ``(1 - opacity) * scan + opacity * colour(heat)``: 0 shows the scan alone,
    1 the coloured map alone.

    Args:
        image: the scan (a :class:`~kidney_lab.data.scan.Scan`, or an ``(H, W)`` or
            ``(H, W, 3)`` array, uint8 0-255 or float 0-1).
        heatmap: ``(H, W)`` in [0, 1], the scan's own size (as
            :attr:`kidney_lab.explain.cam.Explanation.heatmap` is).
        opacity: weight of the heat map, 0 to 1.
        colormap: one of :data:`COLORMAPS` (turbo by default).

    Returns:
        uint8 ``(H, W, 3)`` RGB.

    Raises:
        kidney_lab.errors.ConfigError: an opacity outside [0, 1], an unknown colour map, or a
            heat map whose shape is not the image's.
    """
    if not 0.0 <= opacity <= 1.0:
        raise errors.ConfigError(f"The opacity must be between 0 and 1; got {opacity!r}.")
    background = _rgb_unit(image.image if isinstance(image, scan_module.Scan) else image)
    if np.shape(heatmap) != background.shape[:2]:
        raise errors.ConfigError(
            f"The heat map ({np.shape(heatmap)}) does not have the image's size "
            f"({background.shape[:2]}); resize it to the scan first."
        )
    colours = colorize(heatmap, colormap).astype(np.float32) / 255.0
    blended = (1.0 - opacity) * background + opacity * colours
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def to_png(array: np.ndarray) -> bytes:
    """Encode an image as PNG bytes.

    Args:
        array: uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB, or float in [0, 1] (a heat map),
            stored as 8-bit grey or RGB.

    Raises:
        kidney_lab.errors.ConfigError: another shape or type.
    """
    values = np.asarray(array)
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] != 3):
        raise errors.ConfigError(f"Only (H, W) or (H, W, 3) images can be saved as PNG; got {values.shape}.")
    if np.issubdtype(values.dtype, np.floating):
        values = np.round(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif values.dtype != np.uint8:
        raise errors.ConfigError(f"PNG images are uint8 or float in [0, 1]; got {values.dtype}.")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values)).save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb_unit(image: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, 3)`` uint8 or [0, 1] float image as float32 RGB in [0, 1]."""
    values = np.asarray(image)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[-1] not in (1, 3):
        raise errors.ConfigError(f"The image must be (H, W) or (H, W, 3); got shape {np.shape(image)}.")
    scaled = values.astype(np.float32) / (255.0 if values.dtype == np.uint8 else 1.0)
    return np.broadcast_to(np.clip(scaled, 0.0, 1.0), values.shape[:2] + (3,))
