"""The model registry: the one place that knows the facts of the five architectures.

Every other module (training, evaluation, explanation, the command line, the app) asks this
registry for a model's input size, its preprocessing, the layer Grad-CAM reads and how to build
or load it; none repeats a model fact.

Every model built here is a flat functional graph that takes raw 0-255 RGB pixels of shape
``(size, size, 3)``: preprocessing is the model's first layer (or the backbone's own, for
EfficientNetB0, which rescales inside its graph and so gets no second rescaling), the backbone is
built on that tensor, and the head (dropout and a 4-way softmax kept in float32 under mixed
precision) sits on the backbone's pooled features. Because the graph is flat, the CAM layer is a
layer of the saved model itself.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import keras

from kidney_lab import errors
from kidney_lab.data import classes
from kidney_lab.models import layers as model_layers
from kidney_lab.models import vit

WEIGHTS_CHOICES = ("auto", "imagenet", "none")

# Where the weights actually used came from, as stored in run.json.
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_RANDOM = "random"

HEAD_DROPOUT_LAYER = "head_dropout"
OUTPUT_LAYER = "predictions"
HEAD_LAYERS = (HEAD_DROPOUT_LAYER, OUTPUT_LAYER)


class ModelLoadError(errors.KidneyLabError):
    """A saved model cannot be loaded or is not a kidney_lab classifier."""


class WeightsUnavailableError(errors.KidneyLabError):
    """Pretrained weights were asked for and cannot be obtained."""


Backbone = Callable[[Any, "str | None"], Any]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The facts of one architecture.

    Attributes:
        name: registry name, lower case, as typed on the command line (``"resnet50"``).
        display_name: the name people use (``"ResNet50"``).
        family: ``"cnn"`` or ``"transformer"``.
        default_size: input side in pixels of its ImageNet training.
        min_size: the smallest input side the architecture accepts.
        size_multiple: the input side must be a multiple of this (the ViT's patch size).
        preprocessing: what happens to the 0-255 pixels inside the model, in words.
        cam_layer: the layer whose output Grad-CAM reads (a 4-D spatial feature map).
        fine_cam_layers: the finer feature maps that LayerCAM fuses with ``cam_layer``, coarse
            to fine: a CNN's last activation at stride 16 and at stride 8 (InceptionV3: the
            ends of its 17x17 and 35x35 stages at 299 px); empty for the ViT, whose token grid
            is its only spatial map.
        min_cam_size: the smallest input side at which ``cam_layer`` is a 3x3 grid or finer,
            so a Grad-CAM map can say more than one cell (InceptionV3's unpadded stem and
            reductions make its ``mixed10`` 1x1 at 96 px; it is 3x3 from 139 px).
        imagenet_weights: whether pretrained ImageNet weights exist for it.
        reference: the paper that introduced it.
        demo_epochs: epochs of its demo run (``python -m kidney_lab demo``, from random
            initialisation on the demo phantoms; see :mod:`kidney_lab.demo`).
        demo_learning_rate: Adam's starting learning rate of its demo run, decayed along a cosine.
        demo_lane: which of the demo's two processes trains it (0: the first, 1: the second).
        demo_turn: its place in that lane's queue (lower trains first).
        build_backbone: ``(inputs, weights) -> pooled features``; ``weights`` is
            ``"imagenet"`` or None.
    """

    name: str
    display_name: str
    family: str
    default_size: int
    min_size: int
    size_multiple: int
    preprocessing: str
    cam_layer: str
    fine_cam_layers: tuple[str, ...]
    min_cam_size: int
    imagenet_weights: bool
    reference: str
    demo_epochs: int
    demo_learning_rate: float
    demo_lane: int
    demo_turn: int
    build_backbone: Backbone = dataclasses.field(repr=False, compare=False)

    def check_size(self, size: int) -> int:
        """Return ``size`` if this architecture accepts it.

        Raises:
            kidney_lab.errors.ConfigError: a size below :attr:`min_size` or not a multiple of
                :attr:`size_multiple`.
        """
        if isinstance(size, bool) or not isinstance(size, int):
            raise errors.ConfigError(f"The image size must be a whole number of pixels; got {size!r}.")
        if size < self.min_size:
            raise errors.ConfigError(
                f"{self.display_name} needs an image size of at least {self.min_size} pixels; "
                f"got {size!r}."
            )
        if size % self.size_multiple:
            lower = size - size % self.size_multiple
            options = [value for value in (lower, lower + self.size_multiple) if value >= self.min_size]
            raise errors.ConfigError(
                f"{self.display_name} needs an image size that is a multiple of "
                f"{self.size_multiple}; got {size}, use {' or '.join(map(str, options))}."
            )
        return size


