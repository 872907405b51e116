"""The calibrated ensemble of one study's runs, evaluated like a run.

The members are the study's completed runs trained on its one split and evaluated on its test
images (``predictions.csv``); the folds of a cross-validation are left out (each fold has other
test images, so they cannot be averaged image by image; an ensemble of the K models of each
fold is out of scope) and so are runs that failed, were cancelled or were never evaluated.
Each member's probabilities are calibrated with the temperature of its ``calibration.json``
(fitted on its validation images; 1, uncalibrated, where a run has none, and ``ensemble.json``
says so), then averaged (:func:`kidney_lab.evaluation.ensemble.combine`) with equal weights, or
with weights fitted on the members' **validation** predictions (``val_predictions.csv``) only:
:func:`fit_member_weights` never opens a test file.

The result lives in :func:`kidney_lab.runs.ensemble_folder` (``<workspace>/ensembles/<study_id>/``):
``predictions.csv`` (one row per common test image, with ``cluster``), ``metrics.json``
(:func:`kidney_lab.evaluation.stats.metrics_with_intervals` on that table, with the members'
``split_kind``) and ``ensemble.json`` (members, temperatures, weights, how they were fitted,
when), written last, so a folder with ``ensemble.json`` always has the other two. The
leaderboard scores it again from its predictions table, like any run. This module does not
import TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.evaluation import calibration
from kidney_lab.evaluation import ensemble
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.evaluation import trust

# The ``model`` of an ensemble's leaderboard row and metrics (not a registry name).
ENSEMBLE_MODEL = "ensemble"
EQUAL = "equal"
FITTED = "fitted"
WEIGHT_CHOICES = (EQUAL, FITTED)
# Held while a study's ensemble is built, so that two training processes of one study (the demo's
# lanes) finishing together cannot leave the ensemble of the one that saw fewer runs.
_LOCK_SUFFIX = ".lock"
CV_EXCLUDED = (
    "a fold of a cross-validation (each fold has other test images; an ensemble of the folds' "
    "models is out of scope)"
)


def members(workspace: str | os.PathLike[str], study_id: str) -> tuple[list[runs.RunRecord], list[dict[str, str]]]:
    """The runs of ``study_id`` an ensemble combines, oldest first, and the ones it leaves out.

    Returns:
        The members (completed, evaluated on the test split, not a cross-validation fold), and
        ``{"run_id", "reason"}`` for every other run of the study.
    """
    chosen: list[runs.RunRecord] = []
    excluded: list[dict[str, str]] = []
    for record in reversed(runs.list_runs(workspace, study_id=study_id)):
        if record.info.fold is not None or record.info.cv_id is not None:
            reason = CV_EXCLUDED
        elif record.state != runs.COMPLETED:
            reason = f"it is {record.state}, not completed"
        elif not record.has_predictions:
            reason = "it has no test predictions (evaluate it first)"
        else:
            chosen.append(record)
            continue
        excluded.append({"run_id": record.run_id, "reason": reason})
    return chosen, excluded


def eligible(workspace: str | os.PathLike[str], study_id: str) -> bool:
    """Whether ``study_id`` has at least two runs an ensemble can combine (see :func:`members`)."""
    return len(members(workspace, study_id)[0]) >= 2


def read_temperature(run_dir: str | os.PathLike[str]) -> float | None:
    """The temperature of the run's ``calibration.json`` (fitted on its validation images), or
    None when the run has none.

    Raises:
        kidney_lab.evaluation.calibration.CalibrationError: the file cannot be read or holds no
            usable temperature.
    """
    stored = trust.read_calibration(run_dir)
    return None if stored is None else float(stored["temperature"])


def member_temperatures(run_dirs: Sequence[str | os.PathLike[str]]) -> tuple[list[float], list[str]]:
    """Each run's temperature (1 where it has no calibration) and one note per run without one.

    Raises:
        kidney_lab.evaluation.calibration.CalibrationError: see :func:`read_temperature`.
    """
    temperatures, notes = [], []
    for run_dir in run_dirs:
        found = read_temperature(run_dir)
        if found is None:
            notes.append(f"{Path(run_dir).name} has no {runs.CALIBRATION_FILE}; its probabilities are used "
                         "uncalibrated (temperature 1)")
        temperatures.append(1.0 if found is None else found)
    return temperatures, notes


def fit_member_weights(run_dirs: Sequence[str | os.PathLike[str]], temperatures: Sequence[float]) -> list[float]:
    """Weights of the members fitted on their validation predictions alone
    (:func:`kidney_lab.evaluation.ensemble.fit_weights`); no test file is read.

    Raises:
        ensemble.EnsembleError: a member has no ``val_predictions.csv``, or the members'
            validation images differ.
        kidney_lab.evaluation.metrics.PredictionsError: a damaged ``val_predictions.csv``.
    """
    tables = []
    for run_dir in run_dirs:
        path = runs.validation_predictions_path(run_dir)
        if not path.is_file():
            raise ensemble.EnsembleError(
                f"Weights can only be fitted on validation predictions, and run {Path(run_dir).name} has no "
                f"{runs.VALIDATION_PREDICTIONS_FILE}; write it with `python -m kidney_lab fit-ood "
                f"{Path(run_dir).name}`, or use equal weights (--weights equal)."
            )
        tables.append(store.read_predictions(path))
    return ensemble.fit_weights(tables, temperatures)


def build(workspace: str | os.PathLike[str], study_id: str, weights: str = EQUAL) -> dict[str, Any]:
    """Combine the study's runs, score the ensemble on their common test images and store it.

    Args:
        workspace: the workspace of the study.
        study_id: the study.
        weights: :data:`EQUAL`, or :data:`FITTED` (on validation predictions only).

    Returns:
        What ``metrics.json`` holds (the metrics of
        :func:`kidney_lab.evaluation.stats.metrics_with_intervals`, ``study_id``, ``model``
        (:data:`ENSEMBLE_MODEL`), ``split_kind``, ``split_id``, ``fingerprint``, ``members``,
        ...) plus ``ensemble`` (the recipe written to ``ensemble.json``) and the absolute paths
        ``folder``, ``predictions``, ``metrics`` and ``recipe``.

    Raises:
        kidney_lab.errors.ConfigError: an unknown ``weights`` choice.
        ensemble.EnsembleError: fewer than two members, members on different splits or images,
            or fitted weights without every member's validation predictions.
        kidney_lab.runs.RunError: ``study_id`` is not a study id.
        kidney_lab.evaluation.metrics.PredictionsError: a damaged predictions table.
        kidney_lab.evaluation.calibration.CalibrationError: a damaged ``calibration.json``.
    """
    if weights not in WEIGHT_CHOICES:
        raise errors.ConfigError(f"Unknown weights {weights!r}; choose {' or '.join(WEIGHT_CHOICES)}.")
    folder = runs.ensemble_folder(workspace, study_id)
    _check_count(study_id, *members(workspace, study_id))  # Before any folder is made.
    with _building(folder):
        return _build(workspace, study_id, folder, weights)


@contextlib.contextmanager
def _building(folder: Path) -> Iterator[None]:
    """Hold the lock of one study's ensemble (a hidden file beside its folder, so a build that
    fails leaves no folder behind) while the block runs."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}{_LOCK_SUFFIX}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(workspace: str | os.PathLike[str], study_id: str, folder: Path, weights: str) -> dict[str, Any]:
    """:func:`build` inside the study's lock: the members are listed only once it is held."""
    chosen, excluded = members(workspace, study_id)
    _check_count(study_id, chosen, excluded)
    split_ids = sorted({record.info.split_id for record in chosen}, key=str)
    if len(split_ids) > 1:
        raise ensemble.EnsembleError(
            f"The runs of study {study_id} were trained on {len(split_ids)} splits ({', '.join(map(str, split_ids))}); "
            "an ensemble combines runs of one split only."
        )
    paths = [record.path for record in chosen]
    run_ids = [record.run_id for record in chosen]
    temperatures, notes = member_temperatures(paths)
    if weights == FITTED:
        chosen_weights = fit_member_weights(paths, temperatures)
    else:
        chosen_weights = [1.0 / len(chosen)] * len(chosen)
    tables = [store.load_predictions(path) for path in paths]
    try:
        table = ensemble.combine(tables, temperatures, chosen_weights)
    except ensemble.EnsembleError as error:
        numbered = ", ".join(f"{number} = {run_id}" for number, run_id in enumerate(run_ids, start=1))
        raise ensemble.EnsembleError(f"{error} (members: {numbered})") from None
    stored = [store.load_metrics(path) for path in paths]
    kinds = sorted({store.split_kind(path, runs.TEST_SOURCE, metrics) for path, metrics in zip(paths, stored)}, key=str)
    if len(kinds) > 1:
        raise ensemble.EnsembleError(
            f"The members of study {study_id} were scored as {' and '.join(map(str, kinds))} splits; evaluate "
            "them again."
        )
    recipe = {
        **ensemble.describe(chosen_weights, temperatures, run_ids),
        "study_id": study_id,
        "models": [record.model for record in chosen],
        "weights_method": weights,
        "weights_note": (
            "fitted on the members' validation predictions (val_predictions.csv) to minimise the mean "
            "negative log-likelihood; no test image was used" if weights == FITTED else "equal weights"
        ),
        "temperatures_fitted_on": calibration.FITTED_ON,
        "temperature_notes": notes,
        "excluded": excluded,
        "split_id": split_ids[0],
        "split_kind": kinds[0],
        "images": int(len(table)),
        "created": fileio.now_iso("seconds"),
    }
    result = stats.metrics_with_intervals(table, kinds[0])
    first = stored[0]
    result.update({
        "run_id": f"{runs.ENSEMBLES_FOLDER}/{study_id}",
        "model": ENSEMBLE_MODEL,
        "display_name": display_name(len(chosen)),
        "study_id": study_id,
        "evaluated_on": runs.TEST_SOURCE,
        "split_kind": kinds[0],
        "split_id": split_ids[0],
        "data": first.get("data"),
        "fingerprint": first.get("fingerprint"),
        "test_with_duplicate_in_train": first.get("test_with_duplicate_in_train"),
        "members": run_ids,
        "evaluated": recipe["created"],
        "predictions": str(runs.predictions_path(folder).absolute()),
        "metrics": str(runs.metrics_path(folder).absolute()),
    })
    with fileio.atomic_path(runs.predictions_path(folder)) as temporary:
        table.to_csv(temporary, index=False)
    fileio.atomic_write_json(runs.metrics_path(folder), result)
    fileio.atomic_write_json(runs.ensemble_path(folder), recipe)
    return {**result, "ensemble": recipe, "folder": str(folder.absolute()),
            "recipe": str(runs.ensemble_path(folder).absolute())}


