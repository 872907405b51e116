"""The model registry: the one place that knows the facts of the five architectures.

Every other module (training, evaluation, explanation, the command line, the app) asks this
registry for a model's input size, its preprocessing, the layer Grad-CAM reads and which
backbone builds it; none repeats a model fact. Reading a fact does not load TensorFlow: this
module imports no Keras, and the builders and the loader (:mod:`kidney_lab.models.builders`)
import it when a model is built or loaded.

Every model built from these specs is a flat functional graph that takes raw 0-255 RGB pixels of shape
``(size, size, 3)``: preprocessing is the model's first layer (or the backbone's own, for
EfficientNetB0, which rescales inside its graph and so gets no second rescaling), the backbone is
built on that tensor, and the head (dropout and a 4-way softmax kept in float32 under mixed
precision) sits on the backbone's pooled features. Because the graph is flat, the CAM layer is a
layer of the saved model itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from kidney_lab import errors
from kidney_lab.models import vit_presets

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
            ``"imagenet"`` or None. The registry's own backbones import Keras when called, not
            when the registry is imported.
        ood_layers: earlier layers whose mean-pooled activations the out-of-distribution
            detector models next to the head's features (:mod:`kidney_lab.models.ood`), early to
            late: a CNN's activations at stride 4 to 16 or the ViT's patch embedding and first
            block. On the demo the head's features alone flagged 14% (EfficientNetB0) and 77%
            (ViT) of the real sample; with these layers every model flagged all of it.
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
    ood_layers: tuple[str, ...] = ()

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


def _application(constructor: str, preprocessing: str | None) -> Backbone:
    """The backbone ``keras.applications.<constructor>`` behind ``preprocessing`` (a mode of
    :class:`kidney_lab.models.layers.ImagePreprocessing`, None for none).

    The constructor is looked up by name when the backbone is built, so naming it here imports
    no Keras.
    """

    def build(inputs: Any, weights: str | None) -> Any:
        from kidney_lab.models import builders  # Keras is imported here, when a model is built.

        return builders.application_backbone(constructor, preprocessing, inputs, weights)

    return build


def _vit_backbone(inputs: Any, weights: str | None) -> Any:
    """kidney_lab's Vision Transformer (:func:`kidney_lab.models.builders.vit_backbone`)."""
    from kidney_lab.models import builders  # Keras is imported here, when a model is built.

    return builders.vit_backbone(inputs, weights)


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
        build_backbone=_application("EfficientNetB0", None),
        ood_layers=("block2a_expand_activation", "block4a_expand_activation", "block6a_expand_activation"),
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
        build_backbone=_application("MobileNetV2", "tf"),
        ood_layers=("block_6_expand_relu", "block_13_expand_relu"),
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
        build_backbone=_application("ResNet50", "caffe"),
        ood_layers=("conv3_block4_out", "conv4_block6_out"),
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
        build_backbone=_application("InceptionV3", "tf"),
        ood_layers=("mixed2", "mixed7"),
    ),
    ModelSpec(
        name="vit",
        display_name="Vision Transformer",
        family="transformer",
        default_size=224,
        min_size=vit_presets.MIN_SIZE,
        size_multiple=vit_presets.DEFAULT_CONFIG["patch_size"],
        preprocessing="scale 0-255 to [-1, 1]",
        cam_layer=vit_presets.TOKEN_GRID_LAYER,
        fine_cam_layers=(),
        min_cam_size=48,
        imagenet_weights=False,
        reference="Dosovitskiy et al., 2021",
        demo_epochs=3,
        demo_learning_rate=1e-3,
        demo_lane=1,
        demo_turn=2,
        build_backbone=_vit_backbone,
        ood_layers=(vit_presets.PATCH_EMBEDDING_LAYER, f"{vit_presets.BLOCK_LAYER_PREFIX}1"),
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


def describe(spec: ModelSpec) -> dict[str, Any]:
    """The spec as plain data (for run.json, the CLI and the app): every fact but the builder."""
    facts = {
        field.name: getattr(spec, field.name)
        for field in dataclasses.fields(spec)
        if field.name != "build_backbone"
    }
    return {name: list(value) if isinstance(value, tuple) else value for name, value in facts.items()}
