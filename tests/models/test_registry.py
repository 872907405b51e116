"""Tests of kidney_lab/models/registry.py, parametrised over every registered model.

Each model is built once per module, at the smallest size its spec allows (at least 32 pixels),
with random weights; tests that change a cached model (training, freezing) run after the ones
that only read it, or put it back as they found it. No test downloads anything: the ImageNet
cases replace the backbone constructor with one that fails or succeeds the way Keras would.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest

from kidney_lab import errors
from kidney_lab.data import classes
from kidney_lab.models import layers as model_layers
from kidney_lab.models import builders
from kidney_lab.models import ood
from kidney_lab.models import registry

WEIGHTS_URL = "https://storage.googleapis.com/x/y_notop.h5"
# What keras.utils.get_file raises when DNS fails (urllib's URLError has errno None).
DOWNLOAD_FAILURE = f"URL fetch failure on {WEIGHTS_URL}: None -- [Errno -2] Name or service not known"
DAMAGED_FILE = "Unable to synchronously open file (truncated file: eof = 1024, sblock->base_addr = 0)"


def tiny_size(spec: registry.ModelSpec) -> int:
    """At least 32 pixels and the spec's minimum, rounded up to its size multiple."""
    return math.ceil(max(spec.min_size, 32) / spec.size_multiple) * spec.size_multiple


def random_images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """Raw 0-255 RGB pixels, float32, shape (count, size, size, 3)."""
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's probabilities in inference mode, as numpy."""
    return keras.ops.convert_to_numpy(model(images, training=False))


@pytest.fixture(scope="module")
def model_cache() -> dict[str, builders.BuiltModel]:
    """Models built in this module, by registry name."""
    return {}


@pytest.fixture
def built(name: str, model_cache: dict[str, builders.BuiltModel]) -> builders.BuiltModel:
    """The model ``name`` at its tiny size with random weights, built once per module."""
    if name not in model_cache:
        spec = registry.get_spec(name)
        model_cache[name] = builders.create_model(name, tiny_size(spec), weights="none")
    return model_cache[name]


# Building and reading the graph.


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_forward_pass_gives_float32_probabilities(name: str, built: builders.BuiltModel) -> None:
    size = tiny_size(built.spec)
    model = built.model
    assert built.spec.name == name
    assert built.image_size == size
    assert built.weights == registry.WEIGHTS_RANDOM
    assert built.weights_note is None
    assert tuple(model.input_shape) == (None, size, size, 3)

    probabilities = predict(model, random_images(size))
    assert probabilities.shape == (2, len(classes.CLASS_NAMES))
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    output_layer = model.get_layer(registry.OUTPUT_LAYER)
    assert output_layer.dtype_policy.compute_dtype == "float32"
    assert model.outputs[0].dtype == "float32"


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_graph_is_flat_and_cam_layer_is_a_spatial_map(name: str, built: builders.BuiltModel) -> None:
    model = built.model
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert nested == []

    cam_layer = model.get_layer(built.spec.cam_layer)
    shape = tuple(cam_layer.output.shape)
    assert len(shape) == 4
    assert shape[0] is None
    assert shape[1] >= 1 and shape[2] >= 1 and shape[3] >= 1

    feature_map = keras.Model(model.inputs[0], cam_layer.output)
    values = keras.ops.convert_to_numpy(feature_map(random_images(built.image_size), training=False))
    assert values.shape == (2,) + shape[1:]

    # LayerCAM's finer layers: spatial maps, each finer than the one before.
    sides = [shape[1]] + [model.get_layer(layer).output.shape[1] for layer in built.spec.fine_cam_layers]
    assert all(len(model.get_layer(layer).output.shape) == 4 for layer in built.spec.fine_cam_layers)
    assert sides == sorted(set(sides)), f"{name}: fine_cam_layers must go from coarse to fine, got sides {sides}"
    assert (len(sides) == 1) == (built.spec.family == "transformer")

    # The OOD detector's earlier layers exist and pool into one feature vector with the head's.
    assert built.spec.ood_layers, f"{name}: the OOD detector needs earlier layers (see ModelSpec.ood_layers)"
    sizes = ood.segment_sizes(model, built.spec.ood_layers)
    features = ood.pooled_features(model, random_images(built.image_size), layers=built.spec.ood_layers)
    assert features.shape == (2, sum(sizes)) and np.isfinite(features).all()


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_min_cam_size_is_the_smallest_input_with_a_3x3_cam_grid(name: str) -> None:
    spec = registry.get_spec(name)
    sides = {}
    for size in (spec.min_cam_size - spec.size_multiple, spec.min_cam_size):
        keras.backend.clear_session()
        model = builders.create_model(name, size, "none").model
        sides[size] = model.get_layer(spec.cam_layer).output.shape[1]
    assert sides == {spec.min_cam_size - spec.size_multiple: 2, spec.min_cam_size: 3}


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_every_model_has_a_demo_recipe_and_a_place_in_a_lane(name: str) -> None:
    spec = registry.get_spec(name)
    assert isinstance(spec.demo_epochs, int) and spec.demo_epochs >= 1
    assert 0 < spec.demo_learning_rate < 1
    # The demo trains two lanes, one process each; within a lane every model has its own turn.
    assert spec.demo_lane in (0, 1)
    same_lane = [other for other in registry.REGISTRY.values() if other.demo_lane == spec.demo_lane]
    assert [other.demo_turn for other in same_lane].count(spec.demo_turn) == 1


