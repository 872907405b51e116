"""Background jobs: one ``python -m kidney_lab train``, ``demo`` or ``evaluate`` process per job.

A job runs in its own process and session, so it outlives the page or command that started
it; closing the browser or restarting the app does not stop it. Its record lives in
``<workspace>/jobs/<job_id>/``: ``job.json`` (job id, kind, study id, argv, pid and process
start time, host, times, state, exit code when known, and what the caller added, such as the
models it trains) and ``job.log`` (its stdout and stderr). The kind is the command the job runs:
``train`` (the Train page) or ``demo`` (the Home page's demo study), the training kinds, which
take ``--study-id`` so that the runs a job makes are found by its study id; or ``evaluate`` (the
Evaluation page's "another folder", see :func:`start_evaluate_job`), which writes what the
command's ``--json`` writes to ``result.json`` in the job folder (:meth:`JobRecord.result`).

A job's state is worked out when it is read: running while its process is alive (the pid and
the process start time both match), else finished, failed or cancelled. The exit code is known
when this process started the job and collected it; a job started by an earlier app process is
only known to have ended, and its runs' own states tell how.

The pieces the training process uses are here too: :func:`training_lock`, which lets one
job train at a time per workspace, and :class:`CancelToken`, which turns SIGTERM and SIGINT into
a flag checked between batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterable, Iterator, Mapping

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import errors
from kidney_lab import workspace as workspace_module

JOBS_FOLDER = "jobs"
JOB_FILE = "job.json"
JOB_LOG_FILE = "job.log"
# What the command of a job that reports a result (see RESULT_KINDS) writes with --json.
JOB_RESULT_FILE = "result.json"
LOCK_FILE = "train.lock"
JOB_ID_PATTERN = re.compile(r"job-\d{8}-\d{6}-[0-9a-f]{6}")
# The commands a job may run; each takes --workspace.
JOB_KINDS = ("train", "demo", "evaluate")
# The kinds that train a study: they take --study-id, hold the training lock, and are what
# list_jobs lists unless asked for other kinds.
TRAINING_KINDS = ("train", "demo")
# The kinds whose result start_job asks for with --json JOB_RESULT_FILE.
RESULT_KINDS = ("evaluate",)

RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"

# Seconds a cancelled job gets to stop cleanly after SIGTERM before it is killed.
DEFAULT_GRACE_SECONDS = 10.0
# Seconds to wait for a process to vanish after SIGKILL.
_KILL_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.05
# Arguments that start_job adds itself; a caller passing them would contradict it.
_RESERVED_ARGUMENTS = ("--study-id", "--workspace", "--json")
# job.json fields that start_job writes itself; ``details`` may not replace them.
_RESERVED_FIELDS = frozenset(
    {"job_id", "kind", "study_id", "argv", "workspace", "host", "started", "pid", "pid_start",
     "state", "returncode", "finished", "cancel_requested", "error"}
)

# Jobs started by this process, kept so that their exit codes are collected (no zombies).
_children: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
_children_lock = threading.Lock()


class JobError(errors.KidneyLabError):
    """A job cannot be started, found or stopped."""


class LockTimeout(JobError):
    """The training lock stayed taken for longer than the caller would wait."""


class Cancelled(errors.KidneyLabError):
    """Training was asked to stop (SIGTERM, SIGINT or a cancel request)."""


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """What is known about a training job at one moment.

    Attributes:
        job_id: The job's id (its folder's name).
        path: The job folder.
        info: The content of ``job.json``.
        state: ``running``, ``finished``, ``failed`` or ``cancelled``.
        returncode: The process's exit code when known (negative: killed by that signal).
    """

    job_id: str
    path: Path
    info: dict[str, Any]
    state: str
    returncode: int | None = None

    @property
    def study_id(self) -> str | None:
        """The study id given to the training command; its runs carry it (None for an evaluate job)."""
        return self.info.get("study_id")

    @property
    def kind(self) -> str:
        """The command the job runs: one of :data:`JOB_KINDS` (jobs written before kinds: train)."""
        return self.info.get("kind") or "train"

    @property
    def models(self) -> list[str]:
        """The registry names the job trains, when its starter recorded them; else ``[]``."""
        return [name for name in self.info.get("models") or [] if isinstance(name, str)]

    @property
    def pid(self) -> int | None:
        """The process id of the job (also its process group id)."""
        return self.info.get("pid")

    @property
    def argv(self) -> list[str]:
        """The command line the job runs."""
        return list(self.info.get("argv") or [])

    @property
    def started(self) -> str | None:
        """When the job started (ISO 8601, UTC)."""
        return self.info.get("started")

    @property
    def is_active(self) -> bool:
        """True while the job's process is alive."""
        return self.state == RUNNING

    @property
    def log_path(self) -> Path:
        """The file with the job's stdout and stderr."""
        return self.path / JOB_LOG_FILE

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the job's log (``""`` before it has written any)."""
        return runs.read_log_tail(self.log_path, lines)

    def result(self) -> dict[str, Any] | None:
        """What the job's command reported with ``--json`` (kinds in :data:`RESULT_KINDS`), or
        ``None`` while it runs, when it failed, or for a kind that reports none."""
        try:
            payload = fileio.read_json(self.path / JOB_RESULT_FILE)
        except (OSError, ValueError):
            return None
        return payload if isinstance(payload, dict) else None


