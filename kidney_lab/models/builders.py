"""Building and loading the registry's classifiers: the part of :mod:`kidney_lab.models` that
needs Keras (and so TensorFlow).

:func:`create_model` is the one door to a new classifier and :func:`load_model` the one door to a
saved one; both read the model facts from :mod:`kidney_lab.models.registry`, which imports no
Keras. Importing this module registers kidney_lab's own layers (:mod:`kidney_lab.models.layers`,
:mod:`kidney_lab.models.vit`), so a ``model.keras`` file loads with ``safe_mode=True``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import keras

from kidney_lab import errors
from kidney_lab.data import classes
from kidney_lab.models import layers as model_layers
from kidney_lab.models import registry
from kidney_lab.models import vit
from kidney_lab.models import vit_presets


def application_backbone(
    constructor: str, preprocessing: str | None, inputs: Any, weights: str | None
) -> Any:
    """``keras.applications.<constructor>`` on ``inputs``, average-pooled.

    Args:
        constructor: the name of the constructor in ``keras.applications`` (``"ResNet50"``).
        preprocessing: the mode of :class:`kidney_lab.models.layers.ImagePreprocessing` put
            before the backbone, or None when the backbone preprocesses in its own graph.
        inputs: the model's symbolic input of raw 0-255 RGB pixels.
        weights: ``"imagenet"`` or None.

    Returns:
        The pooled features (layer ``avg_pool_features``).
    """
    pixels = inputs
    if preprocessing is not None:
        pixels = model_layers.ImagePreprocessing(preprocessing, name="preprocessing")(inputs)
    base = getattr(keras.applications, constructor)(include_top=False, weights=weights, input_tensor=pixels)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool_features")(base.output)


def vit_backbone(inputs: Any, weights: str | None) -> Any:
    """kidney_lab's Vision Transformer in its default configuration on ``inputs``.

    Raises:
        kidney_lab.models.registry.WeightsUnavailableError: ``weights`` is not None (it has no
            pretrained weights).
    """
    if weights is not None:
        raise registry.WeightsUnavailableError(
            "kidney_lab's Vision Transformer has no ImageNet weights; it trains from random "
            "initialisation (--weights none or auto)."
        )
    return vit.build_vit(inputs, **vit_presets.DEFAULT_CONFIG)


@dataclasses.dataclass(frozen=True)
class BuiltModel:
    """A freshly built classifier and where its weights came from.

    Attributes:
        model: the Keras model: raw 0-255 RGB in, class probabilities in ``CLASS_NAMES`` order
            out.
        spec: its registry entry.
        image_size: its input side in pixels.
        weights: ``"imagenet"`` or ``"random"``.
        weights_note: why the weights are what they are when that differs from what was asked
            (``weights="auto"`` without ImageNet weights); None otherwise.
    """

    model: keras.Model
    spec: registry.ModelSpec
    image_size: int
    weights: str
    weights_note: str | None


def keras_weights_folder() -> Path:
    """The folder where Keras caches downloaded weight files (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def create_model(
    name: str,
    image_size: int | None = None,
    weights: str = "none",
    dropout: float = 0.2,
    batchnorm_momentum: float | None = None,
) -> BuiltModel:
    """Build the classifier ``name`` for ``image_size`` x ``image_size`` RGB input.

    Args:
        name: a registry name (see :data:`kidney_lab.models.registry.MODEL_NAMES`).
        image_size: input side in pixels; the spec's default when None.
        weights: ``"none"`` (random initialisation), ``"imagenet"`` (fail when the weights
            cannot be obtained) or ``"auto"`` (ImageNet when possible, else random, with the
            reason in :attr:`BuiltModel.weights_note`).
        dropout: dropout rate before the classifier.
        batchnorm_momentum: when given, the momentum of every BatchNormalization layer. Short
            training runs from scratch need a lower value than Keras' 0.99, whose moving
            statistics otherwise lag far behind the weights and make validation predict one
            class.

    Raises:
        kidney_lab.errors.ConfigError: unknown name, weights choice or size.
        kidney_lab.models.registry.WeightsUnavailableError: ``weights="imagenet"`` and the
            weights cannot be obtained.
    """
    spec = registry.get_spec(name)
    if not 0 <= dropout < 1:
        raise errors.ConfigError(f"dropout must be at least 0 and below 1; got {dropout!r}.")
    size = spec.check_size(spec.default_size if image_size is None else image_size)
    if weights not in registry.WEIGHTS_CHOICES:
        raise errors.ConfigError(
            f"Unknown weights choice {weights!r}; use one of {', '.join(registry.WEIGHTS_CHOICES)}."
        )
    note = None
    if weights == "none":
        model = _assemble(spec, size, None, dropout)
    else:
        try:
            model = _assemble(spec, size, registry.WEIGHTS_IMAGENET, dropout)
        except registry.WeightsUnavailableError as error:
            if weights == "imagenet":
                raise
            note = f"ImageNet weights unavailable, trained from random initialisation: {error}"
            model = _assemble(spec, size, None, dropout)
    if batchnorm_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = batchnorm_momentum
    source = registry.WEIGHTS_RANDOM if note is not None or weights == "none" else registry.WEIGHTS_IMAGENET
    return BuiltModel(model=model, spec=spec, image_size=size, weights=source, weights_note=note)


def _assemble(spec: registry.ModelSpec, size: int, weights: str | None, dropout: float) -> keras.Model:
    inputs = keras.Input(shape=(size, size, 3), name="pixels")
    if weights is None:
        features = spec.build_backbone(inputs, None)
    else:
        try:
            features = spec.build_backbone(inputs, weights)
        except registry.WeightsUnavailableError:
            raise
        except Exception as error:  # Keras raises bare Exceptions for failed downloads.
            raise registry.WeightsUnavailableError(_weights_message(spec, error)) from None
    features = keras.layers.Dropout(dropout, name=registry.HEAD_DROPOUT_LAYER)(features)
    outputs = keras.layers.Dense(
        len(classes.CLASS_NAMES), activation="softmax", dtype="float32", name=registry.OUTPUT_LAYER
    )(features)
    return keras.Model(inputs, outputs, name=spec.name)


def _weights_message(spec: registry.ModelSpec, error: Exception) -> str:
    reason = errors.first_line(error)
    url = next((word.rstrip(":") for word in reason.split() if word.startswith("https://")), None)
    where = keras_weights_folder()
    if url is not None:
        reason = reason.split(url)[-1].lstrip(": ").removeprefix("None -- ").strip() or reason
        return (
            f"ImageNet weights for {spec.display_name} could not be downloaded ({reason}). "
            f"Download {url} by hand and put it in {where}, or use --weights none."
        )
    return (
        f"ImageNet weights for {spec.display_name} could not be loaded ({reason}). Keras keeps "
        f"weight files in {where}; replace a damaged file there, or use --weights none."
    )


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze everything but the head, for transfer learning.

    With ``trainable=True`` BatchNormalization layers stay frozen: in Keras a frozen
    BatchNormalization layer runs in inference mode, so fine-tuning does not wreck the
    pretrained moving statistics with small batches.
    """
    for layer in model.layers:
        if layer.name in registry.HEAD_LAYERS:
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = trainable


def load_model(
    path: str | os.PathLike[str], *, model_name: str | None = None, image_size: int | None = None
) -> keras.Model:
    """Load a saved classifier with ``safe_mode=True`` (no Lambda layers, no arbitrary code).

    Args:
        path: the ``.keras`` file.
        model_name: when given, the file must hold this architecture (a run's ``model``).
        image_size: when given, the model must take ``image_size`` x ``image_size`` input.

    Raises:
        kidney_lab.models.registry.ModelLoadError: the file is missing, damaged, unsafe, not a
            4-class classifier, or not the architecture or input size asked for.
    """
    file = Path(path)
    if not file.is_file():
        raise registry.ModelLoadError(f"No model file at {file}; the run has no usable checkpoint.")
    try:
        model = keras.saving.load_model(file, safe_mode=True, compile=False)
    except Exception as error:
        raise registry.ModelLoadError(f"Cannot load model {file}: {errors.first_line(error, 300)}") from None
    shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else ()
    inputs = tuple(model.input_shape) if not isinstance(model.input_shape, list) else ()
    if len(shape) != 2 or shape[-1] != len(classes.CLASS_NAMES) or len(inputs) != 4 or inputs[-1] != 3:
        raise registry.ModelLoadError(
            f"{file} is not a {len(classes.CLASS_NAMES)}-class image classifier (input shape "
            f"{inputs}, output shape {shape})."
        )
    if model_name is not None and model.name != registry.get_spec(model_name).name:
        raise registry.ModelLoadError(
            f"{file} holds a {model.name} model, not {registry.get_spec(model_name).display_name}; the "
            "file was replaced: put the run's own file back or train it again."
        )
    if image_size is not None and inputs[1:3] != (image_size, image_size):
        raise registry.ModelLoadError(
            f"{file} takes {inputs[1]}x{inputs[2]} pixel input, not {image_size}x{image_size}; "
            "the file was replaced: put the run's own file back or train it again."
        )
    return model
