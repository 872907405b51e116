"""Keras layers that kidney_lab puts inside its saved models.

They are registered as serializable under the package name ``kidney_lab``, so a ``model.keras``
file loads with ``safe_mode=True`` and no ``custom_objects`` once this module is imported
(``kidney_lab.models.builders`` imports it).
"""

from __future__ import annotations

from typing import Any

import keras

from kidney_lab import errors

# Per-channel means of ImageNet in BGR order, subtracted by the "caffe" preprocessing of
# ResNet50 (the same numbers as keras.applications.imagenet_utils).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = ("caffe", "tf", "none")


@keras.saving.register_keras_serializable(package="kidney_lab")
class ImagePreprocessing(keras.layers.Layer):
    """Turns raw 0-255 RGB pixels into what a backbone was trained on.

    Modes (the same arithmetic as ``keras.applications.<family>.preprocess_input``):

    - ``"caffe"``: RGB to BGR, then subtract :data:`CAFFE_MEAN_BGR` (ResNet50);
    - ``"tf"``: scale to [-1, 1] (MobileNetV2, InceptionV3);
    - ``"none"``: pass the pixels through (EfficientNetB0 rescales inside its own graph, so it
      must not be rescaled twice).
    """

    def __init__(self, mode: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise errors.ConfigError(
                f"Unknown preprocessing mode {mode!r}; use one of {', '.join(PREPROCESSING_MODES)}."
            )
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        pixels = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            bgr = keras.ops.flip(pixels, axis=-1)
            mean = keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
            return bgr - mean
        if self.mode == "tf":
            return pixels / 127.5 - 1.0
        return pixels

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
