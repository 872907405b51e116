"""Class activation maps of a trained run: Grad-CAM, Grad-CAM++, Score-CAM and LayerCAM.

The Compare page explains every upload with all five models, so this is the program's hot
path. Three things keep it fast:

- a run's model is loaded once and each method's explainer is built once, then kept in a
  bounded least-recently-used cache keyed by the run folder, the model file's modification
  time and size, and the method (:func:`load_explainer`); explainers of one run share one
  loaded model;
- the probabilities and the class activation map come from one compiled ``tf.function`` per
  explainer (traced once: the model's input size is fixed): one forward pass yields the
  logits, the CAM layer's activations and the pooled features before the head (what the run's
  out-of-distribution detector scores), and the gradient of the target logit with respect
  to those activations only runs back through the head. There is no separate predict call;
- the run's OOD detector and temperature are read once per loaded run (shared by its
  explainers) and again only when their files change (:meth:`LoadedRun.trust`);
- what depends on the scan's own size (cropping the padding, resizing to the scan) happens
  outside the compiled function on the small CAM grid, with Pillow.

Each method is one small class (as in pytorch-grad-cam): :class:`Explainer`, the base, owns
the forward pass, the gradients, the fusion of several layers, the resizing, the scaling and the
compiled function; a subclass per method holds its registry name, display name, help text and
capability flags (needs gradients, explains a chosen class, reads the finer layers) and
overrides how one layer's map is made. :func:`register_method` adds one to :data:`METHODS`, the
one list the CLI, the faithfulness measures and the Compare page read (:func:`method_names`,
:func:`get_method`).

How a map is made. The CAM layer is the registry's (``ModelSpec.cam_layer``): a CNN's last
convolutional block, or the ViT's token grid laid out as ``(grid, grid, dim)``, treated
exactly like a convolutional map. With activations ``A`` (``h x w x C``) and the gradient
``G`` of the target class's logit (the score before the softmax, as in the Grad-CAM paper),
each method's class says how it makes its map: :class:`GradCam`, :class:`GradCamPlusPlus`,
:class:`ScoreCam` and :class:`LayerCam`.

A map can be no finer than its grid: about input/32 for the CNNs (7x7 at 224 px, 3x3 at
96 px; InceptionV3's ``mixed10`` is 8x8 at 299 px but 1x1 below 107 px, where its map is flat)
and input/16 for the ViT; LayerCAM's fused map is made at the input size.

The map on the ``h x w`` grid is resized bilinearly (pixel centres aligned, as a strided
feature map sits on its input) onto the model input's content box, i.e. the padding that
:func:`kidney_lab.data.pipeline.prepare_scan` added around a non-square scan is cropped off,
and the result has the scan's own height and width. It is then scaled per image to [0, 1];
the range before scaling is kept as ``raw_min``/``raw_max``. A map with no range (for
example every position ReLU'd to zero) becomes all zeros with ``raw_min == raw_max``.

tf-keras-vis provides the model surgery (``ReplaceToLinear`` makes the explainer's private
copy of the model output logits, ``ExtractIntermediateLayerForGradcam`` adds the CAM layer as
an output) and the reference implementations the tests compare against.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tf_keras_vis.utils import model_modifiers

from kidney_lab import errors
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import pipeline
from kidney_lab.data import scan as scan_module
from kidney_lab.evaluation import calibration
from kidney_lab.evaluation import trust as trust_files
from kidney_lab.models import builders
from kidney_lab.models import ood
from kidney_lab.models import registry

# The method registry: registry name -> method class, in the order methods are offered. Filled by
# register_method below (the four methods of this module, then any a program adds).
METHODS: dict[str, type[Explainer]] = {}
# Explainers kept by load_explainer: five models with two methods each, plus a spare.
CACHE_SIZE = 12

ImageInput = scan_module.Scan | bytes | str | os.PathLike | np.ndarray


class ExplainError(errors.KidneyLabError):
    """A run cannot be explained (its run.json lacks what is needed, or a method failed)."""


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One model's prediction and heat map for one scan.

    Attributes:
        run_id: the run folder's name.
        model: registry name of the model (``"resnet50"``).
        display_name: the name people use (``"ResNet50"``).
        method: one of :data:`METHODS`.
        probabilities: class -> probability, in :data:`kidney_lab.data.classes.CLASS_NAMES`
            order.
        predicted: the class of highest probability.
        target: the class the heat map explains (``predicted`` unless another was asked for).
        heatmap: float32 ``(H, W)`` at the scan's own size, scaled per image to [0, 1].
        raw_min: the map's minimum before scaling.
        raw_max: the map's maximum before scaling (equal to ``raw_min`` for a flat map).
        seconds: wall-clock time of this model's part: the compiled pass and the resizing,
            plus making the model input unless it was made already (by :func:`explain` for an
            earlier model of the same input size).
        ood: ``{"score", "threshold", "flagged"}`` of the run's out-of-distribution detector for
            this scan (:meth:`kidney_lab.models.ood.Detector.result`), or None when the run has
            no detector.
        temperature: the run's fitted temperature (1.0 without calibration).
        calibrated_probabilities: class -> probability after the temperature (the same as
            ``probabilities`` at 1.0; the most probable class never changes).
        run_dir: the run folder (absolute), or None for a model not loaded from a run.
    """

    run_id: str
    model: str
    display_name: str
    method: str
    probabilities: dict[str, float]
    predicted: str
    target: str
    heatmap: np.ndarray = dataclasses.field(repr=False)
    raw_min: float
    raw_max: float
    seconds: float
    ood: dict[str, Any] | None = None
    temperature: float = 1.0
    calibrated_probabilities: dict[str, float] = dataclasses.field(default_factory=dict)
    run_dir: str | None = None

    @property
    def flagged(self) -> bool:
        """Whether the run's detector flags this scan as out of distribution."""
        return bool(self.ood and self.ood["flagged"])

    @property
    def raw_heatmap(self) -> np.ndarray:
        """The heat map in its units before scaling: ``heatmap * (raw_max - raw_min) + raw_min``."""
        return self.heatmap * np.float32(self.raw_max - self.raw_min) + np.float32(self.raw_min)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the heat map, as JSON-ready values."""
        return {
            "run_id": self.run_id,
            "model": self.model,
            "display_name": self.display_name,
            "method": self.method,
            "predicted": self.predicted,
            "target": self.target,
            "probabilities": dict(self.probabilities),
            "raw_min": self.raw_min,
            "raw_max": self.raw_max,
            "seconds": self.seconds,
            "ood": None if self.ood is None else dict(self.ood),
            "temperature": self.temperature,
            "calibrated_probabilities": dict(self.calibrated_probabilities),
        }


@dataclasses.dataclass(frozen=True)
class CamResult:
    """What one compiled pass returns, on the model's input grid (before any resizing).

    Attributes:
        probabilities: float ``(classes,)``.
        target: index of the class explained.
        grid: float32 ``(h, w)`` class activation map on the CAM layer's grid.
        features: float32 ``(features,)`` what the run's OOD detector scores, from the same
            forward pass (None where they were not computed).
    """

    probabilities: np.ndarray
    target: int
    grid: np.ndarray
    features: np.ndarray | None = None


class LoadedRun:
    """A run's model, loaded once and shared by the explainers of all methods.

    Attributes:
        run_id: the run folder's name (or a label for a model not loaded from a run).
        spec: the model's registry entry.
        image_size: the model's input side in pixels.
        graph: a private copy of the model that outputs ``[logits, CAM activations, features]``
            (what the run's out-of-distribution detector scores:
            :func:`kidney_lab.models.ood.feature_tensor` of :attr:`feature_layers`).
        feature_layers: the registry's ``ood_layers`` (none when the model lacks one of them).
        run_dir: the run folder, or None for a model not loaded from a run (then it has no
            detector and no calibration).
    """

    def __init__(
        self, model: keras.Model, spec: registry.ModelSpec, image_size: int, run_id: str,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Prepare ``model`` (which this object then owns and changes) for explanation.

        Raises:
            kidney_lab.models.registry.ModelLoadError: the model's input size is not
                ``image_size``, or it lacks the registry's CAM layer, head or output layer.
        """
        self.run_id = run_id
        self.spec = spec
        self.image_size = image_size
        self.run_dir = None if run_dir is None else Path(run_dir).absolute()
        self._trust_key: tuple | None = None
        self._trust: tuple[ood.AnyDetector | None, float] = (None, 1.0)
        self._trust_lock = threading.Lock()
        shape = tuple(model.input_shape)
        if shape[1:3] != (image_size, image_size):
            raise registry.ModelLoadError(
                f"Run {run_id}: the model takes {shape[1:3]} images but run.json says "
                f"{image_size} px; the run folder is inconsistent."
            )
        names = {layer.name for layer in model.layers}
        for needed in (spec.cam_layer, *registry.HEAD_LAYERS):
            if needed not in names:
                raise registry.ModelLoadError(
                    f"Run {run_id}: the {spec.display_name} model has no layer {needed!r}, so it "
                    "cannot be explained; it was not built by kidney_lab's registry."
                )
        # The softmax becomes linear on this private copy so the graph outputs logits: the
        # score Grad-CAM differentiates and the one a saturated softmax would flatten.
        model_modifiers.ReplaceToLinear()(model)
        extracted = model_modifiers.ExtractIntermediateLayerForGradcam(
            spec.cam_layer, seek_conv_layer=False
        )(model)
        # The detector's features come out of the same pass: the layers they pool run anyway.
        self.feature_layers = spec.ood_layers if all(name in names for name in spec.ood_layers) else ()
        features = ood.feature_tensor(model, self.feature_layers)
        self.graph = keras.Model(extracted.inputs, [*extracted.outputs, features])
        # LayerCAM's graph: the logits, the CAM layer, the finer layers and the features, on the same weights.
        self.layer_graph = None
        if spec.fine_cam_layers and all(name in names for name in spec.fine_cam_layers):
            layers = (spec.cam_layer, *spec.fine_cam_layers)
            self.layer_graph = keras.Model(
                model.inputs, [extracted.outputs[0], *(model.get_layer(name).output for name in layers), features]
            )

        graph = self.graph

        # Its own function object, for the reason given in Explainer.__init__.
        def probabilities(pixels: tf.Tensor) -> tf.Tensor:
            logits, *_ = graph(pixels, training=False)
            return tf.nn.softmax(tf.cast(logits, tf.float32))

        self._predict = tf.function(
            probabilities, input_signature=[tf.TensorSpec((None, image_size, image_size, 3), tf.float32)]
        )

    def predict(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``(n, classes)`` of raw 0-255 inputs ``(n, S, S, 3)``."""
        chunks = [
            self._predict(tf.constant(pixels[start:start + batch_size], tf.float32)).numpy()
            for start in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(classes.CLASS_NAMES)), np.float32)

    def trust(self) -> tuple[ood.AnyDetector | None, float]:
        """The run's OOD detector (None without one) and temperature (1.0 without calibration).

        Read once and kept; read again only when ``ood_detector.json`` or ``calibration.json``
        changes on disk (``fit-ood`` on a run the app has loaded).

        Raises:
            kidney_lab.models.ood.OODError, kidney_lab.evaluation.calibration.CalibrationError:
                a stored file is damaged.
        """
        if self.run_dir is None:
            return None, 1.0
        key = tuple(_file_key(path) for path in (runs.detector_path(self.run_dir), runs.calibration_path(self.run_dir)))
        with self._trust_lock:
            if key != self._trust_key:
                self._trust = (trust_files.read_detector(self.run_dir), trust_files.temperature(self.run_dir))
                self._trust_key = key
            return self._trust


def _file_key(path: Path) -> tuple[int, int] | None:
    """A file's modification time (ns) and size, or None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


class Explainer:
    """The mechanism every CAM method shares; one subclass per method (see :func:`register_method`).

    Build one with :func:`load_explainer` (cached) or :func:`build_explainer`. The base owns
    everything but the method's arithmetic: the compiled pass (one ``tf.function`` per
    explainer) runs one forward pass through the run's graph for the logits and the activations
    of the layers the method reads, differentiates the target logit with respect to those
    activations when the method needs gradients, asks :meth:`layer_map` for one map per layer,
    and fuses several layers' maps at the input size; outside the compiled pass it resizes the
    grid onto the scan and scales it to [0, 1].

    A method is a subclass that sets the class attributes below and overrides
    :meth:`channel_weights` (for a map ``ReLU(sum_c weight_c A_c)``) or :meth:`layer_map`
    (for any other map of one layer).

    Attributes:
        name: the registry name, lower case (what ``--method`` takes and the JSON files say).
        display_name: the name people read (``"Grad-CAM"``).
        help: what the method does and costs, in a sentence or two, for the Compare page.
        needs_gradients: whether the pass differentiates the target class's logit.
        explains_a_class: whether the map depends on the class chosen to explain (False: one
            map whatever the class).
        reads_fine_layers: False: the registry's ``cam_layer`` alone; True: ``cam_layer`` and
            ``fine_cam_layers``, each layer's map resized to the input, scaled to [0, 1] by its
            own range, fused by the element-wise maximum and multiplied by the ``cam_layer``
            map's maximum (a model without finer layers gets its ``cam_layer`` map).
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    explains_a_class: ClassVar[bool] = True
    reads_fine_layers: ClassVar[bool] = False

    def __init__(self, loaded: LoadedRun) -> None:
        """Compile the method's pass for ``loaded`` (traced on the first call).

        Raises:
            kidney_lab.models.registry.ModelLoadError: the method reads finer layers that the
                model lacks.
        """
        self.loaded = loaded
        spec = loaded.spec
        if self.reads_fine_layers and spec.fine_cam_layers and loaded.layer_graph is None:
            others = [method.display_name for method in METHODS.values() if not method.reads_fine_layers]
            raise registry.ModelLoadError(
                f"Run {loaded.run_id}: the {spec.display_name} model lacks the layers {self.display_name} "
                f"reads ({', '.join(spec.fine_cam_layers)}); it was not built by kidney_lab's "
                f"registry. {_join(others)} still work."
            )
        size = loaded.image_size
        signature = [tf.TensorSpec((1, size, size, 3), tf.float32), tf.TensorSpec((), tf.int32)]

        # A function object of its own per explainer: TensorFlow counts traces per Python
        # function, and one shared bound method would look like needless retracing.
        def compiled_pass(pixels: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
            return self._map_pass(pixels, target)

        self._pass = tf.function(compiled_pass, input_signature=signature)

    @property
    def method(self) -> str:
        """The method's registry name."""
        return self.name

    @property
    def run_id(self) -> str:
        """The run folder's name."""
        return self.loaded.run_id

    @property
    def model_name(self) -> str:
        """The registry name of the model."""
        return self.loaded.spec.name

    @property
    def model_display_name(self) -> str:
        """The model's display name."""
        return self.loaded.spec.display_name

    @property
    def image_size(self) -> int:
        """The model's input side in pixels."""
        return self.loaded.image_size

    @property
    def traces(self) -> int:
        """How often the compiled pass was traced (1 once it has run: one graph per explainer)."""
        return self._pass.experimental_get_tracing_count()

    def explain(self, scan_or_image: ImageInput, target: str | int | None = None) -> Explanation:
        """Predict one scan and explain one class.

        Args:
            scan_or_image: a :class:`kidney_lab.data.scan.Scan`, a path, file bytes, or an
                array (see :func:`load_image`).
            target: the class to explain (name, case-insensitive, or output index); None
                explains the predicted class.

        Raises:
            kidney_lab.errors.ScanReadError: the image cannot be read.
            kidney_lab.errors.ConfigError: an unknown target class.
        """
        scan = load_image(scan_or_image)
        return self.explain_prepared(scan, None, target_index(target))

    def explain_prepared(self, scan: scan_module.Scan, pixels: np.ndarray | None, target: int) -> Explanation:
        """:meth:`explain` for a scan already read, with its model input when already made.

        Args:
            scan: the scan.
            pixels: ``prepare_scan(scan.image, self.image_size)``, or None to make it here.
            target: class index, or -1 for the predicted class.
        """
        started = time.perf_counter()
        if pixels is None:
            pixels = pipeline.prepare_scan(scan.image, self.image_size)
        detector, temperature = self.loaded.trust()
        result = self.cam(pixels, target)
        height, width = scan.image.shape[:2]
        raw = grid_to_scan(result.grid, self.image_size, height, width)
        heatmap, low, high = normalise(raw)
        probabilities = {name: float(p) for name, p in zip(classes.CLASS_NAMES, result.probabilities)}
        calibrated = calibration.apply_temperature(np.asarray(result.probabilities, np.float64)[None], temperature)[0]
        return Explanation(
            run_id=self.run_id,
            model=self.model_name,
            display_name=self.model_display_name,
            method=self.method,
            probabilities=probabilities,
            predicted=classes.CLASS_NAMES[int(np.argmax(result.probabilities))],
            target=classes.CLASS_NAMES[result.target],
            heatmap=heatmap,
            raw_min=low,
            raw_max=high,
            seconds=time.perf_counter() - started,
            ood=None if detector is None else self._ood(detector, result.features),
            temperature=temperature,
            calibrated_probabilities={name: float(p) for name, p in zip(classes.CLASS_NAMES, calibrated)},
            run_dir=None if self.loaded.run_dir is None else str(self.loaded.run_dir),
        )

    def _ood(self, detector: ood.AnyDetector, features: np.ndarray) -> dict[str, Any]:
        """The detector's result for one feature vector of the compiled pass.

        Raises:
            kidney_lab.models.ood.OODError: the detector was fitted on other layers than the
                ones the pass pools (a detector of the head alone scores the head's part).
        """
        if detector.feature_layers != self.loaded.feature_layers and not detector.feature_layers:
            features = features[-detector.feature_count:]
        elif detector.feature_layers != self.loaded.feature_layers:
            raise ood.OODError(
                f"Run {self.run_id}: its OOD detector was fitted on the layers {', '.join(detector.feature_layers)}, "
                f"not on the registry's {', '.join(self.loaded.feature_layers) or 'head alone'}; fit it again "
                f"(python -m kidney_lab fit-ood RUN)."
            )
        return detector.result(detector.score(features[None])[0])

    def cam(self, pixels: np.ndarray, target: int = -1) -> CamResult:
        """Run the compiled pass on one model input ``(1, S, S, 3)`` of raw 0-255 pixels.

        Args:
            pixels: the model input, as :func:`kidney_lab.data.pipeline.prepare_scan` makes it.
            target: class index, or -1 for the predicted class.
        """
        probabilities, index, grid, features = self._pass(tf.constant(pixels, tf.float32), tf.constant(target, tf.int32))
        return CamResult(probabilities.numpy(), int(index.numpy()), grid.numpy().astype(np.float32),
                         features.numpy().astype(np.float32))

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor | None) -> tf.Tensor:
        """One weight per channel of one layer, for the default :meth:`layer_map`.

        Args:
            activations: float32 ``(h, w, C)``.
            gradients: the target logit's gradient with respect to ``activations``, same shape;
                None for a method that needs no gradients.

        Returns:
            float32 ``(C,)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must override channel_weights or layer_map.")

    def layer_map(
        self, activations: tf.Tensor, gradients: tf.Tensor | None, pixels: tf.Tensor, index: tf.Tensor
    ) -> tf.Tensor:
        """One layer's map on that layer's grid: ``ReLU(sum_c weight_c A_c)`` by default.

        Args:
            activations: float32 ``(h, w, C)``.
            gradients: see :meth:`channel_weights`.
            pixels: the model input ``(1, S, S, 3)``, raw 0-255.
            index: the index of the class explained (int32 scalar).

        Returns:
            float32 ``(h, w)``.
        """
        weights = self.channel_weights(activations, gradients)
        return tf.nn.relu(tf.reduce_sum(activations * weights, axis=-1))

    def _graph(self) -> keras.Model:
        """The graph of the layers the method reads: outputs ``[logits, activations, ..., features]``."""
        if self.reads_fine_layers and self.loaded.layer_graph is not None:
            return self.loaded.layer_graph
        return self.loaded.graph

    def _forward(
        self, pixels: tf.Tensor, target: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, list[tf.Tensor], tf.Tensor]:
        logits, *outputs, features = self._graph()(pixels, training=False)
        logits, index, probabilities = _target_and_probabilities(logits, target)
        layers = [tf.cast(output, tf.float32) for output in outputs]
        return logits, index, probabilities, layers, tf.cast(features[0], tf.float32)

    def _map_pass(self, pixels: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        # tf-keras-vis runs a fresh eager pass per call and computes the map in NumPy, so the
        # forward pass, the gradient and the weighting are fused into this one graph instead.
        if self.needs_gradients:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(pixels)
                logits, index, probabilities, layers, features = self._forward(pixels, target)
                score = tf.gather(logits[0], index)
            gradients = tape.gradient(score, layers)
        else:
            _, index, probabilities, layers, features = self._forward(pixels, target)
            gradients = [None] * len(layers)
        maps = [
            self.layer_map(activations[0], None if layer_gradients is None else layer_gradients[0], pixels, index)
            for activations, layer_gradients in zip(layers, gradients)
        ]
        return probabilities, index, self._fuse(maps), features

    def _fuse(self, maps: list[tf.Tensor]) -> tf.Tensor:
        if len(maps) == 1:
            return maps[0]
        # tf-keras-vis' Layercam reads one layer; the fusion of several, LayerCAM's point, is here.
        size = self.image_size
        fused = tf.zeros((size, size), tf.float32)
        for layer_map in maps:
            resized = tf.image.resize(layer_map[None, :, :, None], (size, size), method="bilinear")[0, :, :, 0]
            low, high = tf.reduce_min(resized), tf.reduce_max(resized)
            fused = tf.maximum(fused, tf.math.divide_no_nan(resized - low, high - low))
        return fused * tf.reduce_max(maps[0])


def _target_and_probabilities(logits: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Float32 logits, the class to explain (``target``, or the predicted one for -1), softmax."""
    logits = tf.cast(logits, tf.float32)
    index = tf.where(target >= 0, target, tf.argmax(logits[0], output_type=tf.int32))
    return logits, index, tf.nn.softmax(logits[0])


