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
  insertion curves, and the model-randomisation sanity check.

The names the app uses are re-exported here.
"""

from kidney_lab.explain.cam import METHODS, Explainer, Explanation, clear_cache, load_explainer
from kidney_lab.explain.compare import ExplainReport, explain
from kidney_lab.explain.faithfulness import evaluate_faithfulness
from kidney_lab.explain.render import COLORMAPS, overlay, to_png

__all__ = [
    "COLORMAPS",
    "METHODS",
    "ExplainReport",
    "Explainer",
    "Explanation",
    "clear_cache",
    "evaluate_faithfulness",
    "explain",
    "load_explainer",
    "overlay",
    "to_png",
]
