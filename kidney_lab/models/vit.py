"""A small Vision Transformer in Keras 3, built as a flat functional graph.

The backbone takes raw 0-255 RGB pixels, scales them to [-1, 1] inside the graph, cuts the
image into non-overlapping patches (optionally after a small convolutional stem, see
:class:`PatchEmbedding`), adds a learned position embedding, runs ``depth`` pre-norm transformer
blocks and a final LayerNorm, and lays the tokens back out as a spatial grid in a layer named
:data:`~kidney_lab.models.vit_presets.TOKEN_GRID_LAYER`. That grid is what Grad-CAM reads,
exactly like a CNN's last convolution; the backbone's output is the average of the grid over its
patches (no CLS token), shape ``(batch, dim)``. The caller adds the classification head and
builds the model on the same input tensor, so every layer, the token grid included, is a layer
of the outer model. The configuration itself (defaults, the token grid's name, the smallest
input) is in :mod:`kidney_lab.models.vit_presets`, which needs no Keras.

All layers are registered as serializable under the package ``kidney_lab``: a ``.keras`` file
loads with ``keras.saving.load_model(path, safe_mode=True)`` and no ``custom_objects`` once this
module is imported.

Choosing the defaults (measured, not tuned further). Each run trained a fresh model for 60
seconds of wall-clock time (the first epoch, with its XLA compilation, included) on 180
phantoms (``make_phantom(label, size, seed=0, index=0..44)``, 45 per class, about the training
part of the 60-per-class demo), then was scored on 200 other phantoms (indices 10000..10049).
Setup: Adam at 1e-3, batch 32, the pipeline's default ``Augmentation()``,
``jit_compile="auto"``, head ``Dropout(0.2)`` + ``Dense(4, softmax)``, dim 64, 4 heads, MLP 128,
no dropout; 2 CPU cores shared with other work (load average 2 to 4), so speeds are rough.
img/s is the median training epoch's speed::

    size  patch  stem           depth  batch  img/s  epochs  test accuracy
     96     8    none             4     32     76     21        0.33
     96     8    16,32,64         2     32    129     38        0.50
     96     8    16,32,64         2     16    109     30        0.53
    128     8    16,32,64         2     32     70     19        0.39
     96    16    16,32,64,64      2     32    243     64        0.57
    128    16    16,32,64,64      2     32    147     42        0.48

With the default (patch 16, 4-convolution stem, depth 2) at 96 px: Adam at 2e-3 gave 0.48
(276 img/s, 75 epochs); 150 training phantoms per class gave 0.43 (231 img/s, 16 epochs);
200 epochs (153 seconds, 279 img/s) gave 0.81 (training accuracy 0.95); 405 epochs (300
seconds, 277 img/s) gave 0.80 (training accuracy 0.98), so on 180 images it overfits before it
gets near 90%.

Earlier stem variants (16,32,64, patch 8, depth 2) normalised with BatchNorm (0.25 at 137 img/s:
one class predicted for every test image although training accuracy was 0.44) or LayerNorm
(0.28 at 77 img/s) did worse than the plain convolution + GELU stem kept here; schedules with a
3-epoch warm-up into cosine decay (AdamW, weight decay 0.05, at 1e-3 with the BatchNorm stem:
0.25; Adam at 3e-3 with the LayerNorm stem: 0.38) were not better and were not repeated with
the final stem. For reference, a plain CNN of the same stage widths (two 3x3 ReLU convolutions
per stage, 16-32-64-64, global average pooling) reached 0.65 at 267 img/s, 80 epochs (0.78
with global max pooling) in the same 60 seconds.

The default is the fastest and most accurate of the 60-second runs. Trained from scratch, it
does not reach 90% on demo-sized data: about 0.57 after a minute of CPU training and about 0.8
after two to five minutes. Longer runs on more images were not measured.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

from kidney_lab import errors
from kidney_lab.models import vit_presets

_PACKAGE = "kidney_lab"
_LAYER_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEmbedding(keras.layers.Layer):
    """Embed non-overlapping square patches of an image as ``dim``-wide vectors.

    Without a stem, one convolution with kernel and stride ``patch_size`` maps each patch to a
    vector. With a stem, each entry of ``stem_channels`` first adds a 3x3 convolution with stride
    2 and a GELU, and the patchify convolution's kernel and stride
    shrink so that the total stride is still ``patch_size``: every output vector still stands
    for one ``patch_size`` square of the input, but its features come from overlapping
    convolutions, which helps a transformer trained from scratch on little data (Xiao et al.,
    "Early convolutions help transformers see better", 2021).

    Args:
        patch_size: Side of a patch in input pixels.
        dim: Width of each patch vector.
        stem_channels: Filters of each stride-2 stem convolution, first to last; empty for a
            plain patchify convolution. ``patch_size`` must be divisible by
            ``2 ** len(stem_channels)``.
        **kwargs: Passed to ``keras.layers.Layer``.

    Input shape: ``(batch, height, width, channels)`` with height and width divisible by
    ``patch_size``. Output shape: ``(batch, height // patch_size, width // patch_size, dim)``.

    Raises:
        ConfigError: when a size is not a positive whole number, or the stem's total stride
            does not divide ``patch_size``.
    """

    def __init__(
        self,
        patch_size: int,
        dim: int,
        stem_channels: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_positive_int("patch_size", patch_size)
        _check_positive_int("dim", dim)
        stem_channels = tuple(stem_channels)
        for channels in stem_channels:
            _check_positive_int("each stem_channels entry", channels)
        stem_stride = 2 ** len(stem_channels)
        if patch_size % stem_stride:
            raise errors.ConfigError(
                f"A stem of {len(stem_channels)} stride-2 convolutions has a stride of "
                f"{stem_stride}, which does not divide the patch size {patch_size}; use fewer "
                "stem convolutions or a patch size that is a multiple of it."
            )
        self.patch_size = patch_size
        self.dim = dim
        self.stem_channels = stem_channels
        self.stem_layers: list[keras.layers.Layer] = []
        for index, channels in enumerate(stem_channels):
            self.stem_layers.append(
                keras.layers.Conv2D(
                    channels,
                    3,
                    strides=2,
                    padding="same",
                    dtype=self.dtype_policy,
                    name=f"stem_conv_{index + 1}",
                )
            )
            self.stem_layers.append(
                keras.layers.Activation(
                    "gelu", dtype=self.dtype_policy, name=f"stem_activation_{index + 1}"
                )
            )
        patchify_size = patch_size // stem_stride
        self.projection = keras.layers.Conv2D(
            dim,
            patchify_size,
            strides=patchify_size,
            padding="valid",
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = tuple(input_shape)
        for layer in self.stem_layers:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        self.projection.build(shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        outputs = inputs
        for layer in self.stem_layers:
            outputs = layer(outputs)
        return self.projection(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        grid_h = None if height is None else height // self.patch_size
        grid_w = None if width is None else width // self.patch_size
        return (batch, grid_h, grid_w, self.dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "dim": self.dim,
                "stem_channels": list(self.stem_channels),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Add a learned embedding to each position of a token sequence.

    The embedding has one ``dim``-wide vector per token; its shape is taken from the input
    when the layer is built, so a layer serves one sequence length.

    Args:
        initializer_stddev: Standard deviation of the truncated-normal initial values.
        **kwargs: Passed to ``keras.layers.Layer``.

    Input and output shape: ``(batch, tokens, dim)``.

    Raises:
        ConfigError: when ``initializer_stddev`` is not a positive number, or the input's
            token count or width is unknown when the layer is built.
    """

    def __init__(self, initializer_stddev: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(initializer_stddev, bool) or not (
            isinstance(initializer_stddev, (int, float)) and initializer_stddev > 0
        ):
            raise errors.ConfigError(
                f"initializer_stddev must be a positive number; got {initializer_stddev!r}."
            )
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise errors.ConfigError(
                "PositionEmbedding needs tokens of a known shape (batch, tokens, dim); "
                f"got {tuple(input_shape)}."
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
            trainable=True,
        )
        self.built = True

    def call(self, inputs: Any) -> Any:
        return inputs + keras.ops.cast(self.embeddings, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"initializer_stddev": self.initializer_stddev})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """One pre-norm transformer encoder block.

    ``x + Attention(LayerNorm(x))``, then ``x + MLP(LayerNorm(x))`` with a GELU MLP of one
    hidden layer. Dropout, when non-zero, is applied to the attention weights and after the
    attention output and each MLP layer, during training only.

    Args:
        dim: Width of each token; must be divisible by ``heads``.
        heads: Number of attention heads; each has a key width of ``dim // heads``.
        mlp_dim: Width of the MLP's hidden layer.
        dropout: Dropout rate, from 0 (none) up to but excluding 1.
        **kwargs: Passed to ``keras.layers.Layer``.

    Input and output shape: ``(batch, tokens, dim)``.

    Raises:
        ConfigError: when a width or count is not a positive whole number, ``dim`` is not
            divisible by ``heads``, or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_positive_int("dim", dim)
        _check_positive_int("heads", heads)
        _check_positive_int("mlp_dim", mlp_dim)
        _check_dropout(dropout)
        if dim % heads:
            raise errors.ConfigError(
                f"The token width dim={dim} must be divisible by the number of heads {heads}; "
                f"use for example heads={_largest_divisor_at_most(dim, heads)}."
            )
        self.dim = dim
        self.heads = heads
        self.mlp_dim = mlp_dim
        self.dropout = float(dropout)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=_LAYER_NORM_EPSILON, dtype=self.dtype_policy, name="attention_norm"
        )
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=heads,
            key_dim=dim // heads,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=_LAYER_NORM_EPSILON, dtype=self.dtype_policy, name="mlp_norm"
        )
        self.mlp_hidden = keras.layers.Dense(
            mlp_dim, activation="gelu", dtype=self.dtype_policy, name="mlp_hidden"
        )
        self.mlp_hidden_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="mlp_hidden_dropout"
        )
        self.mlp_output = keras.layers.Dense(dim, dtype=self.dtype_policy, name="mlp_output")
        self.mlp_output_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="mlp_output_dropout"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = tuple(input_shape)
        self.attention_norm.build(shape)
        self.attention.build(shape, shape)
        self.mlp_norm.build(shape)
        self.mlp_hidden.build(shape)
        self.mlp_output.build(shape[:-1] + (self.mlp_dim,))
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        normed = self.attention_norm(inputs)
        attended = self.attention(normed, normed, training=training)
        tokens = inputs + self.attention_dropout(attended, training=training)
        hidden = self.mlp_hidden(self.mlp_norm(tokens))
        hidden = self.mlp_hidden_dropout(hidden, training=training)
        update = self.mlp_output_dropout(self.mlp_output(hidden), training=training)
        return tokens + update

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "heads": self.heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
            }
        )
        return config


def build_vit(
    inputs: keras.KerasTensor,
    *,
    patch_size: int = vit_presets.DEFAULT_CONFIG["patch_size"],
    dim: int = vit_presets.DEFAULT_CONFIG["dim"],
    depth: int = vit_presets.DEFAULT_CONFIG["depth"],
    heads: int = vit_presets.DEFAULT_CONFIG["heads"],
    mlp_dim: int = vit_presets.DEFAULT_CONFIG["mlp_dim"],
    dropout: float = vit_presets.DEFAULT_CONFIG["dropout"],
    stem_channels: Sequence[int] = vit_presets.DEFAULT_CONFIG["stem_channels"],
) -> keras.KerasTensor:
    """Build the ViT backbone on ``inputs`` and return its pooled features.

    Args:
        inputs: Symbolic input of raw 0-255 RGB pixels, shape ``(batch, size, size, 3)`` with
            ``size`` a multiple of ``patch_size`` and at least ``2 * patch_size``.
        patch_size: Side of a patch in pixels; the token grid is ``size // patch_size`` square.
        dim: Width of every token.
        depth: Number of transformer blocks.
        heads: Attention heads per block; must divide ``dim``.
        mlp_dim: Width of each block's MLP hidden layer.
        dropout: Dropout rate inside the blocks, in [0, 1).
        stem_channels: Filters of the stride-2 convolutional stem, see :class:`PatchEmbedding`;
            empty for a plain patchify convolution.

    Returns:
        The patch tokens averaged over the grid, float tensor of shape ``(batch, dim)``. The
        layer :data:`~kidney_lab.models.vit_presets.TOKEN_GRID_LAYER` in the same graph outputs
        the final tokens as a ``(batch, size // patch_size, size // patch_size, dim)`` grid.

    Raises:
        ConfigError: when the input is not a square RGB image of a usable size, or a
            hyper-parameter is out of range.
    """
    _check_positive_int("patch_size", patch_size)
    _check_positive_int("depth", depth)
    shape = tuple(inputs.shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise errors.ConfigError(
            "ViT needs a square RGB input of shape (size, size, 3) with a known size; "
            f"got {shape[1:]}."
        )
    size = shape[1]
    if size % patch_size:
        lower = (size // patch_size) * patch_size
        upper = lower + patch_size
        suggestion = f"use {lower} or {upper}" if lower >= 2 * patch_size else f"use {upper}"
        raise errors.ConfigError(
            f"ViT needs an image size divisible by its patch size {patch_size}; got {size}, "
            f"{suggestion}."
        )
    if size < 2 * patch_size:
        raise errors.ConfigError(
            f"ViT needs an image of at least 2 x 2 patches of {patch_size} pixels; got {size}, "
            f"use at least {2 * patch_size}."
        )
    grid = size // patch_size

    outputs = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="vit_rescaling")(inputs)
    outputs = PatchEmbedding(
        patch_size, dim, stem_channels=stem_channels, name=vit_presets.PATCH_EMBEDDING_LAYER
    )(outputs)
    outputs = keras.layers.Reshape((grid * grid, dim), name="vit_tokens")(outputs)
    outputs = PositionEmbedding(name="vit_position_embedding")(outputs)
    for index in range(depth):
        outputs = TransformerBlock(
            dim, heads, mlp_dim, dropout=dropout, name=f"{vit_presets.BLOCK_LAYER_PREFIX}{index + 1}"
        )(outputs)
    outputs = keras.layers.LayerNormalization(epsilon=_LAYER_NORM_EPSILON, name="vit_norm")(
        outputs
    )
    outputs = keras.layers.Reshape((grid, grid, dim), name=vit_presets.TOKEN_GRID_LAYER)(outputs)
    return keras.layers.GlobalAveragePooling2D(name="vit_pool")(outputs)


def _check_positive_int(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ConfigError(f"{what} must be a whole number of at least 1; got {value!r}.")


def _check_dropout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise errors.ConfigError(
            f"dropout must be a number from 0 up to but excluding 1; got {value!r}."
        )


def _largest_divisor_at_most(number: int, limit: int) -> int:
    return max(divisor for divisor in range(1, min(number, limit) + 1) if number % divisor == 0)