def _join(names: list[str]) -> str:
    """``"A, B and C"``."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


# The method registry --------------------------------------------------------------------------


def _method_key(name: str) -> str:
    """A method name with case, spaces, ``-`` and ``_`` ignored (``"Grad-CAM++"`` -> ``"gradcam++"``)."""
    return str(name).strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def register_method(method: type[Explainer]) -> type[Explainer]:
    """Make a method known to every part of kidney_lab; also a class decorator.

    The CLI's ``--method``/``--methods``, the faithfulness measures and the Compare page offer
    every registered method, in the order of registration. ``unregister_method`` undoes it.

    Raises:
        ValueError: ``method`` is not an :class:`Explainer` subclass, lacks a name, display
            name or help, has a name that is not lower case without ``-``/``_``/spaces, or has
            the name of a registered method.
    """
    if not (isinstance(method, type) and issubclass(method, Explainer)):
        raise ValueError(f"A CAM method must be a subclass of cam.Explainer; got {method!r}.")
    missing = [field for field in ("name", "display_name", "help") if not getattr(method, field)]
    if missing:
        raise ValueError(f"The CAM method {method.__name__} sets no {', '.join(missing)}.")
    if _method_key(method.name) != method.name:
        raise ValueError(
            f"The CAM method name {method.name!r} must be lower case without '-', '_' or spaces "
            f"(for example {_method_key(method.name)!r})."
        )
    if method.name in METHODS:
        raise ValueError(f"A CAM method named {method.name!r} is registered already ({METHODS[method.name].__name__}).")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Forget a registered method and drop its cached explainers.

    Raises:
        kidney_lab.errors.ConfigError: no method of that name.
    """
    method = get_method(name)
    del METHODS[method.name]
    with _cache_lock:
        for key in [key for key in _cache if key[3] == method.name]:
            del _cache[key]


