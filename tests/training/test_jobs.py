"""Background jobs, the training lock and cancellation, with tiny dummy processes instead of training."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kidney_lab import runs
from kidney_lab.errors import ConfigError
from kidney_lab.training import jobs
from kidney_lab.workspace import default_workspace

REPO_ROOT = Path(__file__).resolve().parents[2]

# Holds the training lock, says so, then sleeps for argv[2] seconds.
LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from kidney_lab.training.jobs import training_lock
    with training_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        time.sleep(0.02)


def _python(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


@contextlib.contextmanager
def _lock_holder(workspace: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the training lock for ``seconds``; killed on leaving."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(workspace), str(seconds)],
        stdout=subprocess.PIPE, text=True, env=environment,
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "locked"
            yield holder
        finally:
            if holder.poll() is None:
                holder.kill()


@pytest.fixture
def workspace() -> Path:
    return default_workspace()


@pytest.fixture(autouse=True)
def no_job_left_behind():
    """Kill any dummy job a failing test leaves running."""
    yield
    for process, _folder in list(jobs._children.values()):
        if process.poll() is None:
            process.kill()
            process.wait()
    jobs._children.clear()


# Starting and listing ------------------------------------------------------------------------


def test_job_runs_then_finishes_and_is_reaped(workspace):
    job = jobs.start_job([], workspace, command=_python(
        """
        import os, time
        time.sleep(0.4)
        print("done in", os.environ["KIDNEY_LAB_WORKSPACE"], flush=True)
        """
    ))
    assert jobs.JOB_ID_PATTERN.fullmatch(job.job_id)
    assert runs.STUDY_ID_PATTERN.fullmatch(job.study_id)
    assert job.path == workspace / jobs.JOBS_FOLDER / job.job_id
    assert job.state == jobs.RUNNING and job.is_active and job.pid > 0
    assert [record.job_id for record in jobs.list_jobs(workspace, active_only=True)] == [job.job_id]

    _wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active)
    finished = jobs.read_job(job.job_id, workspace)
    assert (finished.state, finished.returncode) == (jobs.FINISHED, 0)
    assert finished.info["finished"] and finished.info["state"] == jobs.FINISHED
    assert finished.log_tail() == f"done in {workspace}"
    assert jobs.list_jobs(workspace, active_only=True) == []
    assert [record.state for record in jobs.list_jobs(workspace)] == [jobs.FINISHED]
    # The exit status was collected: no zombie is left for this process.
    with pytest.raises(ChildProcessError):
        os.waitpid(job.pid, os.WNOHANG)


def test_job_that_exits_with_an_error_reads_as_failed(workspace):
    job = jobs.start_job([], workspace, command=_python("import sys; print('bad data'); sys.exit(3)"))
    _wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active)
    failed = jobs.read_job(job.job_id, workspace)
    assert (failed.state, failed.returncode, failed.log_tail()) == (jobs.FAILED, 3, "bad data")


def test_job_that_ended_unobserved_reads_as_finished(workspace):
    job = jobs.start_job([], workspace, command=_python("pass"))
    # As if an earlier app process had started it: nobody here collects its exit status.
    process, _folder = jobs._children.pop(job.job_id)
    try:
        _wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active)
        record = jobs.read_job(job.job_id, workspace)
        assert (record.state, record.returncode) == (jobs.FINISHED, None)
    finally:
        process.wait()


def test_training_command_line(workspace):
    echo = shutil.which("echo")
    if echo is None:
        pytest.skip("no echo program to stand in for Python")
    job = jobs.start_job(["--data", "some dir", "--models", "vit"], workspace, python=echo)
    _wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active)
    expected = ["-m", "kidney_lab", "train", "--data", "some dir", "--models", "vit",
                "--study-id", job.study_id, "--workspace", str(workspace)]
    assert job.argv == [echo, *expected]
    assert jobs.read_job(job.job_id, workspace).log_tail() == " ".join(expected)


@pytest.mark.parametrize("arguments", [["--study-id", "x"], ["--workspace=/tmp"], "--epochs 1", [1]])
def test_start_job_refuses_bad_arguments(workspace, arguments):
    with pytest.raises(ConfigError):
        jobs.start_job(arguments, workspace)
    assert jobs.list_jobs(workspace) == []


def test_unknown_and_invalid_job_ids(workspace):
    with pytest.raises(jobs.JobError, match="no job"):
        jobs.read_job(jobs.new_job_id(), workspace)
    with pytest.raises(jobs.JobError, match="not a job id"):
        jobs.cancel_job("../jobs", workspace)


# Cancelling ----------------------------------------------------------------------------------


def test_cancel_stops_a_job_with_sigterm(workspace):
    job = jobs.start_job([], workspace, command=_python("import time; time.sleep(60)"))
    started = time.monotonic()
    cancelled = jobs.cancel_job(job.job_id, workspace, grace_seconds=5)
    assert time.monotonic() - started < 4
    assert (cancelled.state, cancelled.returncode) == (jobs.CANCELLED, -signal.SIGTERM)
    assert not runs.process_alive(job.pid)
    assert jobs.cancel_job(job.job_id, workspace).state == jobs.CANCELLED


def test_job_ignoring_sigterm_is_killed_and_its_runs_cancelled(workspace):
    job = jobs.start_job([], workspace, command=_python(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
        """
    ))
    _wait_for(lambda: job.log_tail() == "ready")

    def run_of(study_id: str, state: str, pid: int) -> Path:
        folder = runs.create_run(workspace, runs.new_run_id("vit"), {"model": "vit", "study_id": study_id})
        runs.write_status(folder, {"state": state, "pid": pid})
        return folder

    queued = run_of(job.study_id, runs.QUEUED, job.pid)
    running = run_of(job.study_id, runs.RUNNING, job.pid)
    completed = run_of(job.study_id, runs.RUNNING, job.pid)
    runs.mark_finished(completed, runs.COMPLETED)
    other_study = run_of("study-other", runs.RUNNING, os.getpid())

    cancelled = jobs.cancel_job(job.job_id, workspace, grace_seconds=0.5)
    assert (cancelled.state, cancelled.returncode) == (jobs.CANCELLED, -signal.SIGKILL)
    assert not runs.process_alive(job.pid)
    for folder in (queued, running):
        record = runs.read_run(folder)
        assert record.state == runs.CANCELLED
        assert "was killed" in record.status["error"]
    assert runs.read_run(completed).state == runs.COMPLETED
    assert runs.read_run(other_study).state == runs.RUNNING


