"""The facts of kidney_lab's Vision Transformer that need no Keras: its default configuration,
the name of its token-grid layer and the smallest input it takes.

They live apart from :mod:`kidney_lab.models.vit` (the Keras layers, which import TensorFlow)
so that the registry can state the ViT's facts without loading TensorFlow. How the defaults
were chosen is measured in that module's docstring.
"""

from __future__ import annotations

from typing import Any

# The name of the layer that holds the last tokens as a (grid_h, grid_w, dim) grid.
TOKEN_GRID_LAYER = "vit_token_grid"
# The patch embedding and the encoder blocks (``BLOCK_LAYER_PREFIX`` + 1, 2, ...).
PATCH_EMBEDDING_LAYER = "vit_patch_embedding"
BLOCK_LAYER_PREFIX = "vit_block_"

DEFAULT_CONFIG: dict[str, Any] = {
    "patch_size": 16,
    "dim": 64,
    "depth": 2,
    "heads": 4,
    "mlp_dim": 128,
    "dropout": 0.0,
    "stem_channels": (16, 32, 64, 64),
}

# The smallest image the default configuration takes: a grid of at least 2 x 2 patches.
MIN_SIZE = 2 * DEFAULT_CONFIG["patch_size"]