def method_names() -> tuple[str, ...]:
    """The registry names of every method, in the order they are offered."""
    return tuple(METHODS)


def get_method(name: str) -> type[Explainer]:
    """The class of a method by name (case and ``-``/``_`` ignored: ``"Grad-CAM++"`` works).

    Raises:
        kidney_lab.errors.ConfigError: an unknown method (the message lists the known ones).
    """
    method = METHODS.get(_method_key(name))
    if method is None:
        raise errors.ConfigError(f"Unknown explanation method {name!r}; choose from {', '.join(METHODS)}.")
    return method


def check_method(name: str) -> str:
    """The method's registry name (see :func:`get_method`).

    Raises:
        kidney_lab.errors.ConfigError: an unknown method (the message lists the known ones).
    """
    return get_method(name).name


def build_explainer(loaded: LoadedRun, method: str) -> Explainer:
    """An explainer of ``method`` for a loaded model (no cache; :func:`load_explainer` caches).

    Raises:
        kidney_lab.errors.ConfigError: an unknown method.
        kidney_lab.models.registry.ModelLoadError: the model lacks a layer the method reads.
    """
    return get_method(method)(loaded)


# The methods -----------------------------------------------------------------------------------


@register_method
class GradCam(Explainer):
    """Grad-CAM (Selvaraju et al., 2017): weights = mean of ``G`` over the grid, map =
    ReLU(sum_c weight_c A_c)."""

    name = "gradcam"
    display_name = "Grad-CAM"
    help = "the CAM layer weighted by the mean gradient of the class score. Fastest."

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor | None) -> tf.Tensor:
        """The mean of the gradient over the grid, per channel."""
        return tf.reduce_mean(gradients, axis=[0, 1])