# The training lock ---------------------------------------------------------------------------


def test_second_holder_waits_for_the_first(workspace):
    waits = []
    with _lock_holder(workspace, 0.8) as holder:
        started = time.monotonic()
        with jobs.training_lock(workspace, on_wait=lambda: waits.append(1), timeout=10):
            waited = time.monotonic() - started
            assert holder.wait(timeout=5) == 0
    assert waits == [1]
    assert waited > 0.3
    with jobs.training_lock(workspace, on_wait=lambda: waits.append(2)):
        pass
    assert waits == [1]


def test_a_killed_holder_frees_the_lock(workspace):
    with _lock_holder(workspace, 60) as holder:
        with pytest.raises(jobs.LockTimeout, match="wait for it to finish or cancel it"):
            with jobs.training_lock(workspace, timeout=0.2):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        waits = []
        with jobs.training_lock(workspace, on_wait=lambda: waits.append(1), timeout=2):
            assert waits == []


def test_cancel_token_ends_the_wait_for_the_lock(workspace):
    token = jobs.CancelToken()
    with _lock_holder(workspace, 60):
        with pytest.raises(jobs.Cancelled, match="stop button"):
            with jobs.training_lock(workspace, on_wait=lambda: token.cancel("stop button"), cancel_token=token):
                pass


