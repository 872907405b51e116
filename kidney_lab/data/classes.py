"""The four classes of the Kaggle CT KIDNEY DATASET, in the one order used everywhere.

The order is alphabetical, which is also the order Keras' ``flow_from_directory`` used in the
original study; a model's output ``i`` is ``CLASS_NAMES[i]``.
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("Cyst", "Normal", "Stone", "Tumor")

# The folder name of the Kaggle download that holds the four class folders.
KAGGLE_FOLDER_NAME = "CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone"


def match_class(folder_name: str) -> str | None:
    """Return the class a folder name stands for (case-insensitive), or None."""
    lowered = folder_name.strip().lower()
    for name in CLASS_NAMES:
        if lowered == name.lower():
            return name
    return None


def class_index(name: str) -> int:
    """Return the output index of class ``name``; raise ValueError for an unknown class."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"Unknown class {name!r}; the classes are {', '.join(CLASS_NAMES)}."
        ) from None