def _workspace(workspace: str | os.PathLike[str] | None) -> Path:
    return Path(workspace).expanduser().resolve() if workspace is not None else workspace_module.default_workspace()


def new_job_id(when: datetime.datetime | None = None) -> str:
    """A fresh job id such as ``job-20261126-101512-3f9a1c`` (UTC time, 6 random hex digits)."""
    moment = when or datetime.datetime.now(datetime.timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    return f"job-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def job_path(job_id: str, workspace: str | os.PathLike[str] | None = None) -> Path:
    """The folder of job ``job_id`` (it need not exist).

    Raises:
        JobError: ``job_id`` is not a job id.
    """
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise JobError(f"{job_id!r} is not a job id; job ids look like job-20261126-101512-3f9a1c.")
    return workspace_module.inside(_workspace(workspace), JOBS_FOLDER, job_id)


def _update_job_file(folder: Path, **fields: Any) -> None:
    """Merge ``fields`` into ``job.json`` atomically; a missing or damaged file is left alone."""
    try:
        info = fileio.read_json(folder / JOB_FILE)
    except (OSError, ValueError):
        return
    if isinstance(info, dict):
        info.update(fields)
        fileio.atomic_write_json(folder / JOB_FILE, info)


def _final_state(info: dict[str, Any], returncode: int | None) -> str:
    if info.get("cancel_requested"):
        return CANCELLED
    if returncode is None or returncode == 0:
        return FINISHED
    return FAILED


def _reap() -> None:
    """Collect the exit codes of finished jobs started by this process and record them."""
    with _children_lock:
        for job_id, (process, folder) in list(_children.items()):
            returncode = process.poll()
            if returncode is None:
                continue
            del _children[job_id]
            try:
                info = fileio.read_json(folder / JOB_FILE)
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and info.get("returncode") is None:
                _update_job_file(
                    folder,
                    returncode=returncode,
                    finished=fileio.now_iso(),
                    state=_final_state(info, returncode),
                )


def child_environment() -> dict[str, str]:
    """The environment of a kidney_lab process this one starts: this process's own, with
    unbuffered output and this same kidney_lab first on the import path, whatever the child's
    working folder."""
    environment = dict(os.environ)
    environment["PYTHONUNBUFFERED"] = "1"
    package_root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (package_root, environment.get("PYTHONPATH", "")) if part
    )
    return environment


