"""How a run's stored evaluations are read back.

A run holds one evaluation of its own test split (``<run>/predictions.csv`` and
``<run>/metrics.json``, the run-folder contract of DESIGN.md) and any number of evaluations of
external folders, each under the folder's dataset fingerprint
(``<run>/external/<fingerprint>/predictions.csv`` and ``metrics.json``), so evaluating another
folder never overwrites the run's own test results. An evaluation is named by its *source*:
``"test"`` or the fingerprint. Where these files lie is the run store's fact
(:func:`kidney_lab.runs.evaluation_folder` and the ``*_path`` functions next to it); this
module reads them.

Reading goes through :func:`load_predictions`, which validates the table, so a file edited by
hand into nonsense gives a message that names the file and says how to rebuild it, never a
wrong number. This module does not import TensorFlow, so a page can read evaluations without
loading it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.evaluation import metrics as metrics_module

EXTERNAL_KIND = "external"
# The run store names evaluations and owns their folders, so its error is the one raised here.
EvaluationError = runs.EvaluationError


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a predictions table from a CSV file.

    Raises:
        EvaluationError: the file does not exist.
        metrics.PredictionsError: it cannot be parsed or is not a valid predictions table
            (see :func:`kidney_lab.evaluation.metrics.check_predictions`); the message names
            the file and says to evaluate the run again.
    """
    file = Path(path)
    hint = "evaluate the run again (python -m kidney_lab evaluate RUN_DIR) to rebuild it."
    if not file.is_file():
        raise EvaluationError(f"No predictions at {file}; evaluate the run first.")
    try:
        table = pd.read_csv(
            file,
            dtype={"path": str, "true_label": str, "predicted_label": str},
            keep_default_na=False,
        )
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        reason = errors.first_line(error)
        raise metrics_module.PredictionsError(f"{file} cannot be read as a table ({reason}); {hint}") from None
    try:
        return metrics_module.check_predictions(table, source=str(file))
    except metrics_module.PredictionsError as error:
        raise metrics_module.PredictionsError(f"{error} It was changed or damaged; {hint}") from None


def load_predictions(run_dir: str | os.PathLike[str], source: str = runs.TEST_SOURCE) -> pd.DataFrame:
    """The validated predictions table of one evaluation of a run.

    Args:
        run_dir: the run folder.
        source: ``"test"`` (the run's own test split) or the fingerprint of an external folder.

    Raises:
        EvaluationError: an invalid source, or no such evaluation.
        metrics.PredictionsError: the stored table is damaged (see :func:`read_predictions`).
    """
    path = runs.predictions_path(run_dir, source)
    if not path.is_file():
        raise EvaluationError(
            f"Run {Path(run_dir).name} has no evaluation {source!r} (no {path}); run "
            "`python -m kidney_lab evaluate` on it first."
        )
    return read_predictions(path)


def images_key(table: pd.DataFrame) -> str:
    """A short hash of the sorted image paths of a predictions table: two evaluations with the
    same key hold exactly the same images, so they can be compared row by row (the
    leaderboard's comparable group, the Evaluation page's pairs)."""
    return fileio.short_hash(*sorted(table["path"].astype(str)), length=8)


def load_metrics(run_dir: str | os.PathLike[str], source: str = runs.TEST_SOURCE) -> dict[str, Any]:
    """The stored ``metrics.json`` of one evaluation of a run.

    Raises:
        EvaluationError: an invalid source, no such evaluation, or an unreadable file.
    """
    path = runs.metrics_path(run_dir, source)
    try:
        payload = fileio.read_json(path)
    except FileNotFoundError:
        raise EvaluationError(
            f"Run {Path(run_dir).name} has no evaluation {source!r} (no {path}); run "
            "`python -m kidney_lab evaluate` on it first."
        ) from None
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path} cannot be read ({error}); evaluate the run again.") from None
    if not isinstance(payload, dict):
        raise EvaluationError(f"{path} does not hold a JSON object; evaluate the run again.")
    return payload


def list_evaluations(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every stored evaluation of a run: the test split first, then external folders by name.

    Never raises for a damaged evaluation: its ``problem`` says what is wrong.

    Returns:
        One dict per evaluation with ``source`` (``"test"`` or the fingerprint), ``kind``
        (the split strategy, ``"random"`` or ``"grouped"``, for the test split; ``"external"``
        otherwise), ``images``, ``accuracy``, ``macro_f1``, ``data`` (the evaluated folder),
        ``fingerprint``, ``evaluated`` (when, ISO 8601), ``path`` (its predictions.csv),
        ``metrics`` (its metrics.json) and ``problem`` (``None`` when metrics.json is readable).
    """
    folder = Path(run_dir)
    listing = []
    for source in runs.evaluation_sources(folder):
        try:
            stored, problem = load_metrics(folder, source), None
        except EvaluationError as error:
            stored, problem = {}, str(error)
        listing.append(
            {
                "source": source,
                "kind": split_kind(folder, source, stored),
                "images": stored.get("images"),
                "accuracy": stored.get("accuracy"),
                "macro_f1": stored.get("macro_f1"),
                "data": stored.get("data"),
                "fingerprint": stored.get("fingerprint", None if source == runs.TEST_SOURCE else source),
                "evaluated": stored.get("evaluated"),
                "path": str(runs.predictions_path(folder, source).absolute()),
                "metrics": str(runs.metrics_path(folder, source).absolute()),
                "problem": problem,
            }
        )
    return listing


def split_kind(
    run_dir: str | os.PathLike[str], source: str = runs.TEST_SOURCE, stored: dict[str, Any] | None = None
) -> str | None:
    """What one evaluation of a run was measured on: ``"external"`` for a folder; for the test
    split the ``split_kind`` its ``metrics.json`` stored, else the split strategy of ``run.json``
    (``"random"`` or ``"grouped"``); ``None`` when neither says.

    Args:
        run_dir: the run folder.
        source: ``"test"`` or an external folder's fingerprint.
        stored: the evaluation's ``metrics.json`` when already read (read here otherwise).
    """
    if source != runs.TEST_SOURCE:
        return EXTERNAL_KIND
    if stored is None:
        try:
            stored = load_metrics(run_dir, source)
        except EvaluationError:
            stored = {}
    if stored.get("split_kind"):
        return str(stored["split_kind"])
    try:
        return runs.read_info(Path(run_dir)).split_strategy
    except runs.RunNotFoundError:
        return None