@register_method
class GradCamPlusPlus(Explainer):
    """Grad-CAM++ (Chattopadhyay et al., 2018): the closed-form second-order weights, as
    tf-keras-vis computes them, map = ReLU(sum_c weight_c A_c). The paper's ``exp(score)`` factor
    cancels in the alphas and only scales the map, so it is left out (large logits would
    overflow float32)."""

    name = "gradcam++"
    display_name = "Grad-CAM++"
    help = ("second-order weights; with the global pooling the models here end in, it equals "
            "Grad-CAM with negative channel weights dropped.")

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor | None) -> tf.Tensor:
        """The positive gradient weighted by the closed-form alphas, summed over the grid."""
        squared = gradients**2
        cubed = squared * gradients
        total = tf.reduce_sum(activations, axis=[0, 1], keepdims=True)
        denominator = 2.0 * squared + cubed * total
        denominator += tf.cast(squared == 0.0, denominator.dtype)
        alphas = squared / denominator
        norm = tf.reduce_sum(alphas, axis=[0, 1], keepdims=True)
        alphas /= norm + tf.cast(norm == 0.0, norm.dtype)
        return tf.reduce_sum(tf.nn.relu(gradients) * alphas, axis=[0, 1])


@register_method
class ScoreCam(Explainer):
    """Faster Score-CAM (Wang et al., 2020): the :attr:`CHANNELS` channels of largest spatial
    standard deviation are upsampled to the input size, scaled to [0, 1] and used as masks on
    the raw pixels (0 = black, so masking blacks out); each channel's weight is the target
    probability of its masked image, map = ReLU(sum_c weight_c A_c). It costs one forward pass
    per channel on top of the first (batched, :meth:`batch_size`)."""

    # Channels of the CAM layer used as masks (those of largest spatial spread), and at most how
    # many input pixels the masked images that go through the model at once hold (16 images at
    # 224 px; all 32 at once below about 160 px).
    CHANNELS: ClassVar[int] = 32
    BATCH_PIXELS: ClassVar[int] = 16 * 224 * 224

    name = "scorecam"
    display_name = "Score-CAM"
    help = (f"weights from how the class probability changes when the scan is masked by each of "
            f"{CHANNELS} channels; gradient-free, about {CHANNELS + 1} forward passes per model.")
    needs_gradients = False

    @classmethod
    def batch_size(cls, channels: int, image_size: int) -> int:
        """How many of the ``channels`` masked images go through the model at once."""
        return max(1, min(channels, cls.BATCH_PIXELS // (image_size * image_size)))

    def layer_map(
        self, activations: tf.Tensor, gradients: tf.Tensor | None, pixels: tf.Tensor, index: tf.Tensor
    ) -> tf.Tensor:
        """``ReLU(sum_c weight_c A_c)`` over the chosen channels, weights from masked passes."""
        # tf-keras-vis' Scorecam upsamples with SciPy and predicts with model.predict on every
        # call; the same Faster Score-CAM runs here inside one compiled graph.
        channels = min(self.CHANNELS, int(activations.shape[-1]))
        _, top = tf.math.top_k(tf.math.reduce_std(activations, axis=[0, 1]), k=channels)
        chosen = tf.gather(activations, top, axis=-1)
        size = self.image_size
        upsampled = tf.image.resize(chosen[None], (size, size), method="bilinear")[0]
        low = tf.reduce_min(upsampled, axis=[0, 1], keepdims=True)
        high = tf.reduce_max(upsampled, axis=[0, 1], keepdims=True)
        masks = tf.math.divide_no_nan(upsampled - low, high - low)
        masked = pixels * tf.transpose(masks, [2, 0, 1])[..., None]
        batch = self.batch_size(channels, size)
        weights = []
        for start in range(0, channels, batch):
            logits, *_ = self.loaded.graph(masked[start:start + batch], training=False)
            weights.append(tf.gather(tf.nn.softmax(tf.cast(logits, tf.float32)), index, axis=1))
        weights = tf.concat(weights, axis=0)
        return tf.nn.relu(tf.reduce_sum(chosen * weights, axis=-1))


@register_method
class LayerCam(Explainer):
    """LayerCAM (Jiang et al., 2021): per layer, map = ReLU(sum_c ReLU(G_c) * A_c), position by
    position, read from the CAM layer and from the registry's finer layers
    (``ModelSpec.fine_cam_layers``: a CNN's last activations at stride 16 and 8) and fused as
    :class:`Explainer` says (so a class with no positive evidence at the CAM layer has a flat
    map).

    At the CAM layer alone LayerCAM would add nothing: all five models pool it globally before
    their classifier, so ``G`` is the same at every position of a channel, Grad-CAM++'s alphas
    are uniform, and both are Grad-CAM with negative channel weights clipped to zero. The finer
    layers are what make it finer than a 3x3 grid at 96 px: on the demo study's test phantoms
    its pointing game is 0.71-0.98 for the four CNNs where Grad-CAM's is 0.04-0.65 (README,
    "Heat maps"). The paper's tanh scaling of shallow layers was measured too and did worse
    (ResNet50 0.44 against 0.78, on other phantoms). The ViT has one spatial map, so its
    LayerCAM is that map's alone.
    """

    name = "layercam"
    display_name = "LayerCAM"
    help = ("positive gradients times activations, position by position, from the last layer and "
            "the finer ones fused where a model has them (CNNs): the finest map; the ViT has one layer.")
    reads_fine_layers = True

    def layer_map(
        self, activations: tf.Tensor, gradients: tf.Tensor | None, pixels: tf.Tensor, index: tf.Tensor
    ) -> tf.Tensor:
        """``ReLU(sum_c ReLU(G_c) * A_c)``, position by position."""
        return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1))


