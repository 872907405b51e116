"""Where a run's evaluations are stored, and how they are read back.

A run holds one evaluation of its own test split (``<run>/predictions.csv`` and
``<run>/metrics.json``, the run-folder contract of DESIGN.md) and any number of evaluations of
external folders, each under the folder's dataset fingerprint
(``<run>/external/<fingerprint>/predictions.csv`` and ``metrics.json``), so evaluating another
folder never overwrites the run's own test results. An evaluation is named by its *source*:
``"test"`` or the fingerprint.

Reading goes through :func:`load_predictions`, which validates the table, so a file edited by
hand into nonsense gives a message that names the file and says how to rebuild it, never a
wrong number. This module does not import TensorFlow, so a page can read evaluations without
loading it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.evaluation import metrics as metrics_module

TEST_SOURCE = "test"
EXTERNAL_FOLDER = "external"
EXTERNAL_KIND = "external"
# Written by kidney_lab.explain.faithfulness next to the evaluation it measured.
FAITHFULNESS_FILE = "faithfulness.json"
# Dataset fingerprints are hex digests (kidney_lab.fileio.short_hash); nothing else may name a
# folder under external/, so a source can never lead outside the run folder.
_FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{6,64}")


class EvaluationError(errors.KidneyLabError, ValueError):
    """An evaluation cannot be made, found or read."""


def check_source(source: str) -> str:
    """Return ``source`` if it names an evaluation: ``"test"`` or a dataset fingerprint.

    Raises:
        EvaluationError: anything else (a path, an empty string, ...).
    """
    if source == TEST_SOURCE or (isinstance(source, str) and _FINGERPRINT_PATTERN.fullmatch(source)):
        return source
    raise EvaluationError(
        f"{source!r} is not an evaluation source; use 'test' or the fingerprint of an evaluated "
        "folder (see list_evaluations or the metrics.json of the evaluation)."
    )


def evaluation_folder(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> Path:
    """The folder that holds the evaluation ``source`` of a run (it need not exist yet).

    Raises:
        EvaluationError: ``source`` is neither ``"test"`` nor a fingerprint.
    """
    folder = Path(run_dir)
    if check_source(source) == TEST_SOURCE:
        return folder
    return folder / EXTERNAL_FOLDER / source


def predictions_path(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> Path:
    """The ``predictions.csv`` of evaluation ``source``."""
    return evaluation_folder(run_dir, source) / runs.PREDICTIONS_FILE


def metrics_path(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> Path:
    """The ``metrics.json`` of evaluation ``source``."""
    return evaluation_folder(run_dir, source) / runs.METRICS_FILE


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
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise metrics_module.PredictionsError(f"{file} cannot be read as a table ({reason}); {hint}") from None
    try:
        return metrics_module.check_predictions(table, source=str(file))
    except metrics_module.PredictionsError as error:
        raise metrics_module.PredictionsError(f"{error} It was changed or damaged; {hint}") from None


def load_predictions(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> pd.DataFrame:
    """The validated predictions table of one evaluation of a run.

    Args:
        run_dir: the run folder.
        source: ``"test"`` (the run's own test split) or the fingerprint of an external folder.

    Raises:
        EvaluationError: an invalid source, or no such evaluation.
        metrics.PredictionsError: the stored table is damaged (see :func:`read_predictions`).
    """
    path = predictions_path(run_dir, source)
    if not path.is_file():
        raise EvaluationError(
            f"Run {Path(run_dir).name} has no evaluation {source!r} (no {path}); run "
            "`python -m kidney_lab evaluate` on it first."
        )
    return read_predictions(path)


def load_metrics(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> dict[str, Any]:
    """The stored ``metrics.json`` of one evaluation of a run.

    Raises:
        EvaluationError: an invalid source, no such evaluation, or an unreadable file.
    """
    path = metrics_path(run_dir, source)
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


def load_faithfulness(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> dict[str, Any] | None:
    """The heat-map faithfulness scores measured on one evaluation's images, if measured.

    ``python -m kidney_lab explain-eval`` writes them next to the evaluation they belong to:
    ``<run>/faithfulness.json`` for the test split, ``<run>/external/<fingerprint>/`` for a
    folder (see :mod:`kidney_lab.explain.faithfulness`).

    Returns:
        The stored object (``methods`` by explanation method, ``baselines``, ``images``, ...),
        or ``None`` when faithfulness was never measured there.

    Raises:
        EvaluationError: an invalid source, or a file that is not a JSON object with ``methods``.
    """
    path = evaluation_folder(run_dir, source) / FAITHFULNESS_FILE
    try:
        payload = fileio.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path} cannot be read ({error}); measure it again with explain-eval.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("methods"), dict):
        raise EvaluationError(f"{path} holds no faithfulness scores by method; measure it again with explain-eval.")
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
    sources = [TEST_SOURCE] if predictions_path(folder).is_file() else []
    try:
        names = sorted(entry.name for entry in os.scandir(folder / EXTERNAL_FOLDER) if entry.is_dir())
    except OSError:
        names = []
    sources += [name for name in names if _FINGERPRINT_PATTERN.fullmatch(name) and predictions_path(folder, name).is_file()]
    try:
        split_kind = fileio.read_json(folder / runs.RUN_FILE).get("split_strategy")
    except (OSError, ValueError, AttributeError):
        split_kind = None
    listing = []
    for source in sources:
        try:
            stored, problem = load_metrics(folder, source), None
        except EvaluationError as error:
            stored, problem = {}, str(error)
        listing.append(
            {
                "source": source,
                "kind": stored.get("split_kind") or (EXTERNAL_KIND if source != TEST_SOURCE else split_kind),
                "images": stored.get("images"),
                "accuracy": stored.get("accuracy"),
                "macro_f1": stored.get("macro_f1"),
                "data": stored.get("data"),
                "fingerprint": stored.get("fingerprint", None if source == TEST_SOURCE else source),
                "evaluated": stored.get("evaluated"),
                "path": str(predictions_path(folder, source).absolute()),
                "metrics": str(metrics_path(folder, source).absolute()),
                "problem": problem,
            }
        )
    return listing