def test_mixed_precision_keeps_the_output_in_float32() -> None:
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = builders.create_model("mobilenetv2", 32).model
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("preprocessing").compute_dtype == "float16"
    assert model.get_layer(registry.OUTPUT_LAYER).compute_dtype == "float32"
    probabilities = predict(model, random_images(32))
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("mobilenetv2", "tf"), ("resnet50", "caffe"), ("inceptionv3", "tf")],
)
def test_preprocessing_layer_matches_the_backbone(
    name: str, mode: str, built: builders.BuiltModel
) -> None:
    model = built.model
    preprocessing = [
        layer for layer in model.layers if isinstance(layer, model_layers.ImagePreprocessing)
    ]
    assert [layer.get_config()["mode"] for layer in preprocessing] == [mode]
    assert preprocessing[0].input is model.inputs[0]
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)


@pytest.mark.parametrize("name", ["efficientnetb0"])
def test_efficientnetb0_rescales_once_inside_its_backbone(
    name: str, built: builders.BuiltModel
) -> None:
    model = built.model
    assert not any(isinstance(layer, model_layers.ImagePreprocessing) for layer in model.layers)
    rescalings = [layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescalings) == 1
    config = rescalings[0].get_config()
    assert config["scale"] == pytest.approx(1 / 255)
    assert config["offset"] == 0
    # The rescaling reads the raw pixels: nothing rescales them before it.
    assert rescalings[0].input is model.inputs[0]
    images = random_images(built.image_size)
    rescaled = keras.Model(model.inputs[0], rescalings[0].output)(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rescaled), images / 255, rtol=1e-6)


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_describe_is_json_with_every_fact(name: str) -> None:
    spec = registry.get_spec(name)
    description = registry.describe(spec)
    assert json.loads(json.dumps(description)) == description
    assert description["name"] == name
    assert description["cam_layer"] == spec.cam_layer
    assert description["fine_cam_layers"] == list(spec.fine_cam_layers)
    assert description["default_size"] == spec.default_size
    facts = {field.name for field in dataclasses.fields(registry.ModelSpec)} - {"build_backbone"}
    assert set(description) == facts


# Saving, loading and training (these change or reuse the cached models).


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_save_and_safe_load_predict_the_same(
    name: str, built: builders.BuiltModel, tmp_path: Path
) -> None:
    path = tmp_path / "model.keras"
    built.model.save(path)
    loaded = builders.load_model(path)

    images = random_images(built.image_size, seed=1)
    np.testing.assert_allclose(predict(loaded, images), predict(built.model, images), atol=1e-6)
    cam_layer = loaded.get_layer(built.spec.cam_layer)
    assert tuple(cam_layer.output.shape) == tuple(
        built.model.get_layer(built.spec.cam_layer).output.shape
    )


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_one_train_step_gives_a_finite_loss(name: str, built: builders.BuiltModel) -> None:
    model = built.model
    # Eager execution: tracing a whole backbone for a single step costs far more than the step.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", run_eagerly=True
    )
    labels = keras.utils.to_categorical([0, 3], num_classes=len(classes.CLASS_NAMES))
    loss = model.train_on_batch(random_images(built.image_size, seed=2), labels)
    assert np.isfinite(float(np.ravel(loss)[0]))


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_set_backbone_trainable(name: str, built: builders.BuiltModel) -> None:
    model = built.model
    original = {layer.name: layer.trainable for layer in model.layers}
    try:
        builders.set_backbone_trainable(model, False)
        with_weights = {layer.name for layer in model.layers if layer.trainable_weights}
        assert with_weights == {registry.OUTPUT_LAYER}
        assert all(model.get_layer(head).trainable for head in registry.HEAD_LAYERS)

        builders.set_backbone_trainable(model, True)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert not layer.trainable, layer.name
                assert not layer.trainable_weights, layer.name
            else:
                assert layer.trainable, layer.name
    finally:
        for layer in model.layers:
            layer.trainable = original[layer.name]