def start_job(
    train_args: list[str],
    workspace: str | os.PathLike[str] | None = None,
    python: str = sys.executable,
    *,
    command: list[str] | None = None,
    kind: str = "train",
    study_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> JobRecord:
    """Start ``python -m kidney_lab <kind> *train_args`` as a background job.

    The process gets ``--study-id`` (training kinds, :data:`TRAINING_KINDS`), ``--workspace``
    and, for kinds that report a result (:data:`RESULT_KINDS`), ``--json`` with the job's
    ``result.json`` appended; its own session (so it survives the caller and can be signalled
    as a group), no stdin, and ``job.log`` for its output.

    Args:
        train_args: Arguments of the command, without ``--study-id``/``--workspace``/``--json``.
        workspace: The workspace (created if needed); the default one if ``None``.
        python: The Python interpreter to run.
        command: A full argv to run instead of the kidney_lab command (for tests).
        kind: The command: one of :data:`JOB_KINDS`.
        study_id: The study id to give a training command; a new one if ``None`` (the demo
            passes the id of an unfinished demo study to resume it). Not for other kinds.
        details: More JSON-serialisable fields for ``job.json``, such as ``models`` (the
            registry names the job trains), so that a page can show models not started yet.

    Raises:
        ConfigError: ``train_args`` is not a list of strings or holds a reserved argument, an
            unknown ``kind``, a malformed ``study_id``, or ``details`` names a field start_job
            writes itself.
        WorkspaceError: The workspace cannot be used.
        JobError: The process could not be started.
    """
    if not isinstance(train_args, (list, tuple)) or not all(isinstance(item, str) for item in train_args):
        raise errors.ConfigError("Training arguments must be a list of strings, such as ['--models', 'resnet50'].")
    for item in train_args:
        if item.split("=", 1)[0] in _RESERVED_ARGUMENTS:
            raise errors.ConfigError(f"Do not pass {item.split('=', 1)[0]} to a job; start_job sets it.")
    if kind not in JOB_KINDS:
        raise errors.ConfigError(f"Unknown job kind {kind!r}; use one of {', '.join(JOB_KINDS)}.")
    trains = kind in TRAINING_KINDS
    if study_id is not None and not trains:
        raise errors.ConfigError(f"A {kind} job trains no study; give a study id to training jobs only.")
    if study_id is not None and not runs.STUDY_ID_PATTERN.fullmatch(study_id):
        raise errors.ConfigError(f"{study_id!r} is not a study id (like study-20260101-120000-ab12).")
    clashes = sorted(_RESERVED_FIELDS.intersection(details or {}))
    if clashes:
        raise errors.ConfigError(f"Job details may not set {', '.join(clashes)}; start_job writes them.")
    base = workspace_module.prepare_workspace(workspace)
    _reap()
    study_id = (study_id or runs.new_study_id()) if trains else None
    job_id = new_job_id()
    folder = workspace_module.inside(base, JOBS_FOLDER, job_id)
    folder.mkdir(parents=True)
    added = ["--study-id", study_id] if study_id is not None else []
    added += ["--workspace", str(base)]
    if kind in RESULT_KINDS:
        added += ["--json", str(folder / JOB_RESULT_FILE)]
    argv = list(command) if command is not None else [python, "-m", "kidney_lab", kind, *train_args, *added]
    environment = child_environment()
    environment["KIDNEY_LAB_WORKSPACE"] = str(base)
    info: dict[str, Any] = {
        **(details or {}),
        "job_id": job_id, "kind": kind, "study_id": study_id, "argv": argv, "workspace": str(base),
        "host": socket.gethostname(), "started": fileio.now_iso(),
    }
    try:
        with open(folder / JOB_LOG_FILE, "wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=environment,
            )
    except OSError as error:
        fileio.atomic_write_json(folder / JOB_FILE, {**info, "pid": None, "state": FAILED, "error": str(error)})
        raise JobError(
            f"Could not start the {kind} process {argv[0]!r}: {error.strerror or error}."
        ) from None
    info.update(pid=process.pid, pid_start=runs.process_start_time(process.pid), state=RUNNING)
    fileio.atomic_write_json(folder / JOB_FILE, info)
    with _children_lock:
        _children[job_id] = (process, folder)
    return _read_job_folder(folder)


def start_evaluate_job(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    workspace: str | os.PathLike[str] | None = None,
    python: str = sys.executable,
) -> JobRecord:
    """Start ``python -m kidney_lab evaluate RUN --data DATA`` as a background job.

    What the job stores is what the command stores (the evaluation under
    ``<run>/external/<fingerprint>/``); its ``--json`` result is the job's
    :meth:`JobRecord.result`, and ``job.json`` records the run (``run_id``, ``run``) and the
    folder (``data``), so a page finds the job of a run again after a restart.

    Args:
        run: The run folder, or a run id in ``workspace``.
        data: The folder to evaluate (Kaggle layout, or a folder above it).
        workspace: The workspace; the default one if ``None``.
        python: The Python interpreter to run.

    Raises:
        kidney_lab.runs.RunNotFoundError: there is no such run.
        ConfigError: ``data`` is empty or not an existing folder (nothing is started).
        JobError: the process could not be started.
    """
    folder = runs.resolve_run(run, workspace)
    text = os.fspath(data).strip()
    if not text:
        raise errors.ConfigError("Type the path of a folder to evaluate first.")
    target = Path(text).expanduser()
    if not target.is_dir():
        raise errors.ConfigError(f"The folder {target} does not exist (or is not a folder); type the path of a "
                          "dataset folder on the machine that runs kidney_lab.")
    target = target.resolve()
    return start_job([str(folder), "--data", str(target)], workspace, python, kind="evaluate",
                     details={"run_id": folder.name, "run": str(folder), "data": str(target)})


def evaluate_jobs(run_id: str, workspace: str | os.PathLike[str] | None = None) -> list[JobRecord]:
    """The evaluate jobs of run ``run_id`` (see :func:`start_evaluate_job`), newest first."""
    return [job for job in list_jobs(workspace, kinds=("evaluate",)) if job.info.get("run_id") == run_id]


def _read_job_folder(folder: Path) -> JobRecord:
    """Read a job folder and work out the job's state.

    Raises:
        JobError: The folder has no readable ``job.json``.
    """
    try:
        info = fileio.read_json(folder / JOB_FILE)
    except (OSError, ValueError) as error:
        raise JobError(f"Job {folder.name} cannot be read ({error}).") from None
    if not isinstance(info, dict):
        raise JobError(f"Job {folder.name} cannot be read ({JOB_FILE} does not hold a JSON object).")
    returncode = info.get("returncode")
    if isinstance(returncode, int):
        return JobRecord(folder.name, folder, info, _final_state(info, returncode), returncode)
    if info.get("pid") is None:
        return JobRecord(folder.name, folder, info, info.get("state") or FAILED)
    if info.get("host") != socket.gethostname():
        # The processes of another machine cannot be checked from here.
        return JobRecord(folder.name, folder, info, info.get("state") or RUNNING)
    if runs.process_alive(info.get("pid"), info.get("pid_start")):
        return JobRecord(folder.name, folder, info, RUNNING)
    return JobRecord(folder.name, folder, info, _final_state(info, None))


def read_job(job_id: str, workspace: str | os.PathLike[str] | None = None) -> JobRecord:
    """The current record of job ``job_id``.

    Raises:
        JobError: There is no such job, or its ``job.json`` cannot be read.
    """
    folder = job_path(job_id, workspace)
    _reap()
    if not (folder / JOB_FILE).is_file():
        raise JobError(f"There is no job {job_id} in {folder.parent}.")
    return _read_job_folder(folder)


def list_jobs(
    workspace: str | os.PathLike[str] | None = None,
    active_only: bool = False,
    kinds: Iterable[str] = TRAINING_KINDS,
) -> list[JobRecord]:
    """The jobs of a workspace, newest first; only the running ones with ``active_only``.

    Args:
        workspace: The workspace; the default one if ``None``.
        active_only: Only the jobs whose process is alive.
        kinds: The kinds to list (see :data:`JOB_KINDS`): the training jobs unless told.

    Job folders without a readable ``job.json`` (a job being started, or damaged) are skipped.
    """
    wanted = frozenset(kinds)
    _reap()
    root = _workspace(workspace) / JOBS_FOLDER
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    records: list[JobRecord] = []
    for entry in entries:
        if not JOB_ID_PATTERN.fullmatch(entry.name):
            continue
        try:
            record = _read_job_folder(Path(entry.path))
        except JobError:
            continue
        if (active_only and not record.is_active) or record.kind not in wanted:
            continue
        records.append(record)
    records.sort(key=lambda record: (record.job_id[:19], record.started or ""), reverse=True)
    return records


def _signal_group(pid: int, pid_start: int | None, signal_number: int) -> None:
    """Send ``signal_number`` to the process group led by ``pid``, if that process still lives."""
    if not runs.process_alive(pid, pid_start):
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal_number)
        else:
            os.kill(pid, signal_number)
    except ProcessLookupError:
        return
    except PermissionError:
        raise JobError(f"Not allowed to stop process {pid}; it belongs to another user.") from None