def _application(
    constructor: Callable[..., keras.Model], preprocessing: str | None
) -> Backbone:
    def build(inputs: Any, weights: str | None) -> Any:
        pixels = inputs
        if preprocessing is not None:
            pixels = model_layers.ImagePreprocessing(preprocessing, name="preprocessing")(inputs)
        base = constructor(include_top=False, weights=weights, input_tensor=pixels)
        return keras.layers.GlobalAveragePooling2D(name="avg_pool_features")(base.output)

    return build


def _vit_backbone(inputs: Any, weights: str | None) -> Any:
    if weights is not None:
        raise WeightsUnavailableError(
            "kidney_lab's Vision Transformer has no ImageNet weights; it trains from random "
            "initialisation (--weights none or auto)."
        )
    return vit.build_vit(inputs, **vit.DEFAULT_CONFIG)


# The demo recipes (demo_*), measured on the demo phantoms (400 per class, 96 px, batch 16) on
# two CPU cores: at 1e-3 for 4 epochs ResNet50, InceptionV3 and the ViT reached 98-100% test
# accuracy, while MobileNetV2 stayed at 81% and EfficientNetB0 at 82%; MobileNetV2 reached 100% at
# 3e-3 and EfficientNetB0 94% at 6e-3 (83% at 3e-3 for 3 epochs). ResNet50 reached 96% in 2
# epochs, InceptionV3 only 87%. The lanes balance the models' training times of one-at-a-time
# runs (ResNet50 109 s, EfficientNetB0 86 s, InceptionV3 139 s at 139 px, MobileNetV2 48 s, ViT
# 10 s); kidney_lab.demo says what they saved.
_SPECS = (
    ModelSpec(
        name="efficientnetb0",
        display_name="EfficientNetB0",
        family="cnn",
        default_size=224,
        min_size=32,
        size_multiple=1,
        preprocessing="none here: the backbone rescales 0-255 to 0-1 and normalises inside its own graph",
        cam_layer="top_activation",
        fine_cam_layers=("block6a_expand_activation", "block4a_expand_activation"),
        min_cam_size=65,
        imagenet_weights=True,
        reference="Tan & Le, 2019",
        demo_epochs=4,
        demo_learning_rate=6e-3,
        demo_lane=0,
        demo_turn=1,
        build_backbone=_application(keras.applications.EfficientNetB0, None),
    ),
    ModelSpec(
        name="mobilenetv2",
        display_name="MobileNetV2",
        family="cnn",
        default_size=224,
        min_size=32,
        size_multiple=1,
        preprocessing="scale 0-255 to [-1, 1]",
        cam_layer="out_relu",
        fine_cam_layers=("block_13_expand_relu", "block_6_expand_relu"),
        min_cam_size=65,
        imagenet_weights=True,
        reference="Sandler et al., 2018",
        demo_epochs=3,
        demo_learning_rate=3e-3,
        demo_lane=1,
        demo_turn=0,
        build_backbone=_application(keras.applications.MobileNetV2, "tf"),
    ),
    ModelSpec(
        name="resnet50",
        display_name="ResNet50",
        family="cnn",
        default_size=224,
        min_size=32,
        size_multiple=1,
        preprocessing="RGB to BGR, subtract the ImageNet channel means (caffe)",
        cam_layer="conv5_block3_out",
        fine_cam_layers=("conv4_block6_out", "conv3_block4_out"),
        min_cam_size=65,
        imagenet_weights=True,
        reference="He et al., 2016",
        demo_epochs=2,
        demo_learning_rate=1e-3,
        demo_lane=0,
        demo_turn=0,
        build_backbone=_application(keras.applications.ResNet50, "caffe"),
    ),
    ModelSpec(
        name="inceptionv3",
        display_name="InceptionV3",
        family="cnn",
        default_size=299,
        min_size=75,
        size_multiple=1,
        preprocessing="scale 0-255 to [-1, 1]",
        cam_layer="mixed10",
        fine_cam_layers=("mixed7", "mixed2"),
        min_cam_size=139,
        imagenet_weights=True,
        reference="Szegedy et al., 2016",
        demo_epochs=3,
        demo_learning_rate=1e-3,
        demo_lane=1,
        demo_turn=1,
        build_backbone=_application(keras.applications.InceptionV3, "tf"),
    ),
    ModelSpec(
        name="vit",
        display_name="Vision Transformer",
        family="transformer",
        default_size=224,
        min_size=vit.MIN_SIZE,
        size_multiple=vit.DEFAULT_CONFIG["patch_size"],
        preprocessing="scale 0-255 to [-1, 1]",
        cam_layer=vit.TOKEN_GRID_LAYER,
        fine_cam_layers=(),
        min_cam_size=48,
        imagenet_weights=False,
        reference="Dosovitskiy et al., 2021",
        demo_epochs=3,
        demo_learning_rate=1e-3,
        demo_lane=1,
        demo_turn=2,
        build_backbone=_vit_backbone,
    ),
)

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by registry or display name, case-insensitive.

    Raises:
        kidney_lab.errors.ConfigError: an unknown name (the message lists the known ones).
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    for spec in _SPECS:
        if key in (spec.name, spec.display_name.lower().replace(" ", "")):
            return spec
    raise errors.ConfigError(f"Unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}.")


