"""The run store: one folder per trained model under the workspace, and the one owner of its layout.

A run folder holds ``run.json`` (what was trained, how, and a status summary; read and written
only here, as the typed, versioned :class:`RunInfo`), ``status.json`` (the live state written
by the training process: phase, epoch, metrics so far, pid, heartbeat) and the artefacts
training and evaluation leave there. Every path inside a run is named here (the constants and
the ``*_path`` functions below): the history, the checkpoint, the evaluation of the test split
and those of external folders (``external/<fingerprint>/``), faithfulness scores, calibration,
the out-of-distribution detector and cross-validation results; and, under the workspace, the
pooled results of cross-validations (``cv/``) and each study's ensemble (``ensembles/``). The app
and the command line read and change runs only through this module.

Every JSON write is atomic. :func:`read_run` never raises for a damaged folder: a folder
without a readable ``run.json`` or ``status.json``, or whose ``run.json`` has a field of the
wrong type, reads as :data:`BROKEN` with the reason, and a run whose process is gone while its
status says running reads as :data:`STALE`, never as running. Process identity is a pid plus
the process's start time (from ``/proc`` where there is one), so a pid that the system has
reused for another process does not look alive. :attr:`RunRecord.model_problem` says, without
TensorFlow, why a run's ``model.keras`` cannot serve it (cut short, or replaced by another
architecture's file).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import functools
import json
import os
import re
import secrets
import shutil
import socket
import time
import zipfile
from pathlib import Path
import typing
from typing import Any, Mapping

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.errors import ConfigError, KidneyLabError
from kidney_lab.fileio import atomic_write_json, now_iso, read_json
from kidney_lab.workspace import WorkspaceError, default_workspace, inside

RUN_FILE = "run.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
PREDICTIONS_FILE = "predictions.csv"
# The kept model's predictions on the run's validation images (what calibration is fitted on).
VALIDATION_PREDICTIONS_FILE = "val_predictions.csv"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
BACKUP_FOLDER = "backup"
# Evaluations of folders other than the run's own test split: external/<fingerprint>/.
EXTERNAL_FOLDER = "external"
# Heat-map faithfulness scores, next to the evaluation they were measured on.
FAITHFULNESS_FILE = "faithfulness.json"
# Temperature scaling fitted on the run's validation predictions.
CALIBRATION_FILE = "calibration.json"
# The out-of-distribution detector fitted on the run's training images (plain JSON, no pickle).
DETECTOR_FILE = "ood_detector.json"
# The result of a cross-validation (pooled out-of-fold scores, per-fold scores).
CV_FILE = "cv.json"
# Under the workspace: pooled cross-validation results, one folder per study and model.
CV_FOLDER = "cv"
# Under the workspace: the calibrated ensemble of each study's runs, one folder per study.
ENSEMBLES_FOLDER = "ensembles"
# The recipe of an ensemble (members, temperatures, weights and how they were fitted).
ENSEMBLE_FILE = "ensemble.json"

# The evaluation of the run's own test split; an external folder's is named by its fingerprint.
TEST_SOURCE = "test"
# Dataset fingerprints are hex digests (kidney_lab.fileio.short_hash); nothing else may name a
# folder under external/, so a source can never lead outside the run folder.
_FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{6,64}")

# The version of the run.json layout this code writes; a run.json without one is version 0,
# which has the same fields (it was written before the number was).
RUN_SCHEMA_VERSION = 1

QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STALE = "stale"
BROKEN = "broken"

ACTIVE_STATES = (QUEUED, RUNNING)
FINISHED_STATES = (COMPLETED, FAILED, CANCELLED)

# A run on another host whose heartbeat is older than this (seconds) is shown as stale.
STALE_AFTER_SECONDS = 600.0

RUN_ID_PATTERN = re.compile(r"\d{8}-\d{6}-[a-z0-9]{1,40}-[0-9a-f]{6}")
STUDY_ID_PATTERN = re.compile(r"study-\d{8}-\d{6}-[0-9a-f]{4}")
_MODEL_NAME_PATTERN = re.compile(r"[a-z0-9]{1,40}")
_DELETING_PREFIX = ".deleting-"
# How much of the end of a log file is read to find its last lines (bytes).
_LOG_TAIL_BYTES = 64 * 1024


class RunError(KidneyLabError):
    """A run cannot be found, read or changed."""


class InvalidRunIdError(WorkspaceError, ValueError):
    """A string is not a run id, so it cannot name a folder in the workspace."""


class RunNotFoundError(RunError):
    """There is no run folder where one was expected."""


class RunBusyError(RunError):
    """The run's process is still alive, so the run cannot be deleted."""


