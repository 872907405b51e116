"""The tf.data input pipeline: from a split manifest to batches of raw-pixel images and labels.

Images come out as float32 tensors of shape ``(batch, size, size, 3)`` holding raw 0-255 pixel
values: each model carries its own preprocessing (see DESIGN.md), so nothing here rescales.
Inside the pipeline an image is one grayscale channel (CT is grayscale; the Kaggle originals
are RGB files with R = G = B, and a colour file is reduced with the ITU-R 601 luma weights that
Pillow uses); it is repeated to the three channels the backbones take only at the end, so
decoding, the cache and augmentation do a third of the work.

Parallelism is fixed (one call per CPU, two batches prefetched) rather than autotuned: with
TensorFlow 2.21 an autotuned dataset's iterator can take seconds to be destroyed, which would
stall the end of every epoch. Each image is resized to fit
``size`` with its aspect ratio kept and padded with black (air) to a square.

Every element is an ``(image, label)`` pair made from one manifest row, and optionally its path,
from the first step to the last: no shuffle, cache or parallel map can separate an image from
its label, which is how the original study got its 0.25 F1.

JPEG, PNG, BMP and GIF files in 8-bit modes are decoded by TensorFlow in parallel; other files
(TIFF, 16-bit or CMYK images) go through :func:`kidney_lab.data.scan.read_scan`, the same reader
the app uses for uploads.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from kidney_lab.data import classes
from kidney_lab.data import discover
from kidney_lab.data import scan as scan_module

# Parallel decoding and augmentation calls, and batches made ahead of the consumer.
_PARALLEL_CALLS = max(2, os.cpu_count() or 1)
_PREFETCH_BATCHES = 2
# ITU-R 601 luma, as Pillow's convert("L"); the weights sum to 1, so R = G = B is kept exactly.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random changes applied to training images, each off at 0.

    Flip, rotation and zoom are composed into one affine transform per image and applied to a
    whole batch by one ``ImageProjectiveTransformV3`` op (bilinear, black fill); brightness and
    contrast are arithmetic on the pixels. One fused op per batch instead of one Keras layer per
    change keeps augmentation from throttling the input on a 2-core machine.

    Attributes:
        flip: Mirror left-right with probability 0.5 (axial slices have two kidneys; mirroring
            keeps the anatomy plausible).
        rotation: Largest rotation as a fraction of a full turn (0.03 is about 11 degrees).
        zoom: Largest zoom in or out as a fraction of the size.
        brightness: Largest brightness shift as a fraction of the 0-255 range.
        contrast: Largest contrast change as a fraction (0.1: factor 0.9 to 1.1 about the mean).
    """

    flip: bool = True
    rotation: float = 0.03
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "brightness", "contrast"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"Augmentation {name} must be at least 0 and below 1, got {value}.")

    @classmethod
    def off(cls) -> "Augmentation":
        """No augmentation."""
        return cls(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)

    @property
    def enabled(self) -> bool:
        """Whether any change is switched on."""
        return self.flip or any(
            value > 0 for value in (self.rotation, self.zoom, self.brightness, self.contrast)
        )

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment a float32 batch ``(batch, height, width, channels)`` of 0-255 pixels.

        ``seed`` is a shape-(2,) int tensor: the same seed gives the same changes.
        """
        count = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 5)

        def uniform(index: int, limit: float) -> tf.Tensor:
            return tf.random.stateless_uniform([count], seeds[index], -limit, limit)

        if self.flip or self.rotation > 0 or self.zoom > 0:
            images = self._transform(images, uniform)
        if self.contrast > 0:
            factor = 1.0 + uniform(3, self.contrast)
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = (images - mean) * factor[:, None, None, None] + mean
        if self.brightness > 0:
            images = images + uniform(4, self.brightness * 255.0)[:, None, None, None]
        return tf.clip_by_value(images, 0.0, 255.0)

    def _transform(self, images: tf.Tensor, uniform: Callable[[int, float], tf.Tensor]) -> tf.Tensor:
        """Flip, rotate and zoom each image of the batch about its centre in one op."""
        count = tf.shape(images)[0]
        height = tf.cast(tf.shape(images)[1], tf.float32)
        width = tf.cast(tf.shape(images)[2], tf.float32)
        angle = uniform(0, self.rotation * 2.0 * np.pi)
        scale = 1.0 + uniform(1, self.zoom)
        mirror = tf.where(uniform(2, 1.0) < 0, -1.0, 1.0) if self.flip else tf.ones([count])
        # The transform maps each output pixel to the input pixel it samples, about the centre.
        cosine, sine = tf.cos(angle) / scale, tf.sin(angle) / scale
        a0, a1 = cosine * mirror, -sine
        b0, b1 = sine * mirror, cosine
        centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        a2 = centre_x - a0 * centre_x - a1 * centre_y
        b2 = centre_y - b0 * centre_x - b1 * centre_y
        zeros = tf.zeros([count])
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )


def make_dataset(
    frame: pd.DataFrame,
    image_size: int,
    *,
    batch_size: int = 32,
    training: bool = False,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    cache: bool | str = True,
    with_paths: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Build a batched dataset from manifest rows.

    Args:
        frame: Rows with ``path`` and ``label`` (a class name); ``format`` and ``mode`` columns
            from the dataset scan are used when present, otherwise each file's header is read.
        image_size: Side of the square images, in pixels.
        batch_size: Images per batch.
        training: Shuffle every epoch and apply ``augmentation``.
        augmentation: Defaults to :class:`Augmentation()` when training; ignored otherwise.
        seed: Seed of the shuffle and the augmentation; the same seed gives the same epochs.
        cache: True caches decoded, resized images in memory (as uint8); a string caches them in
            that file; False decodes every epoch.
        with_paths: Yield ``(images, labels, paths)`` instead of ``(images, labels)``.
        drop_remainder: Drop the last incomplete batch.

    Returns:
        Batches of float32 images ``(batch, image_size, image_size, 3)`` in 0-255 and one-hot
        float32 labels ``(batch, 4)`` in the order of :data:`CLASS_NAMES`.

    Raises:
        ValueError: An unknown label, an empty frame or an image size below 8.
    """
    if len(frame) == 0:
        raise ValueError("No images to build a dataset from.")
    if image_size < 8:
        raise ValueError(f"Image size must be at least 8 pixels, got {image_size}.")
    unknown = sorted(set(frame["label"]) - set(classes.CLASS_NAMES))
    if unknown:
        raise ValueError(f"Unknown labels {unknown}; the classes are {', '.join(classes.CLASS_NAMES)}.")

    paths = frame["path"].astype(str).tolist()
    labels = np.array([classes.CLASS_NAMES.index(label) for label in frame["label"]], dtype=np.int32)
    native = np.array(_decodable_by_tensorflow(frame), dtype=bool)

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels, native))
    if training and not cache:
        # Without a cache, shuffle the file list, not decoded images, so memory stays small.
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda path, label, is_native: (_load(path, is_native, image_size), label, path),
        num_parallel_calls=_PARALLEL_CALLS,
    )
    if cache is True:
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(str(cache))
    if training and cache:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    augment = (augmentation or Augmentation()) if training else None
    if augment is not None and augment.enabled:
        # One stateless seed per image, drawn afresh each epoch and the same for the same seed.
        # Per image, not per batch: tf.data then spreads the transforms over both cores.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda element, image_seed: (
                augment(tf.cast(element[0], tf.float32)[None], image_seed)[0], *element[1:]
            ),
            num_parallel_calls=_PARALLEL_CALLS,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def finish(images: tf.Tensor, label_ids: tf.Tensor, batch_paths: tf.Tensor):
        # Tiling before the cast moves a quarter of the bytes; this is the per-batch hot spot.
        images = tf.cast(tf.tile(images, [1, 1, 1, 3]), tf.float32)
        one_hot = tf.one_hot(label_ids, len(classes.CLASS_NAMES), dtype=tf.float32)
        return (images, one_hot, batch_paths) if with_paths else (images, one_hot)

    dataset = dataset.map(finish, num_parallel_calls=_PARALLEL_CALLS)
    options = tf.data.Options()
    # TensorFlow 2.21's autotuner makes destroying an iterator wait for its thread's next wake-up
    # (up to seconds, doubling each time), which stalls every epoch's end; fixed parallelism on a
    # few cores loses nothing measurable.
    options.autotune.enabled = False
    return dataset.prefetch(_PREFETCH_BATCHES).with_options(options)