def _check_count(study_id: str, chosen: list[runs.RunRecord], excluded: list[dict[str, str]]) -> None:
    """Refuse an ensemble of fewer than two members, naming the runs left out and why."""
    if len(chosen) >= 2:
        return
    left_out = "; ".join(f"{entry['run_id']}: {entry['reason']}" for entry in excluded)
    raise ensemble.EnsembleError(
        f"An ensemble needs at least two completed runs of study {study_id} evaluated on its test split; "
        f"it has {len(chosen)}" + (f" (left out: {left_out})." if left_out else ".")
    )


def build_after_training(workspace: str | os.PathLike[str], study_id: str) -> dict[str, Any] | None:
    """What training does when a study ends: build its equal-weight ensemble when it has at least
    two members (see :func:`members`). Never raises for the study's data: training has succeeded
    whatever happens here.

    Returns:
        The result of :func:`build`; ``{"error": message}`` when it could not be built; None when
        the study has fewer than two members.
    """
    try:
        if not eligible(workspace, study_id):
            return None
        return build(workspace, study_id, EQUAL)
    except (OSError, ValueError, errors.KidneyLabError) as error:
        return {"error": errors.first_line(error)}


def read_recipe(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``ensemble.json`` of an ensemble folder.

    Raises:
        ensemble.EnsembleError: it is missing or not a JSON object with ``members``.
    """
    path = runs.ensemble_path(folder)
    try:
        payload = fileio.read_json(path)
    except (OSError, ValueError) as error:
        raise ensemble.EnsembleError(f"{path} cannot be read ({errors.first_line(error)}); build it again "
                                     "with `python -m kidney_lab ensemble --study STUDY_ID`.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("members"), list):
        raise ensemble.EnsembleError(f"{path} holds no ensemble recipe; build it again with "
                                     "`python -m kidney_lab ensemble --study STUDY_ID`.")
    return payload


def display_name(count: int) -> str:
    """An ensemble's name in tables and titles: ``"Ensemble (5 models)"``."""
    return f"Ensemble ({count} models)"


def predictions_table(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """The validated ``predictions.csv`` of an ensemble folder (see
    :func:`kidney_lab.evaluation.store.read_predictions`)."""
    return store.read_predictions(runs.predictions_path(folder))