class EvaluationError(RunError, ValueError):
    """An evaluation stored in a run cannot be named, found or read."""


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The content of a run's ``run.json``, one typed field per key the code base writes.

    Read with :meth:`from_dict`, which never raises: a missing key reads as ``None``, and a
    value of the wrong type reads as ``None`` with a line in :attr:`problems` (then
    :func:`read_run` reports the run as broken). :meth:`to_dict` gives what is written.

    Attributes:
        schema_version: The layout version of the file (:data:`RUN_SCHEMA_VERSION` for new
            runs, 0 for a file written before the number was).
        run_id, study_id, model, display_name: The run, its study and the registry name and
            display name of its architecture.
        spec: The registry facts of the architecture when it trained
            (:func:`kidney_lab.models.registry.describe`).
        image_size: Input side in pixels.
        class_names: The output order of the classes.
        config: The training settings (``TrainConfig.to_dict``).
        command_key: What identifies "the same training command", for resuming.
        workspace, data_root: The workspace and the dataset folder (paths as text).
        dataset_fingerprint, dataset_images: The dataset's fingerprint and image count.
        split_id, split_strategy, split_counts: The split used, its strategy and images per subset.
        test_with_duplicate_in_train: Test images with an exact or near duplicate in training.
        weights_requested, weights, weights_note: The weights asked for, those used, and why
            they differ (None when they do not).
        host, versions: The machine and the library versions it trained with.
        created, finished: When the run was created and finished (ISO 8601, UTC).
        status, error: The final state and error summary (:func:`mark_finished`).
        parameters: Weights of the model (count).
        mixed_precision, xla, strategy, replicas, global_batch_size, device: How it trained.
        class_weights: The loss weight of each class.
        checkpoint: Epoch, logs, size (bytes) and mtime (ns) of the saved ``model.keras``.
        training_finished: True once training ended and the checkpoint was kept.
        train_seconds: Wall time of training (seconds).
        trust_seconds: Wall time of predicting the validation images and fitting the
            out-of-distribution detector on the training images after training (seconds).
        epochs_trained, best_epoch, kept_epoch: Epochs trained, the kept epoch's number and
            its logs.
        cv_id, fold, folds: For a fold of a grouped K-fold cross-validation: the stored fold
            plan's id (:mod:`kidney_lab.data.folds`), this run's fold (0-based) and K; None
            for a run trained on an ordinary split.
        peak_rss_mb, rss_start_mb, peak_rss_measure: Peak and starting resident memory (MiB)
            and how the peak was measured.
        extra: Keys this version does not know, and known keys whose value had the wrong type,
            as found; they are written back unchanged, so a rewrite loses nothing.
        problems: What is wrong with the file, one line per field (empty when nothing is).
    """

    schema_version: int = RUN_SCHEMA_VERSION
    run_id: str | None = None
    study_id: str | None = None
    model: str | None = None
    display_name: str | None = None
    spec: dict[str, Any] | None = None
    image_size: int | None = None
    class_names: tuple[str, ...] | None = None
    config: dict[str, Any] | None = None
    command_key: str | None = None
    workspace: str | None = None
    data_root: str | None = None
    dataset_fingerprint: str | None = None
    dataset_images: int | None = None
    split_id: str | None = None
    split_strategy: str | None = None
    split_counts: dict[str, int] | None = None
    test_with_duplicate_in_train: int | None = None
    weights_requested: str | None = None
    host: str | None = None
    versions: dict[str, str] | None = None
    created: str | None = None
    status: str | None = None
    finished: str | None = None
    error: str | None = None
    weights: str | None = None
    weights_note: str | None = None
    parameters: int | None = None
    mixed_precision: bool | None = None
    xla: bool | None = None
    strategy: str | None = None
    replicas: int | None = None
    global_batch_size: int | None = None
    class_weights: dict[str, float] | None = None
    device: str | None = None
    checkpoint: dict[str, Any] | None = None
    training_finished: bool | None = None
    train_seconds: float | None = None
    trust_seconds: float | None = None
    epochs_trained: int | None = None
    best_epoch: int | None = None
    kept_epoch: dict[str, Any] | None = None
    peak_rss_mb: float | None = None
    rss_start_mb: float | None = None
    peak_rss_measure: str | None = None
    cv_id: str | None = None
    fold: int | None = None
    folds: int | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        """The record of a ``run.json`` object; never raises (see the class docstring)."""
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        problems: list[str] = []
        kinds = _info_kinds()
        for key, raw in data.items():
            if key not in kinds:
                extra[key] = raw
                continue
            value, problem = _typed(key, raw)
            if problem is None:
                values[key] = value
            else:
                extra[key] = raw
                problems.append(problem)
        version = values.pop("schema_version", 0)
        if version is None:
            version = 0
        if version > RUN_SCHEMA_VERSION:
            problems.append(
                f"schema_version is {version}, newer than the {RUN_SCHEMA_VERSION} this kidney_lab "
                "reads; update kidney_lab"
            )
        return cls(schema_version=version, **values, extra=extra, problems=tuple(problems))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``run.json``: every field (``None`` as null), then :attr:`extra`."""
        written: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name in ("extra", "problems"):
                continue
            value = getattr(self, field.name)
            if value is None and field.name in self.extra:
                continue  # A value of the wrong type, kept as found.
            written[field.name] = list(value) if isinstance(value, tuple) else value
        for key, value in self.extra.items():
            written.setdefault(key, value)
        return written

    def updated(self, **fields: Any) -> RunInfo:
        """This record with ``fields`` merged in (known keys typed, unknown ones into :attr:`extra`).

        Raises:
            RunError: a known field is given a value of the wrong type; nothing is changed.
        """
        known = [key for key in fields if key in _info_kinds()]
        wrong = [problem for problem in (_typed(key, fields[key])[1] for key in known) if problem]
        if wrong:
            raise RunError(f"Cannot record in {RUN_FILE}: {'; '.join(wrong)}.")
        return RunInfo.from_dict({**self.to_dict(), **fields})

    def problem(self) -> str | None:
        """What is wrong with the file, as one line naming it (``run.json: ...``), or None."""
        return f"{RUN_FILE}: {'; '.join(self.problems)}" if self.problems else None


