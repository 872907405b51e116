"""The run store: ids, folders, states (broken, stale), deletion and lookup."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kidney_lab import runs
from kidney_lab.errors import ConfigError
from kidney_lab.fileio import atomic_write_json, read_json
from kidney_lab.workspace import WorkspaceError, default_workspace

HAS_PROC = Path(f"/proc/{os.getpid()}/stat").is_file()


@pytest.fixture
def workspace() -> Path:
    path = default_workspace()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _make_run(workspace: Path, model: str = "resnet50", study_id: str | None = None, **info) -> Path:
    run_id = runs.new_run_id(model)
    return runs.create_run(workspace, run_id, {"model": model, "study_id": study_id, **info})


def _finished_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# Ids -----------------------------------------------------------------------------------------


def test_run_id_has_utc_time_model_and_random_suffix():
    when = datetime.datetime(2026, 11, 26, 11, 15, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    run_id = runs.new_run_id("ResNet50", when)
    assert run_id.startswith("20261126-101512-resnet50-")
    assert runs.RUN_ID_PATTERN.fullmatch(run_id)
    assert runs.new_run_id("vit") != runs.new_run_id("vit")


@pytest.mark.parametrize("name", ["", "res net", "../x", "vit/b16", "a_b", "é"])
def test_run_id_refuses_names_that_are_not_registry_names(name):
    with pytest.raises(ConfigError, match="registry name"):
        runs.new_run_id(name)


def test_study_id_format():
    study_id = runs.new_study_id(datetime.datetime(2026, 11, 26, 10, 15, 12))
    assert study_id.startswith("study-20261126-101512-")
    assert runs.STUDY_ID_PATTERN.fullmatch(study_id)


@pytest.mark.parametrize(
    "run_id",
    ["../x", "/abs", "a/b", "", ".", "20261126-101512-resnet50-3f9a1c/..", "20261126-101512-resnet50-3F9A1C",
     "20261126-101512-resnet50-3f9a1c\n"],
)
def test_run_path_refuses_what_is_not_a_run_id(workspace, run_id):
    with pytest.raises(runs.InvalidRunIdError, match="not a run id") as caught:
        runs.run_path(workspace, run_id)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, WorkspaceError)


def test_run_path_refuses_a_link_out_of_the_workspace(workspace, tmp_path):
    run_id = runs.new_run_id("vit")
    (workspace / run_id).symlink_to(tmp_path)
    with pytest.raises(WorkspaceError, match="not a name inside the workspace"):
        runs.run_path(workspace, run_id)


# Create, read, list, delete ------------------------------------------------------------------


def test_create_read_update_delete(workspace):
    run_id = runs.new_run_id("mobilenetv2")
    folder = runs.create_run(workspace, run_id, {"model": "mobilenetv2", "study_id": "study-x", "run_id": "ignored"})
    assert folder == runs.run_path(workspace, run_id)
    assert sorted(path.name for path in folder.iterdir()) == [runs.RUN_FILE, runs.STATUS_FILE]
    assert [path.name for path in workspace.iterdir()] == [run_id]

    record = runs.read_run(folder)
    assert (record.run_id, record.state, record.problem) == (run_id, runs.QUEUED, None)
    assert (record.model, record.study_id, record.info["run_id"]) == ("mobilenetv2", "study-x", run_id)
    assert record.created and record.is_active and not record.has_model and not record.has_predictions
    assert record.status["pid"] == os.getpid()
    assert record.status["host"] == socket.gethostname()
    assert abs(record.status["heartbeat"] - time.time()) < 60
    if HAS_PROC:
        assert record.status["pid_start"] == runs.process_start_time(os.getpid())

    runs.update_run_info(folder, epochs=3)
    written = runs.write_status(folder, {"state": runs.RUNNING, "epoch": 1})
    assert written["pid"] == os.getpid() and "heartbeat" in written
    (folder / runs.MODEL_FILE).write_bytes(b"weights")
    record = runs.read_run(folder)
    assert (record.info["epochs"], record.status["epoch"], record.state) == (3, 1, runs.RUNNING)
    assert record.has_model

    runs.mark_finished(folder, runs.COMPLETED)
    assert runs.list_runs(workspace)[0].state == runs.COMPLETED
    runs.delete_run(workspace, run_id)
    assert list(workspace.iterdir()) == []
    assert runs.list_runs(workspace) == []


def test_create_refuses_an_existing_run(workspace):
    folder = _make_run(workspace)
    with pytest.raises(runs.RunError, match="already exists"):
        runs.create_run(workspace, folder.name, {"model": "resnet50"})
    assert [path.name for path in workspace.iterdir()] == [folder.name]


def test_list_runs_newest_first_by_study_and_skips_other_folders(workspace):
    early = runs.create_run(workspace, runs.new_run_id("vit", datetime.datetime(2026, 1, 1)), {"study_id": "a"})
    late = runs.create_run(workspace, runs.new_run_id("vit", datetime.datetime(2026, 6, 1)), {"study_id": "b"})
    middle = runs.create_run(workspace, runs.new_run_id("resnet50", datetime.datetime(2026, 3, 1)), {"study_id": "a"})
    for name in ("splits", "cache", "demo_data", "jobs", ".deleting-x"):
        (workspace / name).mkdir()
    (workspace / runs.new_run_id("vit")).write_text("a file, not a run folder")
    assert [record.path for record in runs.list_runs(workspace)] == [late, middle, early]
    assert [record.path for record in runs.list_runs(workspace, study_id="a")] == [middle, early]
    assert runs.list_runs(workspace / "missing") == []


def test_list_runs_skips_a_run_deleted_while_listing(workspace, monkeypatch):
    kept = _make_run(workspace, "vit")
    doomed = _make_run(workspace, "resnet50")
    real_read_run = runs.read_run

    def read_after_someone_deleted(path, *arguments, **keywords):
        if Path(path).name == doomed.name:
            shutil.rmtree(doomed)
        return real_read_run(path, *arguments, **keywords)

    monkeypatch.setattr(runs, "read_run", read_after_someone_deleted)
    assert [record.path for record in runs.list_runs(workspace)] == [kept]


# Damaged folders -----------------------------------------------------------------------------


def test_damaged_runs_read_as_broken_and_listing_still_works(workspace):
    healthy = _make_run(workspace, "vit")
    no_run_file = _make_run(workspace, "resnet50")
    (no_run_file / runs.RUN_FILE).unlink()
    truncated_status = _make_run(workspace, "inceptionv3")
    text = (truncated_status / runs.STATUS_FILE).read_text()
    (truncated_status / runs.STATUS_FILE).write_text(text[: len(text) // 2])
    garbled_run_file = _make_run(workspace, "efficientnetb0")
    (garbled_run_file / runs.RUN_FILE).write_text("[1, 2")
    odd_state = _make_run(workspace, "mobilenetv2")
    atomic_write_json(odd_state / runs.STATUS_FILE, {"state": "dancing"})

    records = {record.path: record for record in runs.list_runs(workspace)}
    assert set(records) == {healthy, no_run_file, truncated_status, garbled_run_file, odd_state}
    assert records[healthy].state == runs.QUEUED
    assert records[no_run_file].state == runs.BROKEN
    assert "run.json is missing" in records[no_run_file].problem
    assert records[no_run_file].info == {}
    assert records[truncated_status].state == runs.BROKEN
    assert "status.json is not valid JSON" in records[truncated_status].problem
    assert records[truncated_status].model == "inceptionv3"
    assert "run.json is not valid JSON" in records[garbled_run_file].problem
    assert "unknown state 'dancing'" in records[odd_state].problem

    runs.delete_run(workspace, no_run_file.name)
    assert not no_run_file.exists()


def test_read_run_of_a_vanished_folder_does_not_raise(workspace):
    record = runs.read_run(workspace / runs.new_run_id("vit"))
    assert record.state == runs.BROKEN and "missing" in record.problem


# Stale detection -----------------------------------------------------------------------------


def test_running_run_whose_process_ended_is_stale(workspace):
    folder = _make_run(workspace)
    pid = _finished_pid()
    runs.write_status(folder, {"state": runs.RUNNING, "pid": pid})
    record = runs.read_run(folder)
    assert record.state == runs.STALE
    assert f"process {pid} has ended" in record.problem
    assert not record.is_active


def test_running_run_with_a_live_process_is_running(workspace):
    folder = _make_run(workspace)
    runs.write_status(folder, {"state": runs.RUNNING})
    record = runs.read_run(folder)
    assert (record.state, record.problem) == (runs.RUNNING, None)


@pytest.mark.skipif(not HAS_PROC, reason="process start times come from /proc")
def test_reused_pid_does_not_count_as_alive(workspace):
    folder = _make_run(workspace)
    start = runs.process_start_time(os.getpid())
    runs.write_status(folder, {"state": runs.RUNNING, "pid": os.getpid(), "pid_start": start + 1})
    assert runs.read_run(folder).state == runs.STALE


def test_run_on_another_host_is_stale_only_without_recent_heartbeat(workspace):
    folder = _make_run(workspace)
    status = {"state": runs.RUNNING, "pid": 1, "host": "elsewhere.invalid"}
    atomic_write_json(folder / runs.STATUS_FILE, {**status, "heartbeat": time.time() - 5})
    assert runs.read_run(folder).state == runs.RUNNING
    atomic_write_json(folder / runs.STATUS_FILE, {**status, "heartbeat": time.time() - 3600})
    record = runs.read_run(folder)
    assert record.state == runs.STALE and "no heartbeat from elsewhere.invalid" in record.problem
    assert runs.read_run(folder, stale_after=7200).state == runs.RUNNING


def test_process_alive():
    assert runs.process_alive(os.getpid())
    assert not runs.process_alive(_finished_pid())
    assert not runs.process_alive(None)
    assert not runs.process_alive(0)


def test_unreaped_child_counts_as_ended():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while runs.process_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert not runs.process_alive(process.pid)
    finally:
        process.wait()


# Deletion ------------------------------------------------------------------------------------


def test_delete_refuses_a_live_running_run(workspace):
    folder = _make_run(workspace)
    runs.write_status(folder, {"state": runs.RUNNING})
    with pytest.raises(runs.RunBusyError, match="cancel its training job first"):
        runs.delete_run(workspace, folder.name)
    assert (folder / runs.RUN_FILE).is_file()
    runs.write_status(folder, {"state": runs.RUNNING, "pid": _finished_pid()})
    runs.delete_run(workspace, folder.name)
    assert not folder.exists()
    assert list(workspace.iterdir()) == []


def test_delete_errors(workspace):
    with pytest.raises(runs.RunNotFoundError, match="no run"):
        runs.delete_run(workspace, runs.new_run_id("vit"))
    with pytest.raises(runs.InvalidRunIdError):
        runs.delete_run(workspace, "../x")


# Lookup --------------------------------------------------------------------------------------


def test_resolve_run_by_id_and_by_path(workspace, tmp_path, monkeypatch):
    folder = _make_run(workspace)
    assert runs.resolve_run(folder.name) == folder
    assert runs.resolve_run(folder.name, workspace) == folder
    assert runs.resolve_run(str(folder)) == folder
    assert runs.resolve_run(folder / runs.RUN_FILE) == folder
    monkeypatch.chdir(workspace)
    assert runs.resolve_run(Path(folder.name)) == folder

    elsewhere = tmp_path / "copied-run"
    shutil.copytree(folder, elsewhere)
    assert runs.resolve_run(elsewhere, workspace) == elsewhere.resolve()
    with pytest.raises(WorkspaceError, match="not inside the workspace"):
        runs.resolve_run(elsewhere, workspace, require_inside=True)


def test_resolve_run_errors(workspace, tmp_path):
    missing_id = runs.new_run_id("vit")
    with pytest.raises(runs.RunNotFoundError, match=f"No run {missing_id} in the workspace"):
        runs.resolve_run(missing_id, workspace)
    with pytest.raises(runs.RunNotFoundError, match=r"No run folder at .*\(no run.json\)"):
        runs.resolve_run(tmp_path)
    with pytest.raises(runs.RunNotFoundError, match="No run folder at"):
        runs.resolve_run("../x", workspace)
    with pytest.raises(runs.RunNotFoundError, match="No run given"):
        runs.resolve_run("  ")


# Finishing -----------------------------------------------------------------------------------


def test_mark_finished_failed_keeps_progress_and_log_tail(workspace):
    folder = _make_run(workspace)
    runs.write_status(folder, {"state": runs.RUNNING, "epoch": 4})
    (folder / runs.LOG_FILE).write_text("".join(f"line {number}\n" for number in range(1, 31)))
    status = runs.mark_finished(folder, runs.FAILED, error="Out of memory in epoch 4.")
    assert status["log_tail"].splitlines() == [f"line {number}" for number in range(11, 31)]
    assert (status["state"], status["epoch"], status["error"]) == (runs.FAILED, 4, "Out of memory in epoch 4.")
    assert read_json(folder / runs.STATUS_FILE) == status
    info = read_json(folder / runs.RUN_FILE)
    assert (info["status"], info["error"]) == (runs.FAILED, "Out of memory in epoch 4.")
    assert info["finished"] == status["finished"]
    record = runs.read_run(folder)
    assert (record.state, record.problem) == (runs.FAILED, "Out of memory in epoch 4.")
    assert sorted(path.name for path in folder.iterdir()) == sorted([runs.LOG_FILE, runs.RUN_FILE, runs.STATUS_FILE])


def test_mark_finished_without_log_and_cancelled(workspace):
    folder = _make_run(workspace)
    assert runs.mark_finished(folder, runs.FAILED, error="boom")["log_tail"] == ""
    status = runs.mark_finished(folder, runs.CANCELLED)
    assert status["state"] == runs.CANCELLED and "error" not in status and "log_tail" not in status
    assert runs.read_run(folder).state == runs.CANCELLED
    with pytest.raises(ConfigError, match="can only finish"):
        runs.mark_finished(folder, runs.RUNNING)
