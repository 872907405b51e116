"""The run store: one folder per trained model under the workspace.

A run folder holds ``run.json`` (what was trained, how, and a status summary), ``status.json``
(the live state written by the training process: phase, epoch, metrics so far, pid,
heartbeat) and the artefacts training and evaluation leave there (see the constants below).
The app and the command line read and change runs only through this module.

Every JSON write is atomic. :func:`read_run` never raises for a damaged folder: a folder
without a readable ``run.json`` or ``status.json`` reads as :data:`BROKEN` with the reason, and
a run whose process is gone while its status says running reads as :data:`STALE`, never as
running. Process identity is a pid plus the process's start time (from ``/proc`` where there
is one), so a pid that the system has reused for another process does not look alive.
:attr:`RunRecord.model_problem` says, without TensorFlow, why a run's ``model.keras`` cannot
serve it (cut short, or replaced by another architecture's file).
"""

from __future__ import annotations

import contextlib
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
from typing import Any

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.errors import ConfigError, KidneyLabError
from kidney_lab.fileio import atomic_write_json, read_json
from kidney_lab.workspace import WorkspaceError, default_workspace, inside

RUN_FILE = "run.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
BACKUP_FOLDER = "backup"

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


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run folder says about itself, read at one moment.

    Attributes:
        run_id: The folder's name.
        path: The run folder (absolute).
        info: The content of ``run.json``; ``{}`` when it cannot be read.
        status: The content of ``status.json``; ``{}`` when it cannot be read.
        state: The effective state: the status's state, except :data:`STALE` when its process
            is gone and :data:`BROKEN` when the folder cannot be read.
        problem: Why the run is broken, stale or failed; ``None`` otherwise.
    """

    run_id: str
    path: Path
    info: dict[str, Any]
    status: dict[str, Any]
    state: str
    problem: str | None = None

    @property
    def model(self) -> str | None:
        """The registry name of the model, if ``run.json`` names one."""
        return self.info.get("model")

    @property
    def study_id(self) -> str | None:
        """The study the run belongs to, if any."""
        return self.info.get("study_id")

    @property
    def weights_note(self) -> str | None:
        """Why the run's starting weights differ from what was asked (ImageNet weights asked
        for with ``--weights auto`` but unavailable, so it trained from random initialisation);
        None when they are what was asked."""
        note = self.info.get("weights_note")
        return str(note) if note else None

    @property
    def created(self) -> str | None:
        """When the run was created (ISO 8601, UTC)."""
        return self.info.get("created")

    @property
    def is_active(self) -> bool:
        """True while the run is queued or running with a live process."""
        return self.state in ACTIVE_STATES

    @property
    def has_model(self) -> bool:
        """True when the best checkpoint (``model.keras``) exists."""
        return (self.path / MODEL_FILE).is_file()

    @property
    def has_predictions(self) -> bool:
        """True when ``predictions.csv`` exists."""
        return (self.path / PREDICTIONS_FILE).is_file()

    @functools.cached_property
    def model_problem(self) -> str | None:
        """Why ``model.keras`` cannot serve this run (see :func:`check_model_file`); None if usable."""
        return check_model_file(self.path / MODEL_FILE, self.model, self.info.get("image_size"))


def _utc_stamp(when: datetime.datetime | None) -> str:
    """``YYYYMMDD-HHMMSS`` of ``when`` in UTC; a naive ``when`` is taken to be UTC already."""
    if when is None:
        when = datetime.datetime.now(datetime.timezone.utc)
    elif when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y%m%d-%H%M%S")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


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
    only by loading (:func:`kidney_lab.models.registry.load_model`).
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

    ``run.json`` is ``info`` plus ``run_id``, ``created`` (ISO 8601, UTC) and ``status``. The
    folder is assembled under a hidden name and renamed into place, so it never appears under
    its id without both files.

    Returns:
        The new run folder.

    Raises:
        InvalidRunIdError: ``run_id`` is not a run id.
        RunError: A run with this id already exists.
    """
    destination = run_path(workspace, run_id)
    if destination.exists():
        raise RunError(f"A run named {run_id} already exists in {destination.parent}; make a new id.")
    staging = inside(workspace, f".creating-{run_id}-{secrets.token_hex(4)}")
    staging.mkdir(parents=True)
    try:
        atomic_write_json(
            staging / RUN_FILE, {**info, "run_id": run_id, "created": _now_iso(), "status": QUEUED}
        )
        atomic_write_json(staging / STATUS_FILE, _process_stamp({"state": QUEUED}))
        if destination.exists():
            raise RunError(f"A run named {run_id} already exists in {destination.parent}; make a new id.")
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def update_run_info(run_dir: str | os.PathLike[str], **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run's ``run.json`` (atomically) and return the result.

    Raises:
        RunNotFoundError: The folder has no readable ``run.json``.
    """
    path = Path(run_dir) / RUN_FILE
    try:
        info = read_json(path)
    except (OSError, ValueError) as error:
        raise RunNotFoundError(f"Cannot update {path}: {error}.") from None
    if not isinstance(info, dict):
        raise RunNotFoundError(f"Cannot update {path}: it does not hold a JSON object.")
    info.update(fields)
    atomic_write_json(path, info)
    return info


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
    info, info_problem = _read_object(path / RUN_FILE)
    if info is None:
        problem = f"{info_problem}; the folder is damaged or half-deleted"
        return RunRecord(path.name, path, {}, {}, BROKEN, problem)
    status, status_problem = _read_object(path / STATUS_FILE)
    if status is None:
        return RunRecord(path.name, path, info, {}, BROKEN, status_problem)
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
    finished = _now_iso()
    previous, _ = _read_object(folder / STATUS_FILE)
    status = dict(previous or {})
    status.update(state=state, finished=finished)
    status.pop("error", None)
    status.pop("log_tail", None)
    if error is not None:
        status["error"] = error
    if state == FAILED:
        status["log_tail"] = read_log_tail(folder / LOG_FILE, log_tail_lines)
    summary: dict[str, Any] = {"status": state, "finished": finished, "error": error}
    update_run_info(folder, **summary)
    return write_status(folder, status)