def parse_model_names(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of names -> registry names, in registry order.

    Raises:
        kidney_lab.errors.ConfigError: an unknown or empty name.
    """
    if text.strip().lower() == "all":
        return list(MODEL_NAMES)
    names = [part for part in (piece.strip() for piece in text.split(",")) if part]
    if not names:
        raise errors.ConfigError(f"No model named in {text!r}; use 'all' or {','.join(MODEL_NAMES)}.")
    wanted = {get_spec(name).name for name in names}
    return [name for name in MODEL_NAMES if name in wanted]


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
    spec: ModelSpec
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
        name: a registry name (see :data:`MODEL_NAMES`).
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
        WeightsUnavailableError: ``weights="imagenet"`` and the weights cannot be obtained.
    """
    spec = get_spec(name)
    if not 0 <= dropout < 1:
        raise errors.ConfigError(f"dropout must be at least 0 and below 1; got {dropout!r}.")
    size = spec.check_size(spec.default_size if image_size is None else image_size)
    if weights not in WEIGHTS_CHOICES:
        raise errors.ConfigError(
            f"Unknown weights choice {weights!r}; use one of {', '.join(WEIGHTS_CHOICES)}."
        )
    note = None
    if weights == "none":
        model = _assemble(spec, size, None, dropout)
    else:
        try:
            model = _assemble(spec, size, WEIGHTS_IMAGENET, dropout)
        except WeightsUnavailableError as error:
            if weights == "imagenet":
                raise
            note = f"ImageNet weights unavailable, trained from random initialisation: {error}"
            model = _assemble(spec, size, None, dropout)
    if batchnorm_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = batchnorm_momentum
    source = WEIGHTS_RANDOM if note is not None or weights == "none" else WEIGHTS_IMAGENET
    return BuiltModel(model=model, spec=spec, image_size=size, weights=source, weights_note=note)


def _assemble(spec: ModelSpec, size: int, weights: str | None, dropout: float) -> keras.Model:
    inputs = keras.Input(shape=(size, size, 3), name="pixels")
    if weights is None:
        features = spec.build_backbone(inputs, None)
    else:
        try:
            features = spec.build_backbone(inputs, weights)
        except WeightsUnavailableError:
            raise
        except Exception as error:  # Keras raises bare Exceptions for failed downloads.
            raise WeightsUnavailableError(_weights_message(spec, error)) from None
    features = keras.layers.Dropout(dropout, name=HEAD_DROPOUT_LAYER)(features)
    outputs = keras.layers.Dense(
        len(classes.CLASS_NAMES), activation="softmax", dtype="float32", name=OUTPUT_LAYER
    )(features)
    return keras.Model(inputs, outputs, name=spec.name)


def _weights_message(spec: ModelSpec, error: Exception) -> str:
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
        if layer.name in HEAD_LAYERS:
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
        ModelLoadError: the file is missing, damaged, unsafe, not a 4-class classifier, or not
            the architecture or input size asked for.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"No model file at {file}; the run has no usable checkpoint.")
    try:
        model = keras.saving.load_model(file, safe_mode=True, compile=False)
    except Exception as error:
        raise ModelLoadError(f"Cannot load model {file}: {errors.first_line(error, 300)}") from None
    shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else ()
    inputs = tuple(model.input_shape) if not isinstance(model.input_shape, list) else ()
    if len(shape) != 2 or shape[-1] != len(classes.CLASS_NAMES) or len(inputs) != 4 or inputs[-1] != 3:
        raise ModelLoadError(
            f"{file} is not a {len(classes.CLASS_NAMES)}-class image classifier (input shape "
            f"{inputs}, output shape {shape})."
        )
    if model_name is not None and model.name != get_spec(model_name).name:
        raise ModelLoadError(
            f"{file} holds a {model.name} model, not {get_spec(model_name).display_name}; the file "
            "was replaced: put the run's own file back or train it again."
        )
    if image_size is not None and inputs[1:3] != (image_size, image_size):
        raise ModelLoadError(
            f"{file} takes {inputs[1]}x{inputs[2]} pixel input, not {image_size}x{image_size}; "
            "the file was replaced: put the run's own file back or train it again."
        )
    return model


def describe(spec: ModelSpec) -> dict[str, Any]:
    """The spec as plain data (for run.json, the CLI and the app): every fact but the builder."""
    facts = {
        field.name: getattr(spec, field.name)
        for field in dataclasses.fields(spec)
        if field.name != "build_backbone"
    }
    return {name: list(value) if isinstance(value, tuple) else value for name, value in facts.items()}
