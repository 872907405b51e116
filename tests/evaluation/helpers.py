"""Hand-made predictions tables and file snapshots for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics

# Eight images, two per class, with probabilities in class order (Cyst, Normal, Stone, Tumor).
# Every expected number in test_metrics.py was worked out by hand from these rows.
KNOWN_ROWS = [
    ("Cyst", (0.7, 0.1, 0.1, 0.1)),     # right, confidence 0.7
    ("Cyst", (0.4, 0.5, 0.05, 0.05)),   # predicted Normal, confidence 0.5
    ("Normal", (0.1, 0.8, 0.05, 0.05)),  # right, 0.8
    ("Normal", (0.1, 0.6, 0.2, 0.1)),   # right, 0.6
    ("Stone", (0.05, 0.05, 0.9, 0.0)),  # right, 0.9
    ("Stone", (0.3, 0.1, 0.2, 0.4)),    # predicted Tumor, 0.4
    ("Tumor", (0.1, 0.1, 0.1, 0.7)),    # right, 0.7
    ("Tumor", (0.2, 0.2, 0.2, 0.4)),    # right, 0.4
]


def make_table(labels: list[str], probabilities: np.ndarray, prefix: str = "/data/img") -> pd.DataFrame:
    """A predictions table with paths ``<prefix>-<i>.png`` and predicted = argmax."""
    probabilities = np.asarray(probabilities, dtype=float)
    table = pd.DataFrame(
        {
            "path": [f"{prefix}-{index}.png" for index in range(len(labels))],
            "true_label": list(labels),
            "predicted_label": [CLASS_NAMES[index] for index in probabilities.argmax(axis=1)],
        }
    )
    for index, column in enumerate(metrics.probability_columns()):
        table[column] = probabilities[:, index]
    return table


def known_table() -> pd.DataFrame:
    """The eight hand-checked rows of :data:`KNOWN_ROWS`."""
    return make_table([label for label, _ in KNOWN_ROWS], [row for _, row in KNOWN_ROWS])


def random_table(rows: int, seed: int = 0, skill: float = 1.5, prefix: str = "/data/img") -> pd.DataFrame:
    """A plausible table: softmax of noise with ``skill`` added to the true class's logit."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CLASS_NAMES), rows)
    logits = rng.normal(size=(rows, len(CLASS_NAMES)))
    logits[np.arange(rows), truth] += skill
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return make_table([CLASS_NAMES[index] for index in truth], probabilities, prefix=prefix)


def snapshot(folder: Path) -> dict[str, bytes]:
    """The bytes of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
