"""Explanations: what each trained model looks at, how fast, and whether it can be trusted.

The original study's Grad-CAM figures came from ImageNet models rather than the trained kidney
models, with BGR colours shown as RGB, and its ViT Grad-CAM never ran. Here every heat map comes
from a run's own saved model through the registry's CAM layer (the ViT through its token grid),
is drawn in RGB, and is measured against the phantoms' lesion masks.

- :mod:`kidney_lab.explain.cam`: one class per CAM method on one base (forward pass, gradients,
  resizing, the compiled pass), the method registry (:data:`METHODS`), the cache;
- :mod:`kidney_lab.explain.compare`: one scan through several runs, failures kept per run;
- :mod:`kidney_lab.explain.render`: colour maps, overlays and PNG bytes;
- :mod:`kidney_lab.explain.faithfulness`: pointing game, energy in the lesion mask, deletion and
  insertion curves, and the model-randomisation sanity check;
- :mod:`kidney_lab.explain.preload`: the app's warm-up of the models Compare opens with.

The names the app uses are importable from the package itself (``from kidney_lab.explain
import explain, overlay``), resolved on first use as in :mod:`kidney_lab.evaluation`, so that
importing the package, or its light modules (``compare``'s choices, ``render``), loads no
TensorFlow.
"""

from __future__ import annotations

from kidney_lab import lazy

_EXPORTS = {
    "METHODS": "cam",
    "Explainer": "cam",
    "Explanation": "cam",
    "clear_cache": "cam",
    "load_explainer": "cam",
    "ExplainReport": "compare",
    "explain": "compare",
    "evaluate_faithfulness": "faithfulness",
    "COLORMAPS": "render",
    "overlay": "render",
    "to_png": "render",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy.attributes(__name__, _EXPORTS)
