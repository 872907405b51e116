"""Out-of-distribution (OOD) scores: how unlike a run's training images an image is.

A classifier answers with confidence for any input, a photo or pure noise included. The
detector here (Lee et al., 2018) models the pooled features a kidney_lab model computes before
its head (the input of the ``head_dropout`` layer, see :mod:`kidney_lab.models.registry`) as one
Gaussian per class with a covariance shared by the classes. An image's score is its Mahalanobis
distance to the nearest class mean, in units of the training features' spread: small for images
like the training images, large for others. The threshold is a percentile (default the 95th) of
the scores of the validation images, so about 5% of new in-distribution images are flagged by
design; a score above the threshold is flagged.

The shared covariance is the Ledoit-Wolf shrinkage estimate (scikit-learn's
``ledoit_wolf_shrinkage``) of the class-centred training features, so a few dozen images in
hundreds or thousands of feature dimensions still give an invertible covariance. To keep the
stored detector small, only its ``components`` largest principal directions are kept; the
remaining directions share one variance (their mean), like probabilistic PCA.

The pooled features before the head are not always enough: measured on the demo (phantoms, 96
px), EfficientNetB0's and the ViT's head features of real CT slices lie among those of phantoms
(14% and 77% of the real sample flagged), while the mean-pooled activations of earlier layers
separate them (100%). A :class:`LayeredDetector` therefore fits one Gaussian detector per
feature segment: the mean-pooled activations of each of the registry's ``ood_layers``
(:attr:`kidney_lab.models.registry.ModelSpec.ood_layers`), then the head's features. An image's
score is the largest of its segments' scores, each divided by that segment's own threshold (so
1.0 is "at a segment's threshold"), and the detector's threshold is the percentile of the
validation images' combined scores, so that again about 5% of new in-distribution images are
flagged. :func:`feature_tensor` builds the one feature vector (the segments concatenated) a
forward pass returns next to the probabilities.

Fitting and scoring need numpy only; :func:`pooled_features` and :func:`head_logits` import
Keras when called. :func:`energy_scores` is the cheaper alternative of Liu et al. (2020) from the
head's logits, with no fitting. A detector is stored as JSON (:meth:`Detector.to_json`): its
facts in plain fields and its arrays as base64 float32, never as a pickle.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from typing import Any

import numpy as np
import scipy.special
import sklearn.covariance

from kidney_lab import errors
from kidney_lab.data import classes

FORMAT = "kidney_lab.ood"
VERSION = 1
METHOD = "mahalanobis"
LAYERED_FORMAT = "kidney_lab.ood.layered"
LAYERED_VERSION = 1
# The name of the head's segment in a LayeredDetector (the other segments are layer names).
HEAD_SEGMENT = "head"
DEFAULT_PERCENTILE = 95.0
# The principal directions of the shared covariance kept in a detector.
MAX_COMPONENTS = 64
# The variance of the directions not kept is at least this share of the mean variance.
RESIDUAL_FLOOR = 1e-6
THRESHOLD_SOURCES = ("validation", "training")
PREDICT_BATCH = 32
_ARRAY_DTYPE = "<f4"


class OODError(errors.KidneyLabError, ValueError):
    """Features, labels or a stored detector cannot be used to score images."""


class _Thresholded:
    """What every detector does with its scores: compare them with its threshold."""

    threshold: float

    def score(self, features: Any) -> np.ndarray:
        raise NotImplementedError

    def result(self, score: float) -> dict[str, Any]:
        """``{"score", "threshold", "flagged"}`` of one score (plain JSON data)."""
        value = float(score)
        return {"score": value, "threshold": float(self.threshold), "flagged": bool(value > self.threshold)}

    def results(self, features: Any) -> list[dict[str, Any]]:
        """:meth:`result` of each feature vector's score.

        Raises:
            OODError: features that do not fit the detector.
        """
        return [self.result(value) for value in self.score(features)]


@dataclasses.dataclass(frozen=True, eq=False)
class Detector(_Thresholded):
    """A fitted class-conditional Gaussian detector with a shared covariance.

    Attributes:
        class_names: the classes that had training images, in class order.
        means: their feature means, shape ``(classes, features)``.
        basis: orthonormal principal directions of the shared covariance, ``(features, components)``.
        variances: the covariance's variance along each direction, ``(components,)``.
        residual_variance: the variance of every direction orthogonal to ``basis``.
        shrinkage: the Ledoit-Wolf shrinkage coefficient used (0 to 1).
        threshold: scores above this are flagged.
        percentile: the percentile of the ``threshold_from`` scores that set ``threshold``.
        threshold_from: ``"validation"`` or ``"training"`` (no validation images were given).
        images: ``{"training": n, "validation": n}``, the images it was fitted on.
    """

    class_names: tuple[str, ...]
    means: np.ndarray
    basis: np.ndarray
    variances: np.ndarray
    residual_variance: float
    shrinkage: float
    threshold: float
    percentile: float
    threshold_from: str
    images: dict[str, int]

    @property
    def feature_count(self) -> int:
        """The length of the feature vectors it scores."""
        return int(self.means.shape[1])

    @property
    def feature_layers(self) -> tuple[str, ...]:
        """The layers whose pooled activations precede the head's features in its vectors: none."""
        return ()

    def distances(self, features: Any) -> np.ndarray:
        """Mahalanobis distance of each feature vector to each class mean, ``(images, classes)``.

        Raises:
            OODError: not a 2-D array of finite numbers with :attr:`feature_count` columns.
        """
        values = _check_features(features, "features")
        if values.shape[1] != self.feature_count:
            raise OODError(
                f"The detector scores feature vectors of length {self.feature_count}; got {values.shape[1]}: "
                "the features come from another model than the one it was fitted for."
            )
        result = np.empty((len(values), len(self.means)))
        for index, mean in enumerate(self.means):
            centred = values - mean
            projected = centred @ self.basis
            outside = np.clip((centred * centred).sum(axis=1) - (projected * projected).sum(axis=1), 0.0, None)
            result[:, index] = (projected * projected / self.variances).sum(axis=1) + outside / self.residual_variance
        return np.sqrt(result)

    def score(self, features: Any) -> np.ndarray:
        """The OOD score of each feature vector: its distance to the nearest class mean, ``(images,)``.

        Raises:
            OODError: see :meth:`distances`.
        """
        return self.distances(features).min(axis=1)

    def to_json(self) -> str:
        """The detector as JSON text (arrays base64-encoded float32)."""
        return json.dumps(self.to_payload(), indent=1) + "\n"

    def to_payload(self) -> dict[str, Any]:
        """The detector as plain JSON data (what :meth:`to_json` writes)."""
        return {
            "format": FORMAT, "version": VERSION, "method": METHOD,
            "classes": list(self.class_names), "features": self.feature_count,
            "components": int(self.basis.shape[1]), "shrinkage": float(self.shrinkage),
            "residual_variance": float(self.residual_variance), "threshold": float(self.threshold),
            "percentile": float(self.percentile), "threshold_from": self.threshold_from,
            "images": dict(self.images),
            "arrays": {name: _encode(getattr(self, name)) for name in ("means", "basis", "variances")},
        }

    @classmethod
    def from_json(cls, text: str) -> "Detector":
        """Read a detector written by :meth:`to_json`.

        Raises:
            OODError: not JSON, another format or version, or fields that do not fit together.
        """
        return cls.from_payload(_parse(text))

    @classmethod
    def from_payload(cls, payload: Any) -> "Detector":
        """Read a detector from the JSON data of :meth:`to_payload`.

        Raises:
            OODError: see :meth:`from_json`.
        """
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise OODError(f"The stored file is not a kidney_lab OOD detector (format {FORMAT!r}); fit it again.")
        if payload.get("version") != VERSION or payload.get("method") != METHOD:
            raise OODError(
                f"The stored OOD detector is version {payload.get('version')!r} of method "
                f"{payload.get('method')!r}; this kidney_lab reads version {VERSION} of {METHOD!r}: fit it again."
            )
        try:
            arrays = {name: _decode(payload["arrays"][name]) for name in ("means", "basis", "variances")}
            detector = cls(
                class_names=tuple(str(name) for name in payload["classes"]),
                means=arrays["means"], basis=arrays["basis"], variances=arrays["variances"],
                residual_variance=float(payload["residual_variance"]), shrinkage=float(payload["shrinkage"]),
                threshold=float(payload["threshold"]), percentile=float(payload["percentile"]),
                threshold_from=str(payload["threshold_from"]),
                images={key: int(value) for key, value in payload["images"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise OODError(f"The stored OOD detector is damaged ({type(error).__name__}: {error}); fit it again.") from None
        _check_detector(detector)
        return detector


@dataclasses.dataclass(frozen=True, eq=False)
class LayeredDetector(_Thresholded):
    """One :class:`Detector` per feature segment (earlier layers, then the head), combined.

    Attributes:
        segments: the segments' names, in the order of the feature vector: the layers whose
            mean-pooled activations come first, then :data:`HEAD_SEGMENT`.
        parts: one detector per segment.
        threshold: combined scores above this are flagged.
        percentile: the percentile of the ``threshold_from`` combined scores that set it.
        threshold_from: ``"validation"`` or ``"training"``.
        images: ``{"training": n, "validation": n}``.
    """

    segments: tuple[str, ...]
    parts: tuple[Detector, ...]
    threshold: float
    percentile: float
    threshold_from: str
    images: dict[str, int]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes that had training images."""
        return self.parts[-1].class_names

    @property
    def sizes(self) -> tuple[int, ...]:
        """The length of each segment."""
        return tuple(part.feature_count for part in self.parts)

    @property
    def feature_count(self) -> int:
        """The length of the feature vectors it scores (the segments together)."""
        return sum(self.sizes)

    @property
    def feature_layers(self) -> tuple[str, ...]:
        """The layers whose mean-pooled activations precede the head's features (see :func:`feature_tensor`)."""
        return self.segments[:-1]

    def ratios(self, features: Any) -> np.ndarray:
        """Each segment's score divided by its own threshold, ``(images, segments)``.

        Raises:
            OODError: not a 2-D array of finite numbers with :attr:`feature_count` columns.
        """
        values = _check_features(features, "features")
        if values.shape[1] != self.feature_count:
            raise OODError(
                f"The detector scores feature vectors of length {self.feature_count} (segments "
                f"{', '.join(self.segments)}); got {values.shape[1]}: the features come from another model "
                "or other layers than the ones it was fitted for."
            )
        edges = np.cumsum((0, *self.sizes))
        return np.stack([part.score(values[:, start:end]) / part.threshold
                         for part, start, end in zip(self.parts, edges[:-1], edges[1:])], axis=1)

    def score(self, features: Any) -> np.ndarray:
        """The combined OOD score of each feature vector: its largest segment ratio, ``(images,)``.

        Raises:
            OODError: see :meth:`ratios`.
        """
        return self.ratios(features).max(axis=1)

    def to_json(self) -> str:
        """The detector as JSON text (its parts as :meth:`Detector.to_payload` data)."""
        payload = {
            "format": LAYERED_FORMAT, "version": LAYERED_VERSION, "method": METHOD,
            "segments": list(self.segments), "threshold": float(self.threshold),
            "percentile": float(self.percentile), "threshold_from": self.threshold_from,
            "images": dict(self.images), "parts": [part.to_payload() for part in self.parts],
        }
        return json.dumps(payload, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LayeredDetector":
        """Read a detector written by :meth:`to_json`.

        Raises:
            OODError: not JSON, another format or version, or parts that do not fit together.
        """
        payload = _parse(text)
        if not isinstance(payload, dict) or payload.get("format") != LAYERED_FORMAT:
            raise OODError(f"The stored file is not a kidney_lab layered OOD detector ({LAYERED_FORMAT!r}); fit it again.")
        if payload.get("version") != LAYERED_VERSION:
            raise OODError(
                f"The stored OOD detector is version {payload.get('version')!r}; this kidney_lab reads "
                f"version {LAYERED_VERSION}: fit it again."
            )
        try:
            detector = cls(
                segments=tuple(str(name) for name in payload["segments"]),
                parts=tuple(Detector.from_payload(part) for part in payload["parts"]),
                threshold=float(payload["threshold"]), percentile=float(payload["percentile"]),
                threshold_from=str(payload["threshold_from"]),
                images={key: int(value) for key, value in payload["images"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise OODError(f"The stored OOD detector is damaged ({type(error).__name__}: {error}); fit it again.") from None
        if (not detector.parts or len(detector.parts) != len(detector.segments) or not math.isfinite(detector.threshold)
                or detector.segments[-1] != HEAD_SEGMENT):
            raise OODError("The stored OOD detector is damaged: its segments do not fit its parts; fit it again.")
        return detector


AnyDetector = Detector | LayeredDetector


def loads(text: str) -> AnyDetector:
    """Read a stored detector of either kind (:meth:`Detector.to_json` or :meth:`LayeredDetector.to_json`).

    Raises:
        OODError: not a stored kidney_lab detector, or a damaged one.
    """
    payload = _parse(text)
    if isinstance(payload, dict) and payload.get("format") == LAYERED_FORMAT:
        return LayeredDetector.from_json(text)
    return Detector.from_payload(payload)


def fit_layered(
    features: Any,
    labels: Any,
    validation_features: Any | None = None,
    *,
    segments: tuple[str, ...] = (HEAD_SEGMENT,),
    sizes: tuple[int, ...] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    components: int = MAX_COMPONENTS,
) -> LayeredDetector:
    """Fit one detector per segment of the feature vectors and set the combined threshold.

    Args:
        features: training features, ``(images, features)``: the segments concatenated.
        labels: their classes.
        validation_features: held-out in-distribution features (same layout); each segment's
            threshold and the combined one are their ``percentile``. None: the training scores.
        segments: the segments' names, the last :data:`HEAD_SEGMENT`.
        sizes: the length of each segment (None: a single segment, the whole vector).
        percentile: in (0, 100].
        components: principal directions kept per segment.

    Raises:
        OODError: what :func:`fit` raises, or segments and sizes that do not fit the features.
    """
    values = _check_features(features, "training features")
    sizes = (values.shape[1],) if sizes is None else tuple(int(size) for size in sizes)
    if (len(sizes) != len(segments) or not segments or segments[-1] != HEAD_SEGMENT or min(sizes) < 1
            or sum(sizes) != values.shape[1]):
        raise OODError(
            f"The feature segments {', '.join(segments)} of sizes {sizes} do not fit feature vectors of "
            f"length {values.shape[1]} (the last segment must be {HEAD_SEGMENT!r})."
        )
    held_out = None if validation_features is None else _check_features(validation_features, "validation features")
    edges = np.cumsum((0, *sizes))
    parts = tuple(
        fit(values[:, start:end], labels, None if held_out is None else held_out[:, start:end],
            percentile=percentile, components=components)
        for start, end in zip(edges[:-1], edges[1:])
    )
    provisional = LayeredDetector(segments=tuple(segments), parts=parts, threshold=math.inf,
                                  percentile=float(percentile), threshold_from=parts[-1].threshold_from,
                                  images=dict(parts[-1].images))
    threshold = float(np.percentile(provisional.score(values if held_out is None else held_out), percentile))
    return dataclasses.replace(provisional, threshold=threshold)


def fit(
    features: Any,
    labels: Any,
    validation_features: Any | None = None,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    components: int = MAX_COMPONENTS,
) -> Detector:
    """Fit a detector on training features and set its threshold on validation features.

    Args:
        features: training features, ``(images, features)``.
        labels: their classes, names of :data:`classes.CLASS_NAMES` or indices.
        validation_features: features of held-out in-distribution images; their ``percentile``
            sets the threshold. When None the training scores set it (they are lower than new
            images' scores, so more new images are flagged).
        percentile: in (0, 100].
        components: at most this many principal directions are kept (at least 1).

    Raises:
        OODError: bad features or labels, fewer than two training images, features that do not
            vary, validation features of another length, or a bad percentile or component count.
    """
    values = _check_features(features, "training features")
    if len(values) < 2:
        raise OODError("An OOD detector needs at least two training images.")
    truth = _label_indices(labels, len(values))
    if not (isinstance(percentile, (int, float)) and not isinstance(percentile, bool) and 0 < percentile <= 100):
        raise OODError(f"The threshold percentile must be a number in (0, 100]; got {percentile!r}.")
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise OODError(f"The number of kept components must be a whole number of at least 1; got {components!r}.")
    present = sorted(set(truth.tolist()))
    means = np.stack([values[truth == index].mean(axis=0) for index in present])
    centred = values - means[np.searchsorted(present, truth)]
    feature_count = values.shape[1]
    total_variance = float((centred * centred).sum() / len(values))
    mean_variance = total_variance / feature_count
    if not mean_variance > 0:
        raise OODError(
            "The training features do not vary within their classes (every image of a class has the same "
            "features); an OOD detector cannot be fitted on them."
        )
    shrinkage = float(sklearn.covariance.ledoit_wolf_shrinkage(centred, assume_centered=True))
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    kept = min(components, int((singular > 0).sum()) or 1, feature_count)
    sample_variances = singular[:kept] ** 2 / len(values)
    variances = (1 - shrinkage) * sample_variances + shrinkage * mean_variance
    if kept < feature_count:
        residual = (total_variance - variances.sum()) / (feature_count - kept)
    else:
        residual = mean_variance
    provisional = Detector(
        class_names=tuple(classes.CLASS_NAMES[index] for index in present), means=means,
        basis=directions[:kept].T.copy(), variances=np.maximum(variances, RESIDUAL_FLOOR * mean_variance),
        residual_variance=max(float(residual), RESIDUAL_FLOOR * mean_variance), shrinkage=shrinkage,
        threshold=math.inf, percentile=float(percentile),
        threshold_from="training" if validation_features is None else "validation",
        images={"training": len(values), "validation": 0},
    )
    held_out = values if validation_features is None else _check_features(validation_features, "validation features")
    threshold = float(np.percentile(provisional.score(held_out), percentile))
    return dataclasses.replace(
        provisional, threshold=threshold,
        images={"training": len(values), "validation": 0 if validation_features is None else len(held_out)},
    )


def energy_scores(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """The free energy ``-T * logsumexp(logits / T)`` of each row: higher is more out of distribution.

    Raises:
        OODError: not a 2-D array of finite numbers, or a temperature that is not positive.
    """
    values = _check_features(logits, "logits")
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0):
        raise OODError(f"The energy temperature must be a positive number; got {temperature!r}.")
    return -temperature * scipy.special.logsumexp(values / temperature, axis=1)


def pooled_features(
    model: Any, images: Any, batch_size: int = PREDICT_BATCH, layers: tuple[str, ...] = ()
) -> np.ndarray:
    """The pooled features a kidney_lab classifier computes before its head, for a batch of images.

    Args:
        model: a Keras model built or loaded by :mod:`kidney_lab.models.builders`.
        images: raw 0-255 RGB pixels as the model takes them, ``(images, size, size, 3)``.
        batch_size: images per forward pass.
        layers: earlier layers whose mean-pooled activations come first (see :func:`feature_tensor`).

    Returns:
        float64 array ``(images, features)`` (the input of the ``head_dropout`` layer, inference
        mode, after the ``layers``' pooled activations).

    Raises:
        OODError: the model has no kidney_lab head or no such layer, or images of the wrong shape.
    """
    import keras

    features = feature_tensor(model, layers)
    pixels = np.asarray(images, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if pixels.ndim != 4 or pixels.shape[1:] != expected:
        raise OODError(f"The model takes images of shape (n, {', '.join(map(str, expected))}); got {pixels.shape}.")
    extractor = keras.Model(model.inputs[0], features)
    batches = [
        keras.ops.convert_to_numpy(extractor(pixels[start:start + batch_size], training=False))
        for start in range(0, len(pixels), max(1, int(batch_size)))
    ]
    return np.concatenate(batches).astype(np.float64) if batches else np.zeros((0, features.shape[-1]))


def feature_tensor(model: Any, layers: tuple[str, ...] = ()) -> Any:
    """The symbolic feature vector a detector scores: the activations of each of ``layers``
    averaged over their spatial (or token) positions, then the head's input, concatenated.

    Raises:
        OODError: the model has no kidney_lab head, or no layer of one of those names.
    """
    import keras

    head = head_input(model)
    if not layers:
        return head
    pooled = []
    for name in layers:
        try:
            output = model.get_layer(name).output
        except ValueError:
            raise OODError(f"The model has no layer {name!r}, whose activations the OOD detector reads.") from None
        output = keras.ops.cast(output, "float32")
        pooled.append(keras.ops.mean(output, axis=tuple(range(1, len(output.shape) - 1))))
    return keras.ops.concatenate([*pooled, keras.ops.cast(head, "float32")], axis=-1)


def segment_sizes(model: Any, layers: tuple[str, ...] = ()) -> tuple[int, ...]:
    """The length of each segment of :func:`feature_tensor`: the layers' channels, then the head's.

    Raises:
        OODError: see :func:`feature_tensor`.
    """
    sizes = []
    for name in layers:
        try:
            sizes.append(int(model.get_layer(name).output.shape[-1]))
        except ValueError:
            raise OODError(f"The model has no layer {name!r}, whose activations the OOD detector reads.") from None
    return (*sizes, int(head_input(model).shape[-1]))


def head_input(model: Any) -> Any:
    """The symbolic tensor of a kidney_lab classifier's pooled features (the ``head_dropout`` input).

    Raises:
        OODError: the model has no kidney_lab head.
    """
    from kidney_lab.models import registry

    try:
        return model.get_layer(registry.HEAD_DROPOUT_LAYER).input
    except ValueError:
        raise OODError(
            f"The model has no {registry.HEAD_DROPOUT_LAYER!r} layer, so it is not a kidney_lab classifier; "
            "its features cannot be read."
        ) from None


def feature_model(model: Any, layers: tuple[str, ...] = ()) -> Any:
    """A Keras model on ``model``'s weights with two outputs: its class probabilities and its
    features (:func:`feature_tensor` of ``layers``), so that one forward pass gives both.

    Raises:
        OODError: see :func:`feature_tensor`.
    """
    import keras

    return keras.Model(model.inputs[0], [model.outputs[0], feature_tensor(model, layers)])


def head_logits(model: Any, features: Any) -> np.ndarray:
    """The logits of a kidney_lab classifier's head for pooled features (dropout is off at inference).

    Raises:
        OODError: the model has no kidney_lab head, or features of the wrong length.
    """
    from kidney_lab.models import registry

    try:
        kernel, bias = model.get_layer(registry.OUTPUT_LAYER).get_weights()
    except ValueError:
        raise OODError(
            f"The model has no {registry.OUTPUT_LAYER!r} layer, so it is not a kidney_lab classifier."
        ) from None
    values = _check_features(features, "features")
    if values.shape[1] != kernel.shape[0]:
        raise OODError(f"The head takes {kernel.shape[0]} features; got {values.shape[1]}.")
    return values @ kernel.astype(np.float64) + bias.astype(np.float64)


def _check_features(features: Any, what: str) -> np.ndarray:
    try:
        values = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError):
        raise OODError(f"The {what} must be numbers, one row per image.") from None
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise OODError(f"The {what} must be a table of one row per image (at least one); got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise OODError(f"The {what} hold NaN or infinite values; the model's output is broken.")
    return values


def _label_indices(labels: Any, count: int) -> np.ndarray:
    items = list(labels)
    if len(items) != count:
        raise OODError(f"Got {len(items)} label(s) for {count} feature row(s); give one per image.")
    indices = np.empty(count, dtype=np.int64)
    for position, label in enumerate(items):
        if isinstance(label, str) and label in classes.CLASS_NAMES:
            indices[position] = classes.class_index(label)
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(classes.CLASS_NAMES):
            indices[position] = int(label)
        else:
            raise OODError(
                f"Unknown label {label!r} at row {position}; use a class name ({', '.join(classes.CLASS_NAMES)}) "
                f"or an index from 0 to {len(classes.CLASS_NAMES) - 1}."
            )
    return indices


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as error:
        raise OODError(f"The stored OOD detector is not valid JSON ({error}); fit it again.") from None


def _encode(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype=_ARRAY_DTYPE)
    return {"dtype": _ARRAY_DTYPE, "shape": list(data.shape), "base64": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode(stored: dict[str, Any]) -> np.ndarray:
    if stored.get("dtype") != _ARRAY_DTYPE:
        raise ValueError(f"array dtype {stored.get('dtype')!r} is not {_ARRAY_DTYPE!r}")
    shape = tuple(int(side) for side in stored["shape"])
    raw = base64.b64decode(stored["base64"], validate=True)
    return np.frombuffer(raw, dtype=_ARRAY_DTYPE).reshape(shape).astype(np.float64)


def _check_detector(detector: Detector) -> None:
    """Refuse a read detector whose parts do not fit together."""
    count, features = detector.means.shape if detector.means.ndim == 2 else (0, 0)
    problems = []
    if count == 0 or count != len(detector.class_names) or not set(detector.class_names) <= set(classes.CLASS_NAMES):
        problems.append("its class means do not match its classes")
    if detector.basis.ndim != 2 or detector.basis.shape[0] != features:
        problems.append("its basis does not fit its means")
    elif detector.variances.shape != (detector.basis.shape[1],):
        problems.append("its variances do not fit its basis")
    arrays = (detector.means, detector.basis, detector.variances)
    if not all(np.isfinite(array).all() for array in arrays) or (detector.variances <= 0).any():
        problems.append("it holds variances that are not positive or values that are not numbers")
    if not (detector.residual_variance > 0 and math.isfinite(detector.residual_variance)):
        problems.append("its residual variance is not positive")
    if not math.isfinite(detector.threshold) or detector.threshold_from not in THRESHOLD_SOURCES:
        problems.append("its threshold is not a number set on validation or training images")
    if problems:
        raise OODError(f"The stored OOD detector is damaged: {'; '.join(problems)}; fit it again.")