# Inputs and geometry ------------------------------------------------------------------------


def target_index(target: str | int | None) -> int:
    """The output index of a target class name (case-insensitive) or index; -1 for None.

    Raises:
        kidney_lab.errors.ConfigError: an unknown class name or an index out of range.
    """
    if target is None:
        return -1
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) < len(classes.CLASS_NAMES):
            return int(target)
    else:
        name = classes.match_class(str(target))
        if name is not None:
            return classes.class_index(name)
    raise errors.ConfigError(
        f"Unknown target class {target!r}; choose from {', '.join(classes.CLASS_NAMES)}."
    )


def load_image(image: ImageInput) -> scan_module.Scan:
    """Turn any accepted image into a :class:`~kidney_lab.data.scan.Scan`.

    Paths and bytes go through :func:`kidney_lab.data.scan.read_scan`. An array is
    ``(H, W)`` or ``(H, W, 1|3|4)`` (alpha dropped), uint8 in 0-255 or float in [0, 1].

    Raises:
        kidney_lab.errors.ScanReadError: what read_scan rejects, or an array of another shape,
            type or range, or smaller than :data:`kidney_lab.data.scan.MIN_SIDE`.
    """
    if isinstance(image, scan_module.Scan):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return scan_module.read_scan(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        return scan_module.read_scan(image)
    if isinstance(image, np.ndarray):
        return _scan_from_array(image)
    raise errors.ScanReadError(
        f"Cannot read an image from a {type(image).__name__}; give a path, file bytes, a Scan "
        "or an array."
    )


def _scan_from_array(array: np.ndarray) -> scan_module.Scan:
    values = array[..., None] if array.ndim == 2 else array
    if values.ndim != 3 or values.shape[-1] not in (1, 3, 4):
        raise errors.ScanReadError(
            f"An image array must be (H, W) or (H, W, 1, 3 or 4 channels); got shape {array.shape}."
        )
    height, width = values.shape[:2]
    if min(height, width) < scan_module.MIN_SIDE or height * width > scan_module.MAX_PIXELS:
        raise errors.ScanReadError(
            f"An image array of {width}x{height} pixels is outside what a CT slice can be "
            f"(at least {scan_module.MIN_SIDE} px a side, at most {scan_module.MAX_PIXELS:,} pixels)."
        )
    values = values[..., :3] if values.shape[-1] == 4 else values
    if values.dtype == np.uint8:
        image = values.astype(np.float32) / 255.0
    elif np.issubdtype(values.dtype, np.floating):
        image = values.astype(np.float32)
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise errors.ScanReadError(
                "A float image array must hold finite values in [0, 1]; pass 0-255 images as uint8."
            )
    else:
        raise errors.ScanReadError(
            f"An image array must be uint8 (0-255) or float (0-1); got {values.dtype}."
        )
    image = np.ascontiguousarray(np.broadcast_to(image, (height, width, 3)))
    image.setflags(write=False)
    metadata = {"format": "array", "width": width, "height": height, "mode": str(array.dtype), "notes": []}
    return scan_module.Scan(image=image, metadata=metadata)


def content_box(height: int, width: int, image_size: int) -> tuple[int, int, int, int]:
    """Where a ``height x width`` scan lies in the square model input that prepare_scan makes.

    The arithmetic is :func:`kidney_lab.data.pipeline.resize_with_pad`'s, in float32 with
    round-half-to-even as TensorFlow does it (a test checks the two agree).

    Returns:
        ``(top, left, content_height, content_width)`` in input pixels.
    """
    size = np.float32(image_size)
    scale = min(size / np.float32(height), size / np.float32(width))
    content_height = max(1, int(np.round(np.float32(height) * scale)))
    content_width = max(1, int(np.round(np.float32(width) * scale)))
    return (image_size - content_height) // 2, (image_size - content_width) // 2, content_height, content_width


def grid_to_scan(grid: np.ndarray, image_size: int, height: int, width: int) -> np.ndarray:
    """Resize a CAM grid onto the scan: crop the padding and resize to ``(height, width)``.

    The grid covers the whole ``image_size`` square input; the part over the scan's content
    box is resampled bilinearly with pixel centres aligned (one step, no intermediate image).

    Returns:
        float32 ``(height, width)``.
    """
    top, left, content_height, content_width = content_box(height, width, image_size)
    rows, columns = grid.shape
    box = (
        left * columns / image_size,
        top * rows / image_size,
        (left + content_width) * columns / image_size,
        (top + content_height) * rows / image_size,
    )
    picture = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR, box=box), dtype=np.float32)