def test_batchnorm_momentum_reaches_every_batchnorm_layer() -> None:
    model = builders.create_model("mobilenetv2", 32, batchnorm_momentum=0.9).model
    batch_norms = [
        layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms
    assert {layer.momentum for layer in batch_norms} == {0.9}
    assert {layer.get_config()["momentum"] for layer in batch_norms} == {0.9}


# Sizes.


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_default_sizes(name: str) -> None:
    expected = 299 if name == "inceptionv3" else 224
    spec = registry.get_spec(name)
    assert spec.default_size == expected
    assert spec.check_size(expected) == expected


def test_inceptionv3_below_its_minimum_is_a_config_error() -> None:
    spec = registry.get_spec("inceptionv3")
    assert spec.check_size(75) == 75
    with pytest.raises(errors.ConfigError, match="75"):
        spec.check_size(74)


def test_vit_size_off_its_patch_grid_suggests_valid_sizes() -> None:
    spec = registry.get_spec("vit")
    patch = spec.size_multiple
    assert patch > 1
    with pytest.raises(errors.ConfigError, match=f"use {4 * patch} or {5 * patch}"):
        spec.check_size(4 * patch + 1)


@pytest.mark.parametrize("size", [True, False, -32, 0, 31, 32.0, "64", None])
@pytest.mark.parametrize("name", ["mobilenetv2", "vit"])
def test_bad_sizes_are_config_errors(name: str, size: Any) -> None:
    with pytest.raises(errors.ConfigError):
        registry.get_spec(name).check_size(size)


def test_create_model_checks_the_size_before_building() -> None:
    with pytest.raises(errors.ConfigError, match="75"):
        builders.create_model("inceptionv3", 74)


# Names.


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_get_spec_accepts_any_case_and_the_display_name(name: str) -> None:
    spec = registry.REGISTRY[name]
    for alias in (name, name.upper(), spec.display_name, spec.display_name.upper()):
        assert registry.get_spec(alias) is spec


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("ResNet50", "resnet50"),
        ("EfficientNetB0", "efficientnetb0"),
        ("MobileNetV2", "mobilenetv2"),
        ("InceptionV3", "inceptionv3"),
        ("ViT", "vit"),
        ("Vision Transformer", "vit"),
    ],
)
def test_get_spec_by_display_name(alias: str, name: str) -> None:
    assert registry.get_spec(alias).name == name


def test_unknown_model_lists_every_name() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        registry.get_spec("resnet18")
    for name in registry.MODEL_NAMES:
        assert name in str(caught.value)


def test_parse_all_gives_every_model_in_registry_order() -> None:
    expected = ["efficientnetb0", "mobilenetv2", "resnet50", "inceptionv3", "vit"]
    assert list(registry.MODEL_NAMES) == expected
    assert registry.parse_model_names("all") == expected
    assert registry.parse_model_names(" ALL ") == expected


def test_parse_names_in_registry_order_without_duplicates() -> None:
    assert registry.parse_model_names("vit, ResNet50") == ["resnet50", "vit"]
    assert registry.parse_model_names("vit,VIT,") == ["vit"]


@pytest.mark.parametrize("text", ["", " , ", "nope", "resnet50,nope"])
def test_parse_bad_names_is_a_config_error(text: str) -> None:
    with pytest.raises(errors.ConfigError):
        registry.parse_model_names(text)


# Weights: no test downloads; the backbone constructor is replaced.

# The real constructor, which the replacements below call.
MOBILENETV2 = keras.applications.MobileNetV2


def offline_constructor(error: Exception, calls: list[Any]) -> Callable[..., keras.Model]:
    """A MobileNetV2 constructor whose ImageNet download raises ``error``."""

    def constructor(**kwargs: Any) -> keras.Model:
        calls.append(kwargs["weights"])
        if kwargs["weights"] == "imagenet":
            raise error
        return MOBILENETV2(**kwargs)

    return constructor


def cached_weights_constructor(calls: list[Any]) -> Callable[..., keras.Model]:
    """A MobileNetV2 constructor that pretends the ImageNet weights were already cached."""

    def constructor(**kwargs: Any) -> keras.Model:
        calls.append(kwargs["weights"])
        return MOBILENETV2(**{**kwargs, "weights": None})

    return constructor


@pytest.fixture
def replace_mobilenetv2_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Callable[..., keras.Model]], None]:
    """Make ``mobilenetv2`` build with another constructor for this test.

    The registry names the backbone's constructor and the builder looks it up in
    ``keras.applications`` when a model is built, so it is replaced there.
    """

    def replace(constructor: Callable[..., keras.Model]) -> None:
        monkeypatch.setattr(keras.applications, "MobileNetV2", constructor)

    return replace


@pytest.fixture
def keras_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A KERAS_HOME of this test's own."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def test_keras_weights_folder_follows_keras_home(keras_home: Path) -> None:
    assert builders.keras_weights_folder() == keras_home / "models"


