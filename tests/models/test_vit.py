"""Tests of kidney_lab/models/vit.py: shapes, serialization, size checks and one train step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kidney_lab import errors
from kidney_lab.models import vit
from kidney_lab.models import vit_presets

TINY_SIZE = 32
TINY_CONFIG = {
    "patch_size": 8,
    "dim": 16,
    "depth": 1,
    "heads": 2,
    "mlp_dim": 32,
    "dropout": 0.1,
    "stem_channels": (8,),
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def tiny_model(size: int = TINY_SIZE, **overrides: object) -> keras.Model:
    """The tiny ViT with a 4-way softmax head, as the registry would assemble it."""
    inputs = keras.Input((size, size, 3))
    features = vit.build_vit(inputs, **{**TINY_CONFIG, **overrides})
    features = keras.layers.Dropout(0.2)(features)
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32")(features)
    return keras.Model(inputs, outputs)


def tiny_batch(count: int = 4, size: int = TINY_SIZE, seed: int = 0) -> np.ndarray:
    """Random raw 0-255 pixels, float32, shape (count, size, size, 3)."""
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("stem_channels", [(), (8,)])
def test_forward_pass_and_token_grid_shapes(stem_channels: tuple[int, ...]) -> None:
    model = tiny_model(stem_channels=stem_channels)
    probabilities = model.predict(tiny_batch(), verbose=0)
    assert probabilities.shape == (4, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    grid = TINY_SIZE // TINY_CONFIG["patch_size"]
    token_grid = model.get_layer(vit_presets.TOKEN_GRID_LAYER)
    assert tuple(token_grid.output.shape) == (None, grid, grid, TINY_CONFIG["dim"])
    grid_model = keras.Model(model.inputs, token_grid.output)
    assert grid_model.predict(tiny_batch(), verbose=0).shape == (4, grid, grid, TINY_CONFIG["dim"])


def test_backbone_output_is_pooled_features() -> None:
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    features = vit.build_vit(inputs, **TINY_CONFIG)
    assert tuple(features.shape) == (None, TINY_CONFIG["dim"])


def test_default_config_builds_at_min_size() -> None:
    inputs = keras.Input((vit_presets.MIN_SIZE, vit_presets.MIN_SIZE, 3))
    features = vit.build_vit(inputs, **vit_presets.DEFAULT_CONFIG)
    assert tuple(features.shape) == (None, vit_presets.DEFAULT_CONFIG["dim"])


@pytest.mark.parametrize(
    "layer",
    [
        vit.PatchEmbedding(8, 16, stem_channels=(4, 8), name="patches"),
        vit.PatchEmbedding(4, 16),
        vit.PositionEmbedding(initializer_stddev=0.05, name="positions"),
        vit.TransformerBlock(16, 2, 32, dropout=0.1, name="block"),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer: keras.layers.Layer) -> None:
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("kidney_lab>")
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert restored.get_config() == config


def test_saved_model_loads_safely_and_predicts_the_same(tmp_path: Path) -> None:
    model = tiny_model()
    images = tiny_batch(seed=1)
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)
    result = keras.ops.convert_to_numpy(loaded(images, training=False))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    assert loaded.get_layer(vit_presets.TOKEN_GRID_LAYER).output.shape == model.get_layer(
        vit_presets.TOKEN_GRID_LAYER
    ).output.shape

    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", expected)
    script = (
        "import sys, numpy, keras, kidney_lab.models.vit; "
        "folder = sys.argv[1]; "
        "model = keras.saving.load_model(folder + '/model.keras', safe_mode=True); "
        "result = keras.ops.convert_to_numpy(model(numpy.load(folder + '/images.npy'))); "
        "numpy.testing.assert_allclose(result, numpy.load(folder + '/expected.npy'), "
        "rtol=1e-5, atol=1e-6)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (100, "divisible by its patch size 16; got 100, use 96 or 112"),
        (24, "divisible by its patch size 16; got 24, use 32"),
        (16, "at least 2 x 2 patches"),
    ],
)
def test_bad_image_size_is_a_config_error(size: int, message: str) -> None:
    inputs = keras.Input((size, size, 3))
    with pytest.raises(errors.ConfigError, match=message):
        vit.build_vit(inputs, patch_size=16, dim=16, depth=1, heads=2, mlp_dim=32, stem_channels=())


@pytest.mark.parametrize(
    "overrides",
    [
        {"heads": 3},
        {"depth": 0},
        {"dropout": 1.0},
        {"patch_size": 8, "stem_channels": (4, 4, 4, 4)},
    ],
)
def test_bad_hyper_parameters_are_config_errors(overrides: dict[str, object]) -> None:
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    with pytest.raises(errors.ConfigError):
        vit.build_vit(inputs, **{**TINY_CONFIG, **overrides})


def test_non_square_input_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="square RGB"):
        vit.build_vit(keras.Input((32, 48, 3)), **TINY_CONFIG)


def test_training_reduces_loss_on_a_separable_batch() -> None:
    keras.utils.set_random_seed(0)
    model = tiny_model(dropout=0.0)
    loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(keras.optimizers.Adam(3e-3), loss, jit_compile=False)
    # Four classes told apart by brightness alone: a trivially separable batch.
    labels = np.repeat(np.arange(4), 2)
    images = np.broadcast_to(
        (labels * 80.0).astype(np.float32)[:, None, None, None], (8, TINY_SIZE, TINY_SIZE, 3)
    ).copy()
    images += np.random.default_rng(0).normal(0, 4, images.shape).astype(np.float32)
    first = float(loss(labels, model(images, training=False)))
    step_losses = [float(model.train_on_batch(images, labels)) for _ in range(10)]
    last = float(loss(labels, model(images, training=False)))
    assert np.all(np.isfinite(step_losses))
    assert last < first