# What a run.json field may hold, by the annotation's base type.
_KIND_NAMES = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
    dict: "an object",
    tuple: "a list of text",
}


@functools.cache
def _info_kinds() -> dict[str, type]:
    """Field name -> the JSON type it holds (int, float, bool, str, dict or tuple of str)."""
    hints = typing.get_type_hints(RunInfo)
    kinds = {}
    for field in dataclasses.fields(RunInfo):
        if field.name in ("extra", "problems"):
            continue
        options = [option for option in typing.get_args(hints[field.name]) if option is not type(None)]
        base = options[0] if options else hints[field.name]
        kinds[field.name] = typing.get_origin(base) or base
    return kinds


def _typed(key: str, raw: Any) -> tuple[Any, str | None]:
    """The value of field ``key`` read from ``raw``, and None; or None and what is wrong with it."""
    if raw is None:
        return None, None
    kind = _info_kinds()[key]
    fits = {
        int: isinstance(raw, int) and not isinstance(raw, bool),
        float: isinstance(raw, (int, float)) and not isinstance(raw, bool),
        bool: isinstance(raw, bool),
        str: isinstance(raw, str),
        dict: isinstance(raw, dict) and all(isinstance(name, str) for name in raw),
        tuple: isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw),
    }[kind]
    if not fits:
        return None, f"{key} is {_shown(raw)}, not {_KIND_NAMES[kind]}"
    if kind is float:
        return float(raw), None
    if kind is tuple:
        return tuple(raw), None
    return raw, None


def _shown(value: Any) -> str:
    """``value`` for a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run folder says about itself, read at one moment.

    Attributes:
        run_id: The folder's name.
        path: The run folder (absolute).
        info: The content of ``run.json``; an empty :class:`RunInfo` when it cannot be read.
        status: The content of ``status.json``; ``{}`` when it cannot be read.
        state: The effective state: the status's state, except :data:`STALE` when its process
            is gone and :data:`BROKEN` when the folder cannot be read or ``run.json`` has a
            field of the wrong type.
        problem: Why the run is broken, stale or failed; ``None`` otherwise.
        info_readable: False when ``run.json`` could not be read at all.
    """

    run_id: str
    path: Path
    info: RunInfo
    status: dict[str, Any]
    state: str
    problem: str | None = None
    info_readable: bool = True

    @property
    def model(self) -> str | None:
        """The registry name of the model, if ``run.json`` names one."""
        return self.info.model

    @property
    def study_id(self) -> str | None:
        """The study the run belongs to, if any."""
        return self.info.study_id

    @property
    def weights_note(self) -> str | None:
        """Why the run's starting weights differ from what was asked (ImageNet weights asked
        for with ``--weights auto`` but unavailable, so it trained from random initialisation);
        None when they are what was asked."""
        return self.info.weights_note or None

    @property
    def created(self) -> str | None:
        """When the run was created (ISO 8601, UTC)."""
        return self.info.created

    @property
    def is_active(self) -> bool:
        """True while the run is queued or running with a live process."""
        return self.state in ACTIVE_STATES

    @property
    def has_model(self) -> bool:
        """True when the best checkpoint (``model.keras``) exists."""
        return model_path(self.path).is_file()

    @property
    def has_predictions(self) -> bool:
        """True when ``predictions.csv`` exists."""
        return predictions_path(self.path).is_file()

    @functools.cached_property
    def model_problem(self) -> str | None:
        """Why ``model.keras`` cannot serve this run (see :func:`check_model_file`); None if usable."""
        return check_model_file(model_path(self.path), self.model, self.info.image_size)


def _utc_stamp(when: datetime.datetime | None) -> str:
    """``YYYYMMDD-HHMMSS`` of ``when`` in UTC; a naive ``when`` is taken to be UTC already."""
    if when is None:
        when = datetime.datetime.now(datetime.timezone.utc)
    elif when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y%m%d-%H%M%S")


def new_run_id(model_name: str, when: datetime.datetime | None = None) -> str:
    """A fresh run id such as ``20261126-101512-resnet50-3f9a1c``.

    The id is the UTC time, the registry name of the model and 6 random hex digits.

    Raises:
        ConfigError: ``model_name`` is not a registry name (letters and digits only).
    """
    name = model_name.lower()
    if not _MODEL_NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{model_name!r} cannot be part of a run id; use the model's registry name "
            "(letters and digits only, such as resnet50)."
        )
    return f"{_utc_stamp(when)}-{name}-{secrets.token_hex(3)}"


def new_study_id(when: datetime.datetime | None = None) -> str:
    """A fresh study id such as ``study-20261126-101512-7c2e`` (UTC time, 4 random hex digits)."""
    return f"study-{_utc_stamp(when)}-{secrets.token_hex(2)}"