# Cancellation by signal ----------------------------------------------------------------------


def test_cancel_token_catches_sigterm_and_restores_handlers():
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_interrupt = signal.getsignal(signal.SIGINT)
    token = jobs.CancelToken().install()
    try:
        assert not token.cancelled
        token.raise_if_cancelled()
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: token.cancelled, seconds=2)
        assert token.reason == "SIGTERM"
        with pytest.raises(jobs.Cancelled, match=r"cancelled \(SIGTERM\)"):
            token.raise_if_cancelled()
    finally:
        token.uninstall()
    assert signal.getsignal(signal.SIGTERM) == previous_term
    assert signal.getsignal(signal.SIGINT) == previous_interrupt


def test_second_interrupt_raises_keyboard_interrupt():
    previous_interrupt = signal.getsignal(signal.SIGINT)
    with jobs.CancelToken() as token:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: token.cancelled, seconds=2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) == previous_interrupt


def test_cancel_token_needs_the_main_thread():
    errors = []

    def install() -> None:
        try:
            jobs.CancelToken().install()
        except jobs.JobError as error:
            errors.append(error)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def test_an_evaluate_job_checks_its_input_before_it_starts(workspace, tmp_path):
    with pytest.raises(runs.RunNotFoundError):
        jobs.start_evaluate_job(tmp_path / "no-run", tmp_path)
    run = runs.create_run(workspace, runs.new_run_id("vit"), {"model": "vit"})
    for folder, message in (("  ", "Type the path"), (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(ConfigError, match=message):
            jobs.start_evaluate_job(run, folder, workspace)
    with pytest.raises(ConfigError, match="trains no study"):
        jobs.start_job([], workspace, kind="evaluate", study_id=runs.new_study_id())
    with pytest.raises(ConfigError, match="Do not pass --json"):
        jobs.start_job(["--json", "x.json"], workspace, kind="evaluate")
    assert jobs.list_jobs(workspace, kinds=jobs.JOB_KINDS) == []


@pytest.mark.slow
def test_an_evaluate_job_runs_the_evaluate_command_and_reports_its_result(workspace, tiny_study):
    run = Path(shutil.copytree(tiny_study.runs["vit"], workspace / tiny_study.runs["vit"].name))
    job = jobs.start_evaluate_job(run.name, tiny_study.data, workspace)
    assert job.kind == "evaluate" and job.study_id is None and job.is_active
    assert job.argv[1:] == ["-m", "kidney_lab", "evaluate", str(run.resolve()), "--data", str(tiny_study.data.resolve()),
                            "--workspace", str(workspace.resolve()), "--json", str(job.path / jobs.JOB_RESULT_FILE)]
    assert (job.info["run_id"], job.info["data"]) == (run.name, str(tiny_study.data.resolve()))
    # One mechanism: the job is found, polled and listed like a training job, but listed only
    # when evaluate jobs are asked for (the Train page and the sidebar list training jobs).
    assert [record.job_id for record in jobs.evaluate_jobs(run.name, workspace)] == [job.job_id]
    assert jobs.list_jobs(workspace) == []
    assert job.result() is None
    _wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active, seconds=300)
    # A process with many threads (TensorFlow's) shows as a zombie a moment before its exit
    # code can be collected; this process started the job, so the code comes soon after.
    _wait_for(lambda: jobs.read_job(job.job_id, workspace).returncode is not None, seconds=30)
    done = jobs.read_job(job.job_id, workspace)
    assert (done.state, done.returncode) == (jobs.FINISHED, 0), done.log_tail()
    result = done.result()
    from kidney_lab.evaluation import store

    stored = {item["source"]: item for item in store.list_evaluations(run)}
    assert result["evaluated_on"] in stored and result["evaluated_on"] != runs.TEST_SOURCE
    assert result["images"] == stored[result["evaluated_on"]]["images"]
    assert result["accuracy"] == store.load_metrics(run, result["evaluated_on"])["accuracy"]
