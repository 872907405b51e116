"""Tests of kidney_lab/models/layers.py: the preprocessing layer matches keras.applications."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import pytest

from kidney_lab import errors
from kidney_lab.models import layers


def random_pixels(dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """Raw 0-255 RGB pixels of shape (2, 8, 8, 3), distinct in every channel."""
    pixels = np.random.default_rng(seed).uniform(0, 255, (2, 8, 8, 3))
    return pixels.round().astype(dtype) if dtype == "uint8" else pixels.astype(dtype)


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("none", lambda pixels: pixels.astype("float32")),
    ],
    ids=["caffe", "tf", "none"],
)
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_preprocessing_matches_keras_applications(
    mode: str, reference: Callable[[np.ndarray], np.ndarray], dtype: str
) -> None:
    pixels = random_pixels(dtype)
    # preprocess_input may work in place, so each side gets its own copy.
    expected = reference(pixels.copy())
    result = keras.ops.convert_to_numpy(layers.ImagePreprocessing(mode)(pixels.copy()))
    assert result.shape == pixels.shape
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-4)


def test_caffe_mode_reverses_channels_and_subtracts_the_bgr_means() -> None:
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    result = keras.ops.convert_to_numpy(layers.ImagePreprocessing("caffe")(pixel))
    expected = np.array([30.0, 20.0, 10.0]) - np.array(layers.CAFFE_MEAN_BGR)
    np.testing.assert_allclose(result[0, 0, 0], expected, rtol=1e-6)


def test_tf_mode_maps_0_and_255_to_minus_1_and_1() -> None:
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    result = keras.ops.convert_to_numpy(layers.ImagePreprocessing("tf")(pixels))
    np.testing.assert_allclose(result[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-7)


def test_none_mode_is_identity() -> None:
    pixels = random_pixels(seed=1)
    result = keras.ops.convert_to_numpy(layers.ImagePreprocessing("none")(pixels))
    np.testing.assert_array_equal(result, pixels)


@pytest.mark.parametrize("mode", ["imagenet", "CAFFE", "", None])
def test_unknown_mode_is_a_config_error(mode: object) -> None:
    with pytest.raises(errors.ConfigError, match="caffe, tf, none"):
        layers.ImagePreprocessing(mode)


@pytest.mark.parametrize("mode", layers.PREPROCESSING_MODES)
def test_config_round_trip(mode: str) -> None:
    layer = layers.ImagePreprocessing(mode, name="preprocessing")
    config = layer.get_config()
    assert config["mode"] == mode
    clone = layers.ImagePreprocessing.from_config(config)
    assert clone.mode == mode
    assert clone.get_config() == config

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "kidney_lab>ImagePreprocessing"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is layers.ImagePreprocessing
    assert restored.get_config() == config


def test_output_shape_is_the_input_shape() -> None:
    layer = layers.ImagePreprocessing("tf")
    assert tuple(layer.compute_output_shape((None, 32, 32, 3))) == (None, 32, 32, 3)
    symbolic = layer(keras.Input((32, 32, 3)))
    assert tuple(symbolic.shape) == (None, 32, 32, 3)