def run_path(workspace: str | os.PathLike[str], run_id: str) -> Path:
    """The folder of run ``run_id`` in ``workspace`` (it need not exist).

    Raises:
        InvalidRunIdError: ``run_id`` is not a run id (for instance a path such as ``../x``).
        WorkspaceError: The folder would lie outside the workspace (through a link).
    """
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidRunIdError(
            f"{run_id!r} is not a run id; run ids look like 20261126-101512-resnet50-3f9a1c "
            "(see `python -m kidney_lab train --json` or the Runs page)."
        )
    return inside(workspace, run_id)


# Paths inside a run ---------------------------------------------------------------------------


def model_path(run_dir: str | os.PathLike[str]) -> Path:
    """The run's best checkpoint, ``model.keras``."""
    return Path(run_dir) / MODEL_FILE


def history_path(run_dir: str | os.PathLike[str]) -> Path:
    """The run's per-epoch metrics, ``history.csv``."""
    return Path(run_dir) / HISTORY_FILE


def log_path(run_dir: str | os.PathLike[str]) -> Path:
    """The training process's log, ``train.log``."""
    return Path(run_dir) / LOG_FILE


def calibration_path(run_dir: str | os.PathLike[str]) -> Path:
    """The run's fitted calibration (temperature scaling), ``calibration.json``."""
    return Path(run_dir) / CALIBRATION_FILE


def detector_path(run_dir: str | os.PathLike[str]) -> Path:
    """The run's out-of-distribution detector, ``ood_detector.json``."""
    return Path(run_dir) / DETECTOR_FILE


def validation_predictions_path(run_dir: str | os.PathLike[str]) -> Path:
    """The kept model's predictions on the run's validation images, ``val_predictions.csv`` (the
    columns of ``predictions.csv``, with ``cluster``)."""
    return Path(run_dir) / VALIDATION_PREDICTIONS_FILE


def cv_path(folder: str | os.PathLike[str]) -> Path:
    """The cross-validation result ``cv.json`` in ``folder`` (the folder of that cross-validation)."""
    return Path(folder) / CV_FILE


def cv_results_root(workspace: str | os.PathLike[str]) -> Path:
    """Where the pooled results of cross-validations live: ``<workspace>/cv/``."""
    return Path(workspace) / CV_FOLDER


def cv_result_folder(workspace: str | os.PathLike[str], study_id: str, model: str) -> Path:
    """The folder of one model's pooled cross-validation in one study:
    ``<workspace>/cv/<study_id>/<model>/``, holding ``cv.json`` (the folds, their runs and
    scores), ``predictions.csv`` (the out-of-fold predictions, every image once) and
    ``metrics.json`` (computed from that table).

    Raises:
        RunError: ``study_id`` is not a study id or ``model`` not a registry-style name.
    """
    if not isinstance(study_id, str) or not STUDY_ID_PATTERN.fullmatch(study_id):
        raise RunError(f"{study_id!r} is not a study id (they look like study-20261126-101512-7c2e).")
    if not isinstance(model, str) or not _MODEL_NAME_PATTERN.fullmatch(model):
        raise RunError(f"{model!r} is not a model's registry name.")
    return cv_results_root(workspace) / study_id / model