def test_keras_weights_folder_defaults_to_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert builders.keras_weights_folder() == tmp_path / ".keras" / "models"


def test_failed_download_with_imagenet_says_what_to_do(
    replace_mobilenetv2_constructor: Callable[[Callable[..., keras.Model]], None],
    keras_home: Path,
) -> None:
    calls: list[Any] = []
    replace_mobilenetv2_constructor(offline_constructor(Exception(DOWNLOAD_FAILURE), calls))
    with pytest.raises(registry.WeightsUnavailableError) as caught:
        builders.create_model("mobilenetv2", 32, weights="imagenet")
    message = str(caught.value)
    assert calls == ["imagenet"]
    assert WEIGHTS_URL in message
    assert str(builders.keras_weights_folder()) in message
    assert str(keras_home / "models") in message
    assert "--weights none" in message
    assert "Name or service not known" in message
    assert "None --" not in message


def test_damaged_weights_file_points_at_the_keras_folder(
    replace_mobilenetv2_constructor: Callable[[Callable[..., keras.Model]], None],
    keras_home: Path,
) -> None:
    replace_mobilenetv2_constructor(offline_constructor(OSError(DAMAGED_FILE), []))
    with pytest.raises(registry.WeightsUnavailableError) as caught:
        builders.create_model("mobilenetv2", 32, weights="imagenet")
    message = str(caught.value)
    assert "truncated file" in message
    assert str(keras_home / "models") in message
    assert "--weights none" in message


def test_failed_download_with_auto_falls_back_to_random(
    replace_mobilenetv2_constructor: Callable[[Callable[..., keras.Model]], None],
) -> None:
    calls: list[Any] = []
    replace_mobilenetv2_constructor(offline_constructor(Exception(DOWNLOAD_FAILURE), calls))
    built = builders.create_model("mobilenetv2", 32, weights="auto")
    assert calls == ["imagenet", None]
    assert built.weights == registry.WEIGHTS_RANDOM
    assert built.weights_note is not None
    assert "random" in built.weights_note
    assert WEIGHTS_URL in built.weights_note
    assert predict(built.model, random_images(32)).shape == (2, len(classes.CLASS_NAMES))


def test_available_weights_are_reported_as_imagenet(
    replace_mobilenetv2_constructor: Callable[[Callable[..., keras.Model]], None],
) -> None:
    calls: list[Any] = []
    replace_mobilenetv2_constructor(cached_weights_constructor(calls))
    for choice in ("imagenet", "auto"):
        built = builders.create_model("mobilenetv2", 32, weights=choice)
        assert built.weights == registry.WEIGHTS_IMAGENET
        assert built.weights_note is None
    assert calls == ["imagenet", "imagenet"]


def test_weights_none_never_asks_for_imagenet(
    replace_mobilenetv2_constructor: Callable[[Callable[..., keras.Model]], None],
) -> None:
    calls: list[Any] = []
    replace_mobilenetv2_constructor(offline_constructor(Exception(DOWNLOAD_FAILURE), calls))
    built = builders.create_model("mobilenetv2", 32, weights="none")
    assert calls == [None]
    assert built.weights == registry.WEIGHTS_RANDOM
    assert built.weights_note is None


def test_vit_has_no_imagenet_weights() -> None:
    assert registry.get_spec("vit").imagenet_weights is False
    with pytest.raises(registry.WeightsUnavailableError, match="--weights none"):
        builders.create_model("vit", 32, weights="imagenet")
    built = builders.create_model("vit", 32, weights="auto")
    assert built.weights == registry.WEIGHTS_RANDOM
    assert built.weights_note is not None
    assert "random" in built.weights_note


@pytest.mark.parametrize("weights", ["pretrained", "ImageNet", "", None])
def test_unknown_weights_choice_is_a_config_error(weights: Any) -> None:
    with pytest.raises(errors.ConfigError, match="auto, imagenet, none"):
        builders.create_model("vit", 32, weights=weights)


# Loading refuses what is not a safe kidney_lab classifier.


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(registry.ModelLoadError, match="No model file"):
        builders.load_model(tmp_path / "absent.keras")


def test_load_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(registry.ModelLoadError, match="Cannot load model"):
        builders.load_model(path)


def test_load_refuses_a_lambda_layer(tmp_path: Path) -> None:
    # A 4-class output, so only safe_mode stands between this file and a loaded model.
    inputs = keras.Input((8,))
    doubled = keras.layers.Lambda(lambda values: values * 2)(inputs)
    outputs = keras.layers.Dense(len(classes.CLASS_NAMES), activation="softmax")(doubled)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(registry.ModelLoadError, match="Lambda"):
        builders.load_model(path)


def test_load_refuses_a_three_class_model(tmp_path: Path) -> None:
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(features)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(registry.ModelLoadError, match="4-class"):
        builders.load_model(path)