def _wait_until_gone(pid: int, pid_start: int | None, seconds: float) -> bool:
    """Wait up to ``seconds`` for the process to end; True if it has."""
    deadline = time.monotonic() + seconds
    while True:
        _reap()
        if not runs.process_alive(pid, pid_start):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def _cancel_leftover_runs(workspace: Path, study_id: str | None, reason: str) -> None:
    """Mark the runs of a stopped job that still say queued or running as cancelled."""
    if study_id is None:
        return
    for record in runs.list_runs(workspace, study_id=study_id):
        if record.status.get("state") in runs.ACTIVE_STATES and not record.is_active:
            with contextlib.suppress(runs.RunError, OSError):
                runs.mark_finished(record.path, runs.CANCELLED, error=reason)


def cancel_job(
    job_id: str,
    workspace: str | os.PathLike[str] | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> JobRecord:
    """Stop a job: SIGTERM to its process group, then SIGKILL after ``grace_seconds``.

    The training process answers SIGTERM by stopping at the next batch and marking its runs
    cancelled. Runs of the job's study that still say queued or running once its process is
    gone (because it had to be killed) are marked cancelled here. A job that has already
    ended is returned unchanged.

    Returns:
        The job's record after it stopped.

    Raises:
        JobError: There is no such job, it runs on another machine, or its process cannot be
            signalled.
    """
    base = _workspace(workspace)
    record = read_job(job_id, base)
    if not record.is_active:
        return record
    if record.info.get("host") != socket.gethostname():
        raise JobError(f"Job {job_id} runs on {record.info.get('host')}; cancel it on that machine.")
    pid = record.pid
    pid_start = record.info.get("pid_start")
    _update_job_file(record.path, cancel_requested=fileio.now_iso())
    _signal_group(pid, pid_start, signal.SIGTERM)
    if _wait_until_gone(pid, pid_start, grace_seconds):
        reason = "cancelled; the training process ended before it marked this run finished"
    else:
        _signal_group(pid, pid_start, signal.SIGKILL)
        _wait_until_gone(pid, pid_start, _KILL_WAIT_SECONDS)
        reason = (
            f"cancelled; the training process did not stop within {grace_seconds:g} s of "
            "SIGTERM and was killed"
        )
    _cancel_leftover_runs(base, record.study_id, reason)
    final = read_job(job_id, base)
    if final.is_active:
        raise JobError(f"Job {job_id} (process {pid}) is still alive after SIGKILL; stop it by hand.")
    if final.info.get("state") != final.state:
        _update_job_file(final.path, state=final.state, finished=final.info.get("finished") or fileio.now_iso())
        final = read_job(job_id, base)
    return final


@contextlib.contextmanager
def training_lock(
    workspace: str | os.PathLike[str] | None,
    on_wait: Callable[[], None] | None = None,
    *,
    cancel_token: CancelToken | None = None,
    timeout: float | None = None,
    poll_seconds: float = 0.1,
) -> Iterator[Path]:
    """Hold the workspace's training lock for the ``with`` block, waiting while another job has it.

    The lock is an ``flock`` on ``<workspace>/jobs/train.lock``, so the system releases it when
    its holder dies, even by SIGKILL.

    Args:
        workspace: The workspace; the default one if ``None``.
        on_wait: Called once, before waiting, when the lock is taken (to mark runs queued).
        cancel_token: While waiting, a cancelled token ends the wait with :class:`Cancelled`.
        timeout: Seconds to wait at most; ``None`` waits as long as it takes.
        poll_seconds: Seconds between attempts while waiting.

    Yields:
        The lock file.

    Raises:
        Cancelled: ``cancel_token`` was cancelled while waiting.
        LockTimeout: The lock stayed taken for ``timeout`` seconds.
    """
    lock_path = _workspace(workspace) / JOBS_FOLDER / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if not waited:
                waited = True
                if on_wait is not None:
                    on_wait()
            if cancel_token is not None:
                cancel_token.raise_if_cancelled()
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(
                    f"Another training job has held {lock_path} for more than {timeout:g} s; "
                    "wait for it to finish or cancel it."
                )
            time.sleep(poll_seconds)
        yield lock_path
    finally:
        # Closing the descriptor releases the lock.
        os.close(descriptor)


class CancelToken:
    """A flag that SIGTERM and SIGINT set, for training to check between batches.

    ``install()`` replaces the handlers of the signals (in the main thread only) and
    ``uninstall()`` puts the previous ones back; the token also works as a context manager. A
    second SIGINT after the first raises ``KeyboardInterrupt``, so Ctrl+C twice still stops a
    process that no longer checks the flag.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._cancelled = False
        self._reason: str | None = None

    def install(self) -> CancelToken:
        """Install the signal handlers and return the token.

        Raises:
            JobError: Called outside the main thread, where Python cannot set signal handlers.
        """
        if self._previous:
            return self
        try:
            for signal_number in self._signals:
                self._previous[signal_number] = signal.signal(signal_number, self._handle)
        except ValueError:
            self.uninstall()
            raise JobError("Cancellation by signal can only be set up in the main thread.") from None
        return self

    def uninstall(self) -> None:
        """Put back the signal handlers that were there before :meth:`install`."""
        for signal_number, previous in self._previous.items():
            signal.signal(signal_number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self._cancelled and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.cancel(signal.Signals(signal_number).name)

    def cancel(self, reason: str = "cancel requested") -> None:
        """Set the flag by hand; ``reason`` says why in :class:`Cancelled`'s message."""
        if not self._cancelled:
            self._cancelled = True
            self._reason = reason

    @property
    def cancelled(self) -> bool:
        """True once a signal arrived or :meth:`cancel` was called."""
        return self._cancelled

    @property
    def reason(self) -> str | None:
        """The signal's name (such as ``SIGTERM``) or the reason given to :meth:`cancel`."""
        return self._reason

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the flag is set.

        Raises:
            Cancelled: A signal arrived or :meth:`cancel` was called.
        """
        if self._cancelled:
            raise Cancelled(f"Training was cancelled ({self._reason}).")

    def __enter__(self) -> CancelToken:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()