def list_cv_results(workspace: str | os.PathLike[str]) -> list[Path]:
    """Every pooled cross-validation folder (one per study and model) that has a ``cv.json``,
    newest study first."""
    root = cv_results_root(workspace)
    found: list[Path] = []
    try:
        studies = sorted(os.scandir(root), key=lambda entry: entry.name, reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    for study in studies:
        if not STUDY_ID_PATTERN.fullmatch(study.name) or not study.is_dir(follow_symlinks=False):
            continue
        for entry in sorted(os.scandir(study.path), key=lambda entry: entry.name):
            if _MODEL_NAME_PATTERN.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                if cv_path(entry.path).is_file():
                    found.append(Path(entry.path))
    return found


def ensemble_folder(workspace: str | os.PathLike[str], study_id: str) -> Path:
    """The folder of one study's calibrated ensemble: ``<workspace>/ensembles/<study_id>/``,
    holding ``ensemble.json`` (:func:`ensemble_path`: members, temperatures, weights),
    ``predictions.csv`` and ``metrics.json`` (:func:`predictions_path` and :func:`metrics_path`
    of the folder, computed from that table).

    Raises:
        RunError: ``study_id`` is not a study id.
    """
    if not isinstance(study_id, str) or not STUDY_ID_PATTERN.fullmatch(study_id):
        raise RunError(f"{study_id!r} is not a study id (they look like study-20261126-101512-7c2e).")
    return Path(workspace) / ENSEMBLES_FOLDER / study_id


def ensemble_path(folder: str | os.PathLike[str]) -> Path:
    """The recipe ``ensemble.json`` of the ensemble in ``folder`` (see :func:`ensemble_folder`)."""
    return Path(folder) / ENSEMBLE_FILE


def list_ensembles(workspace: str | os.PathLike[str]) -> list[Path]:
    """Every study ensemble folder (see :func:`ensemble_folder`) that has an ``ensemble.json``,
    newest study first."""
    try:
        entries = sorted(os.scandir(Path(workspace) / ENSEMBLES_FOLDER), key=lambda entry: entry.name, reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(entry.path) for entry in entries
            if STUDY_ID_PATTERN.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
            and ensemble_path(entry.path).is_file()]


def check_source(source: str) -> str:
    """Return ``source`` if it names an evaluation: :data:`TEST_SOURCE` or a dataset fingerprint.

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
    """The folder that holds the evaluation ``source`` of a run (it need not exist yet):
    the run folder for the test split, ``external/<fingerprint>/`` for another folder.

    Raises:
        EvaluationError: ``source`` is neither ``"test"`` nor a fingerprint.
    """
    folder = Path(run_dir)
    if check_source(source) == TEST_SOURCE:
        return folder
    return folder / EXTERNAL_FOLDER / source


def predictions_path(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> Path:
    """The ``predictions.csv`` of evaluation ``source``."""
    return evaluation_folder(run_dir, source) / PREDICTIONS_FILE


def metrics_path(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> Path:
    """The ``metrics.json`` of evaluation ``source``."""
    return evaluation_folder(run_dir, source) / METRICS_FILE


def faithfulness_path(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> Path:
    """The ``faithfulness.json`` measured on the images of evaluation ``source``."""
    return evaluation_folder(run_dir, source) / FAITHFULNESS_FILE


def external_sources(run_dir: str | os.PathLike[str]) -> list[str]:
    """The fingerprints of the folders under ``external/`` (sorted), evaluated or not."""
    try:
        names = sorted(entry.name for entry in os.scandir(Path(run_dir) / EXTERNAL_FOLDER) if entry.is_dir())
    except OSError:
        return []
    return [name for name in names if _FINGERPRINT_PATTERN.fullmatch(name)]


def evaluation_sources(run_dir: str | os.PathLike[str]) -> list[str]:
    """The sources with a stored ``predictions.csv``: the test split first, then external folders."""
    sources = [TEST_SOURCE] + external_sources(run_dir)
    return [source for source in sources if predictions_path(run_dir, source).is_file()]


def read_faithfulness(run_dir: str | os.PathLike[str], source: str = TEST_SOURCE) -> dict[str, Any] | None:
    """The heat-map faithfulness scores measured on one evaluation's images, if measured.

    ``python -m kidney_lab explain-eval`` writes them next to the evaluation they belong to
    (:func:`faithfulness_path`; see :mod:`kidney_lab.explain.faithfulness`).

    Returns:
        The stored object (``methods`` by explanation method, ``baselines``, ``images``,
        ``fingerprint``, ...), or ``None`` when faithfulness was never measured there.

    Raises:
        EvaluationError: an invalid source, or a file that is not a JSON object with ``methods``.
    """
    path = faithfulness_path(run_dir, source)
    try:
        payload = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path} cannot be read ({error}); measure it again with explain-eval.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("methods"), dict):
        raise EvaluationError(f"{path} holds no faithfulness scores by method; measure it again with explain-eval.")
    return payload


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``history.csv`` (see :func:`history_path`) as dicts with numbers parsed
    (``epoch`` as a whole number, the rest as floats where they parse); [] when there is none."""
    file = Path(path)
    if not file.is_file():
        return []
    rows = []
    with file.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                try:
                    parsed[key] = int(value) if key == "epoch" else float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
    return rows


def checkpoint_record(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The epoch and logs of the run's ``model.keras`` as training recorded them after saving it
    (:attr:`RunInfo.checkpoint`, see ``kidney_lab.training.callbacks.BestCheckpoint``).

    Returns:
        ``{"epoch", "val_loss", ...}``, or None when the file is missing or ``run.json`` holds no
        record of this very file (a process killed between saving and recording it).
    """
    folder = Path(run_dir)
    try:
        record = read_info(folder).checkpoint
        saved = model_path(folder).stat()
    except (OSError, RunError):
        return None
    if not isinstance(record, dict) or (record.get("bytes"), record.get("mtime_ns")) != (
        saved.st_size, saved.st_mtime_ns
    ):
        return None
    return {key: value for key, value in record.items() if key not in ("bytes", "mtime_ns")}


def model_key(run_dir: str | os.PathLike[str]) -> tuple[str, int, int]:
    """The identity of a run's saved model: the run folder (absolute), and the model file's
    modification time (ns) and size (bytes).

    The key of every cache of loaded models and of what they computed (the explainer cache,
    the Compare page's explanations): a retrained or replaced model gets a new key.

    Raises:
        OSError: the run has no model file (FileNotFoundError) or it cannot be read.
    """
    folder = Path(run_dir).expanduser().resolve()
    stat = (folder / MODEL_FILE).stat()
    return str(folder), stat.st_mtime_ns, stat.st_size


def check_model_file(
    path: str | os.PathLike[str], model_name: str | None = None, image_size: int | None = None
) -> str | None:
    """Why the saved model at ``path`` cannot serve a run, or None when it looks usable.

    A cheap look that needs no TensorFlow: the file must be a complete ``.keras`` archive (its
    zip directory, at the end of the file, is readable and it holds the architecture and the
    weights) describing a four-class model, and, when given, of architecture ``model_name`` with
    ``image_size`` x ``image_size`` input. Damaged weights inside an intact archive are found
    only by loading (:func:`kidney_lab.models.builders.load_model`).
    """
    file = Path(path)
    if not file.is_file():
        return f"{file.name} is missing; the run has no usable model"
    try:
        with zipfile.ZipFile(file) as archive:
            members = set(archive.namelist())
            missing = sorted({"config.json", "model.weights.h5"} - members)
            if missing:
                return f"{file.name} is damaged (it lacks {', '.join(missing)}); train the run again"
            config = json.loads(archive.read("config.json")).get("config", {})
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError) as error:
        return f"{file.name} is damaged (not a complete .keras archive: {error}); train the run again"
    try:
        return _architecture_problem(file.name, config, model_name, image_size)
    except (AttributeError, IndexError, KeyError, TypeError):
        return f"{file.name} is damaged (its architecture description is malformed); train the run again"


def _architecture_problem(
    name: str, config: dict[str, Any], model_name: str | None, image_size: int | None
) -> str | None:
    """Compare the functional-model ``config`` of a .keras file with what its run expects."""
    found = config.get("name")
    if model_name is not None and found != model_name:
        return (
            f"{name} holds a {found} model, not the {model_name} this run trained; the file "
            "was replaced: put the run's own file back or train it again"
        )
    layers = {layer.get("name"): layer for layer in config.get("layers", [])}
    inputs = [layer for layer in layers.values() if layer.get("class_name") == "InputLayer"]
    shape = inputs[0]["config"].get("batch_shape") if len(inputs) == 1 else None
    if image_size is not None and isinstance(shape, list) and shape[1:3] != [image_size, image_size]:
        return (
            f"{name} takes {shape[1]}x{shape[2]} pixel input, but this run trained at "
            f"{image_size}x{image_size}; the file was replaced: put the run's own file back"
        )
    # One output is stored as [name, node, tensor], several as a list of those.
    outputs = config.get("output_layers") or [None]
    first = outputs[0] if isinstance(outputs[0], list) else outputs
    units = layers.get(first[0], {}).get("config", {}).get("units")
    if isinstance(units, int) and units != len(CLASS_NAMES):
        return f"{name} has {units} outputs, not one per class ({', '.join(CLASS_NAMES)})"
    return None


# Processes -----------------------------------------------------------------------------------


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat``, or ``None`` without such a file."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            text = stream.read()
    except OSError:
        return None
    # Field 2 is the command name in parentheses and may itself contain spaces or ")".
    return text[text.rfind(")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat`` field 22).

    Returns ``None`` where there is no ``/proc`` or no such process.
    """
    fields = _proc_stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def process_alive(pid: int | None, pid_start: int | None = None) -> bool:
    """True when process ``pid`` on this host exists and is not a zombie.

    When ``pid_start`` is given and ``/proc`` tells the start time of ``pid``, the two must
    agree, so that a pid reused by a newer process does not count as alive.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # It exists but belongs to another user.
    except OSError:
        return False
    fields = _proc_stat_fields(pid)
    if fields is None:
        return True
    if fields and fields[0] in ("Z", "X"):
        return False
    if pid_start is not None:
        current = process_start_time(pid)
        if current is not None and current != pid_start:
            return False
    return True


# Reading and writing runs --------------------------------------------------------------------


def _process_stamp(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with heartbeat, pid, pid_start and host filled in for the calling process."""
    stamped = dict(status)
    stamped["heartbeat"] = time.time()
    stamped.setdefault("host", socket.gethostname())
    if "pid" not in stamped:
        stamped["pid"] = os.getpid()
        stamped["pid_start"] = process_start_time(os.getpid())
    elif "pid_start" not in stamped and stamped["host"] == socket.gethostname():
        stamped["pid_start"] = (
            process_start_time(stamped["pid"]) if isinstance(stamped["pid"], int) else None
        )
    return stamped


def create_run(workspace: str | os.PathLike[str], run_id: str, info: dict[str, Any]) -> Path:
    """Create the folder of a new run with ``run.json`` and a queued ``status.json``.

    ``run.json`` is ``info`` (the keys of :class:`RunInfo`, and any others) plus
    ``schema_version``, ``run_id``, ``created`` (ISO 8601, UTC) and ``status``. The folder is
    assembled under a hidden name and renamed into place, so it never appears under its id
    without both files.

    Returns:
        The new run folder.

    Raises:
        InvalidRunIdError: ``run_id`` is not a run id.
        RunError: A run with this id already exists, or a field of ``info`` has the wrong type.
    """
    destination = run_path(workspace, run_id)
    if destination.exists():
        raise RunError(f"A run named {run_id} already exists in {destination.parent}; make a new id.")
    record = RunInfo().updated(**{**info, "run_id": run_id, "created": now_iso(), "status": QUEUED})
    staging = inside(workspace, f".creating-{run_id}-{secrets.token_hex(4)}")
    staging.mkdir(parents=True)
    try:
        atomic_write_json(staging / RUN_FILE, record.to_dict())
        atomic_write_json(staging / STATUS_FILE, _process_stamp({"state": QUEUED}))
        if destination.exists():
            raise RunError(f"A run named {run_id} already exists in {destination.parent}; make a new id.")
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def read_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """The typed ``run.json`` of a run (its :attr:`RunInfo.problems` say what is damaged).

    Raises:
        RunNotFoundError: The folder has no readable ``run.json`` (missing, not JSON, not an object).
    """
    path = Path(run_dir) / RUN_FILE
    payload, problem = _read_object(path)
    if payload is None:
        raise RunNotFoundError(f"No readable run at {path.parent}: {problem}.")
    return RunInfo.from_dict(payload)


def update_run_info(run_dir: str | os.PathLike[str], **fields: Any) -> RunInfo:
    """Merge ``fields`` into the run's ``run.json`` (atomically) and return the result.

    Keys :class:`RunInfo` does not know are kept as given; the file is stamped with
    :data:`RUN_SCHEMA_VERSION` (a version-0 file has the same fields).

    Raises:
        RunNotFoundError: The folder has no readable ``run.json``.
        RunError: A field has the wrong type, or the file was written by a newer kidney_lab;
            nothing is written.
    """
    path = Path(run_dir) / RUN_FILE
    try:
        info = read_info(run_dir)
    except RunNotFoundError as error:
        raise RunNotFoundError(f"Cannot update {path}: {error}") from None
    if info.schema_version > RUN_SCHEMA_VERSION:
        raise RunError(
            f"Cannot update {path}: it was written by a newer kidney_lab (schema_version "
            f"{info.schema_version}); update kidney_lab."
        )
    merged = info.updated(**fields, schema_version=RUN_SCHEMA_VERSION)
    atomic_write_json(path, merged.to_dict())
    return merged


def write_status(run_dir: str | os.PathLike[str], status: dict[str, Any]) -> dict[str, Any]:
    """Replace the run's ``status.json`` with ``status`` (atomically) and return what was written.

    ``heartbeat`` (seconds since the epoch) is always set to now; ``pid``, ``pid_start`` and
    ``host`` are those of the calling process unless ``status`` gives them.
    """
    stamped = _process_stamp(status)
    atomic_write_json(Path(run_dir) / STATUS_FILE, stamped)
    return stamped


def _read_object(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in ``path``, or ``None`` and the reason it cannot be read."""
    try:
        payload = read_json(path)
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except NotADirectoryError:
        return None, f"{path.parent} is not a folder"
    except OSError as error:
        return None, f"{path.name} cannot be read ({error.strerror or error})"
    except ValueError as error:
        return None, f"{path.name} is not valid JSON ({error})"
    if not isinstance(payload, dict):
        return None, f"{path.name} does not hold a JSON object"
    return payload, None


def _stale_reason(status: dict[str, Any], stale_after: float) -> str | None:
    """Why an active-looking status belongs to a process that is gone; ``None`` if it is alive."""
    pid = status.get("pid")
    host = status.get("host")
    heartbeat = status.get("heartbeat")
    if host == socket.gethostname() and isinstance(pid, int):
        pid_start = status.get("pid_start") if isinstance(status.get("pid_start"), int) else None
        if process_alive(pid, pid_start):
            return None
        return (
            f"its process {pid} has ended without marking the run finished "
            "(it was killed or the machine restarted)"
        )
    if not isinstance(heartbeat, (int, float)):
        return "its status has no heartbeat, so nothing shows that its process is alive"
    age = time.time() - heartbeat
    if age > stale_after:
        return f"no heartbeat from {host or 'its host'} for {age:.0f} s"
    return None


def read_run(run_dir: str | os.PathLike[str], stale_after: float | None = None) -> RunRecord:
    """Read a run folder; never raises for a damaged or vanished folder.

    Args:
        run_dir: The run folder.
        stale_after: Seconds without a heartbeat after which a run on another host is stale;
            :data:`STALE_AFTER_SECONDS` by default.
    """
    path = Path(run_dir).absolute()
    limit = STALE_AFTER_SECONDS if stale_after is None else stale_after
    payload, info_problem = _read_object(path / RUN_FILE)
    if payload is None:
        problem = f"{info_problem}; the folder is damaged or half-deleted"
        return RunRecord(path.name, path, RunInfo(), {}, BROKEN, problem, info_readable=False)
    info = RunInfo.from_dict(payload)
    status, status_problem = _read_object(path / STATUS_FILE)
    if status is None:
        return RunRecord(path.name, path, info, {}, BROKEN, status_problem)
    if info.problems:
        return RunRecord(path.name, path, info, status, BROKEN, info.problem())
    state = status.get("state")
    if state in ACTIVE_STATES:
        reason = _stale_reason(status, limit)
        if reason is not None:
            return RunRecord(path.name, path, info, status, STALE, reason)
        return RunRecord(path.name, path, info, status, state)
    if state == FAILED:
        problem = status.get("error") or "failed (no error recorded)"
        return RunRecord(path.name, path, info, status, FAILED, problem)
    if state in FINISHED_STATES:
        return RunRecord(path.name, path, info, status, state)
    return RunRecord(path.name, path, info, status, BROKEN, f"{STATUS_FILE} has an unknown state {state!r}")


def list_runs(workspace: str | os.PathLike[str], study_id: str | None = None) -> list[RunRecord]:
    """Every run in ``workspace`` (of one study if ``study_id`` is given), newest first.

    Folders whose names are not run ids (splits, cache, jobs, ...) are skipped, and so is a run
    deleted while the listing runs. A missing workspace has no runs.
    """
    base = Path(workspace)
    try:
        entries = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []
    records: list[RunRecord] = []
    for entry in entries:
        if not RUN_ID_PATTERN.fullmatch(entry.name):
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        record = read_run(entry.path)
        if record.state == BROKEN and not os.path.isdir(entry.path):
            continue
        if study_id is not None and record.study_id != study_id:
            continue
        records.append(record)
    # The id begins with its UTC creation time; "created" orders runs made in the same second.
    records.sort(key=lambda record: (record.run_id[:15], record.created or ""), reverse=True)
    return records


def delete_run(workspace: str | os.PathLike[str], run_id: str) -> None:
    """Delete a run folder and everything in it.

    The folder is first renamed to a hidden name, so a half-deleted run never shows under its id.

    Raises:
        InvalidRunIdError: ``run_id`` is not a run id.
        RunNotFoundError: There is no such run.
        RunBusyError: The run is queued or running with a live process; cancel it first.
    """
    folder = run_path(workspace, run_id)
    if not folder.is_dir():
        raise RunNotFoundError(f"There is no run {run_id} in {Path(workspace)}.")
    record = read_run(folder)
    if record.is_active:
        raise RunBusyError(
            f"Run {run_id} is still {record.state} (process {record.status.get('pid')} on "
            f"{record.status.get('host')}); cancel its training job first, then delete it."
        )
    doomed = inside(workspace, f"{_DELETING_PREFIX}{run_id}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:
        raise RunNotFoundError(f"Run {run_id} was deleted by someone else meanwhile.") from None
    shutil.rmtree(doomed, ignore_errors=True)
    # Leftovers of deletions that were interrupted earlier are hidden; remove them too.
    with contextlib.suppress(OSError):
        for leftover in Path(workspace).glob(f"{_DELETING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def resolve_run(
    ref: str | os.PathLike[str],
    workspace: str | os.PathLike[str] | None = None,
    *,
    require_inside: bool = False,
) -> Path:
    """The run folder that ``ref`` names: a run id in the workspace, or a path to a run folder.

    An id is looked up only in the workspace (``workspace`` or the default one). A path typed by
    a user may lead anywhere, as long as the folder holds ``run.json``; a path to ``run.json``
    itself names its folder. With ``require_inside`` the path must also lie inside the
    workspace.

    Returns:
        The run folder, absolute and resolved.

    Raises:
        RunNotFoundError: No run folder is there (no ``run.json``).
        WorkspaceError: ``require_inside`` is set and the path leaves the workspace.
    """
    base = Path(workspace) if workspace is not None else default_workspace()
    text = os.fspath(ref)
    if not text.strip():
        raise RunNotFoundError("No run given; pass a run id or the path of a run folder.")
    if isinstance(ref, str) and RUN_ID_PATTERN.fullmatch(ref):
        folder = run_path(base, ref)
        if (folder / RUN_FILE).is_file():
            return folder
        typed = Path(ref).expanduser()
        if not (typed / RUN_FILE).is_file():
            raise RunNotFoundError(
                f"No run {ref} in the workspace {base} (no {folder / RUN_FILE}); check the id "
                "or give the path of the run folder."
            )
    candidate = Path(text).expanduser()
    if candidate.name == RUN_FILE and candidate.is_file():
        candidate = candidate.parent
    folder = candidate.resolve()
    if not (folder / RUN_FILE).is_file():
        raise RunNotFoundError(
            f"No run folder at {folder} (no {RUN_FILE}); give a folder made by "
            "`python -m kidney_lab train` or a run id."
        )
    if require_inside:
        resolved_base = base.resolve()
        if folder != resolved_base and resolved_base not in folder.parents:
            raise WorkspaceError(f"{folder} is not inside the workspace {resolved_base}.")
    return folder


def read_log_tail(path: str | os.PathLike[str], lines: int = 20) -> str:
    """The last ``lines`` lines of a text file (undecodable bytes replaced); ``""`` if absent."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - _LOG_TAIL_BYTES))
            data = stream.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def mark_finished(
    run_dir: str | os.PathLike[str],
    state: str,
    error: str | None = None,
    log_tail_lines: int = 20,
) -> dict[str, Any]:
    """Write a run's final status and record it in ``run.json``.

    The last known progress in ``status.json`` (epoch, metrics, pid) is kept; ``state``,
    ``finished`` (ISO 8601, UTC) and ``error`` are set. A failed run also gets ``log_tail``, the
    last ``log_tail_lines`` lines of its ``train.log``. ``run.json`` gets ``status``,
    ``finished`` and ``error``.

    Returns:
        The status written.

    Raises:
        ConfigError: ``state`` is not completed, failed or cancelled.
        RunNotFoundError: The folder has no readable ``run.json``.
    """
    if state not in FINISHED_STATES:
        raise ConfigError(f"A run can only finish as one of {', '.join(FINISHED_STATES)}, not {state!r}.")
    folder = Path(run_dir)
    finished = now_iso()
    previous, _ = _read_object(folder / STATUS_FILE)
    status = dict(previous or {})
    status.update(state=state, finished=finished)
    status.pop("error", None)
    status.pop("log_tail", None)
    if error is not None:
        status["error"] = error
    if state == FAILED:
        status["log_tail"] = read_log_tail(log_path(folder), log_tail_lines)
    summary: dict[str, Any] = {"status": state, "finished": finished, "error": error}
    update_run_info(folder, **summary)
    return write_status(folder, status)