def grid_to_input(grid: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a CAM grid bilinearly to the whole ``image_size`` square input (padding included)."""
    picture = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    resized = picture.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def normalise(raw: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Scale a map to [0, 1] by its own minimum and maximum; a flat map becomes zeros.

    Returns:
        The scaled float32 map, the minimum and the maximum before scaling.
    """
    low, high = float(raw.min()), float(raw.max())
    if not high > low:
        return np.zeros(raw.shape, np.float32), low, high
    return ((raw - low) / (high - low)).astype(np.float32), low, high


# Loading and the cache ---------------------------------------------------------------------

_cache: collections.OrderedDict[tuple[str, int, int, str], Explainer] = collections.OrderedDict()
_cache_lock = threading.Lock()


def load_run(run_dir: str | os.PathLike[str]) -> LoadedRun:
    """Load a run's model for explanation (no cache; :func:`load_explainer` caches).

    Raises:
        kidney_lab.runs.RunNotFoundError: no run folder there.
        kidney_lab.models.registry.ModelLoadError: the model cannot be loaded or explained.
        ExplainError: run.json lacks the model name or input size.
    """
    folder = runs.resolve_run(run_dir)
    record = runs.read_run(folder)
    model_name, size = record.info.model, record.info.image_size
    if not model_name or not isinstance(size, int):
        reason = record.problem or "run.json names no model or image size"
        raise ExplainError(f"Run {folder.name} cannot be explained: {reason}.")
    spec = registry.get_spec(model_name)
    model = builders.load_model(folder / runs.MODEL_FILE)
    return LoadedRun(model, spec, size, folder.name, folder)


def load_explainer(run_dir: str | os.PathLike[str], method: str = "gradcam") -> Explainer:
    """The explainer of a run and method, from the cache or built now.

    The cache holds :data:`CACHE_SIZE` explainers, least recently used dropped first, keyed by
    the run folder's absolute path, the model file's modification time and size (so a
    retrained model is reloaded) and the method; explainers of one run share its model.

    Raises:
        kidney_lab.errors.ConfigError: an unknown method.
        kidney_lab.runs.RunNotFoundError, kidney_lab.models.registry.ModelLoadError,
        ExplainError: see :func:`load_run`.
    """
    method = check_method(method)
    folder = runs.resolve_run(run_dir)
    try:
        model_key = runs.model_key(folder)
    except OSError:
        return build_explainer(load_run(folder), method)  # load_run raises the reason.
    key = (*model_key, method)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        sibling = next((explainer for other, explainer in _cache.items() if other[:3] == model_key), None)
        explainer = build_explainer(sibling.loaded if sibling is not None else load_run(folder), method)
        _cache[key] = explainer
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return explainer


def clear_cache() -> None:
    """Drop every cached explainer (and with them the models they hold)."""
    with _cache_lock:
        _cache.clear()


def cached_explainers() -> list[tuple[str, str]]:
    """``(run folder, method)`` of every cached explainer, least recently used first."""
    with _cache_lock:
        return [(Path(key[0]).name, key[3]) for key in _cache]
