"""Predictions, metrics and comparisons, all computed from stored per-image predictions.

Modules, in the order the data flows: ``metrics`` (scores of one predictions table), ``store``
(how stored evaluations are read back; where they lie is :mod:`kidney_lab.runs`), ``evaluate`` (run a model and store its
predictions), ``stats`` (McNemar between two runs), ``leaderboard`` and ``model_card``.

The helpers below are also importable from the package itself (``from kidney_lab.evaluation
import load_predictions, mcnemar``), resolved on first use, so importing the package loads
nothing heavy. The three functions named like their modules are imported from those
modules: ``from kidney_lab.evaluation.evaluate import evaluate``, ``...leaderboard import
leaderboard``, ``...model_card import model_card``; a package attribute cannot be both the
module and the function without breaking ``from kidney_lab.evaluation import evaluate`` as a
module, which the training engine uses.
"""

from __future__ import annotations

from kidney_lab import lazy

_EXPORTS = {
    "evaluate_run": "evaluate",
    "predict_frame": "evaluate",
    "compute_metrics": "metrics",
    "check_predictions": "metrics",
    "probability_columns": "metrics",
    "confusion_rates": "metrics",
    "roc_curves": "metrics",
    "pr_curves": "metrics",
    "reliability": "metrics",
    "bootstrap_intervals": "metrics",
    "PredictionsError": "metrics",
    "load_predictions": "store",
    "load_metrics": "store",
    "list_evaluations": "store",
    "EvaluationError": "store",
    "mcnemar": "stats",
    "compare_runs": "stats",
    "write_model_card": "model_card",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy.attributes(__name__, _EXPORTS)
