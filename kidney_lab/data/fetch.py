"""Download the Kaggle "CT KIDNEY DATASET: Normal-Cyst-Tumor and Stone" through kagglehub.

kagglehub is optional (``pip install kagglehub``); it needs internet and, for some accounts,
Kaggle credentials (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``). Without
them the command fails with one line that says how to place a manual download instead.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

from kidney_lab import errors
from kidney_lab.data import discover

KAGGLE_HANDLE = "nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"


def fetch_dataset(out: str | os.PathLike[str]) -> Path:
    """Download the dataset (about 1.6 GB) and copy it into ``out`` (kept if already there).

    Returns:
        The folder that holds the class folders, inside ``out``.

    Raises:
        FetchError: kagglehub is missing, the download failed (offline, no credentials), or the
            download does not hold the four class folders.
    """
    target = Path(out).expanduser().resolve()
    manual = (
        f"download it by hand from {KAGGLE_URL}, unzip it into {target}, and pass that folder "
        "as --data"
    )
    try:
        kagglehub = importlib.import_module("kagglehub")
    except ImportError:
        raise errors.FetchError(f"kagglehub is not installed (pip install kagglehub); or {manual}.") from None
    try:
        downloaded = Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except Exception as error:  # kagglehub raises many kinds (HTTP, auth, OS); all mean the same here.
        raise errors.FetchError(f"Could not download {KAGGLE_HANDLE} ({errors.first_line(error, 200)}); {manual}.") from None
    try:
        root, _ = discover.find_root(downloaded)
    except errors.DatasetError as error:
        raise errors.FetchError(f"The download in {downloaded} is not the expected dataset: {error}") from None
    destination = target / root.name
    if destination.exists():
        return destination
    # Copy into a temporary folder first, so an interrupted copy never looks like a dataset.
    partial = target / f".{root.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(root, partial)
    partial.rename(destination)
    return destination