def resize_with_pad(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize an ``(H, W, C)`` image to fit ``image_size`` square, keeping its aspect ratio.

    A large reduction is done in two steps: first an average over ``k x k`` blocks for the
    largest whole ``k`` that leaves the image no smaller than the target, which removes the
    detail that would alias, then bilinear interpolation for the rest (a factor between 0.5 and
    1). This matches an antialiased resize closely at a fraction of its cost. The image is
    centred and padded with zeros. Returns float32.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    scale = tf.minimum(image_size / height, image_size / width)
    block = tf.maximum(1, tf.cast(tf.floor(1.0 / scale), tf.int32))
    image = tf.cond(block > 1, lambda: _block_mean(image, block), lambda: image)
    new_height = tf.maximum(1, tf.cast(tf.round(height * scale), tf.int32))
    new_width = tf.maximum(1, tf.cast(tf.round(width * scale), tf.int32))
    resized = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear")
    top = (image_size - new_height) // 2
    left = (image_size - new_width) // 2
    return tf.image.pad_to_bounding_box(resized, top, left, image_size, image_size)


def _block_mean(image: tf.Tensor, block: tf.Tensor) -> tf.Tensor:
    """Average ``image`` over ``block x block`` tiles; partial tiles at the edges average what
    they hold."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    padding = [[0, (-height) % block], [0, (-width) % block], [0, 0]]

    def tile_sums(values: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(values)
        tiles = tf.reshape(values, [shape[0] // block, block, shape[1] // block, block, shape[2]])
        return tf.reduce_sum(tiles, axis=[1, 3])

    counts = tile_sums(tf.pad(tf.ones([height, width, 1]), padding))
    return tile_sums(tf.pad(image, padding)) / counts


def prepare_scan(image: np.ndarray, image_size: int) -> np.ndarray:
    """Turn a scan from :func:`read_scan` (float in [0, 1]) into one model input.

    Returns:
        float32 array ``(1, image_size, image_size, 3)`` of 0-255 pixels, exactly as the
        pipeline feeds the model (same grayscale reduction, rounding, resize and padding).
    """
    gray = _luma_uint8(np.asarray(image, dtype=np.float32) * 255.0)
    resized = tf.round(resize_with_pad(gray, image_size))
    return np.repeat(resized.numpy()[None], 3, axis=-1)


def _luma_uint8(pixels: np.ndarray) -> np.ndarray:
    """Reduce ``(H, W)`` or ``(H, W, 3)`` 0-255 pixels to one uint8 channel ``(H, W, 1)``."""
    if pixels.ndim == 3:
        pixels = pixels @ _LUMA_WEIGHTS
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)[..., None]


def _load(path: tf.Tensor, is_native: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode one file to uint8 grayscale ``(image_size, image_size, 1)``."""
    image = tf.cond(
        is_native,
        lambda: tf.io.decode_image(
            tf.io.read_file(path), channels=1, dtype=tf.uint8, expand_animations=False
        ),
        lambda: tf.numpy_function(_read_with_pillow, [path], tf.uint8, stateful=False),
    )
    image = tf.ensure_shape(image, [None, None, 1])
    resized = resize_with_pad(image, image_size)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _read_with_pillow(path: bytes) -> np.ndarray:
    """Read a file TensorFlow cannot decode through the scan reader, as uint8 grayscale."""
    return _luma_uint8(scan_module.read_scan(os.fsdecode(path)).image * 255.0)


def _decodable_by_tensorflow(frame: pd.DataFrame) -> list[bool]:
    """Whether TensorFlow's decoders handle each row's file (8-bit JPEG, PNG, BMP or GIF)."""
    if {"format", "mode"} <= set(frame.columns):
        pairs = zip(frame["format"], frame["mode"])
    else:
        pairs = (_format_and_mode(Path(path)) for path in frame["path"])
    return [discover.decodable_by_tensorflow(image_format, mode) for image_format, mode in pairs]


def _format_and_mode(path: Path) -> tuple[str | None, str | None]:
    """Read a file's format and mode from its header (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            return image.format, image.mode
    except (OSError, ValueError):
        return None, None
