"""Small helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(pixels: np.ndarray, image_format: str = "PNG", **options: object) -> bytes:
    """Encode an array as image bytes with Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def textured(seed: int, size: tuple[int, int] = (48, 48)) -> np.ndarray:
    """A grayscale uint8 image with coarse random structure, distinct for each seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1)).astype(np.uint8)
    return np.kron(coarse, np.ones((8, 8), dtype=np.uint8))[: size[0], : size[1]]
