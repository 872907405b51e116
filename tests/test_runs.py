"""The run store: ids, folders, the typed run.json, states (broken, stale), deletion, lookup and
the paths inside a run (evaluations, faithfulness, history, checkpoint record)."""

from __future__ import annotations

import dataclasses
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
    assert (record.model, record.study_id, record.info.run_id) == ("mobilenetv2", "study-x", run_id)
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
    assert (record.info.extra["epochs"], record.status["epoch"], record.state) == (3, 1, runs.RUNNING)
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
    assert not records[no_run_file].info_readable and records[no_run_file].info == runs.RunInfo()
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


# The typed run.json --------------------------------------------------------------------------


def old_run_json(run_id: str, workspace: Path) -> dict:
    """A run.json exactly as kidney_lab wrote it before run.json had a schema_version.

    The keys and their order are those of the code of that time: ``create_run`` with the
    engine's ``_run_info`` plus ``run_id``, ``created`` and ``status``; the engine's two
    ``update_run_info`` calls (after building the model, after training); the checkpoint
    callback's record; ``mark_finished``'s summary.
    """
    return {
        "run_id": run_id, "study_id": "study-20260101-000000-abcd", "model": "resnet50",
        "display_name": "ResNet50",
        "spec": {"name": "resnet50", "display_name": "ResNet50", "default_size": 224, "family": "resnet",
                 "cam_layer": "conv5_block3_out", "preprocessing": "caffe", "reference": "He et al., 2016"},
        "image_size": 64, "class_names": ["Cyst", "Normal", "Stone", "Tumor"],
        "config": {"data": "/data/phantoms", "models": ["resnet50"], "epochs": 2, "image_size": 64,
                   "split": "grouped", "weights": "none", "batch_size": 8, "learning_rate": 0.001,
                   "lr_schedule": "plateau", "augmentation": False, "seed": 0, "patience": 5},
        "command_key": "0123456789abcdef", "workspace": str(workspace), "data_root": "/data/phantoms",
        "dataset_fingerprint": "feedface0123", "dataset_images": 48, "split_id": "grouped-seed0-0123abcd",
        "split_strategy": "grouped", "split_counts": {"train": 34, "val": 7, "test": 7},
        "test_with_duplicate_in_train": 0, "weights_requested": "none", "host": "lab-machine",
        "versions": {"kidney_lab": "0.1.0", "python": "3.11.7", "tensorflow": "2.18.0", "keras": "3.8.0",
                     "numpy": "1.26.4"},
        "created": "2026-01-01T00:00:00.000+00:00", "status": "completed",
        "weights": "none", "weights_note": None, "parameters": 23595908, "mixed_precision": False,
        "xla": False, "strategy": "auto", "replicas": 1, "global_batch_size": 8,
        "class_weights": {"Cyst": 1.0, "Normal": 0.8, "Stone": 1.4, "Tumor": 1.1}, "device": "CPU",
        "checkpoint": {"epoch": 2, "loss": 1.2, "accuracy": 0.5, "val_loss": 1.3, "val_accuracy": 0.4,
                       "bytes": 1000, "mtime_ns": 1},
        "training_finished": True, "train_seconds": 12.5, "epochs_trained": 2, "best_epoch": 2,
        "kept_epoch": {"epoch": 2, "loss": 1.2, "accuracy": 0.5, "val_loss": 1.3, "val_accuracy": 0.4},
        "peak_rss_mb": 900.5, "rss_start_mb": 600.0,
        "peak_rss_measure": "resident set sampled every 0.5 s while this model trained",
        "finished": "2026-01-01T00:01:00.000+00:00", "error": None,
    }


def _write_old_run(workspace: Path, model: str = "resnet50") -> Path:
    """A completed run folder as the code before the typed run.json left it."""
    run_id = runs.new_run_id(model)
    folder = runs.run_path(workspace, run_id)
    folder.mkdir(parents=True)
    atomic_write_json(folder / runs.RUN_FILE, old_run_json(run_id, workspace))
    atomic_write_json(folder / runs.STATUS_FILE, {"state": runs.COMPLETED, "pid": 1, "host": "lab-machine"})
    return folder


def test_run_info_round_trips_and_keeps_unknown_keys():
    info = runs.RunInfo.from_dict({**old_run_json("r", Path("/w")), "schema_version": 1, "note": {"a": [1]}})
    assert info.problems == () and info.schema_version == runs.RUN_SCHEMA_VERSION
    assert info.class_names == ("Cyst", "Normal", "Stone", "Tumor") and isinstance(info.train_seconds, float)
    assert info.extra == {"note": {"a": [1]}}
    written = info.to_dict()
    assert written["note"] == {"a": [1]} and written["class_names"] == ["Cyst", "Normal", "Stone", "Tumor"]
    assert runs.RunInfo.from_dict(written) == info
    # Every field is written, so a file names the whole schema.
    assert set(written) == {field.name for field in dataclasses.fields(runs.RunInfo)} - {"extra", "problems"} | {"note"}


def test_a_whole_number_is_a_number_of_seconds():
    assert runs.RunInfo.from_dict({"train_seconds": 12}).train_seconds == 12.0


def test_a_new_run_json_carries_the_schema_version(workspace):
    folder = _make_run(workspace, extra_note="kept")
    stored = read_json(folder / runs.RUN_FILE)
    assert stored["schema_version"] == runs.RUN_SCHEMA_VERSION and stored["extra_note"] == "kept"
    record = runs.read_run(folder)
    assert record.info.schema_version == runs.RUN_SCHEMA_VERSION and record.info.extra == {"extra_note": "kept"}


def test_an_old_run_json_without_a_version_still_reads(workspace):
    old = _write_old_run(workspace)
    new = _make_run(workspace, "vit")
    record = runs.read_run(old)
    assert (record.state, record.problem) == (runs.COMPLETED, None)
    assert record.info.schema_version == 0 and record.info.problems == ()
    assert (record.model, record.study_id, record.info.image_size) == ("resnet50", "study-20260101-000000-abcd", 64)
    assert record.info.train_seconds == 12.5 and record.info.best_epoch == 2 and record.info.weights_note is None
    assert record.info.config["epochs"] == 2 and record.info.split_counts == {"train": 34, "val": 7, "test": 7}
    assert {item.path for item in runs.list_runs(workspace)} == {old, new}
    # A rewrite stamps the current version and loses nothing.
    before = read_json(old / runs.RUN_FILE)
    runs.update_run_info(old, epochs_trained=3)
    after = read_json(old / runs.RUN_FILE)
    assert after["schema_version"] == runs.RUN_SCHEMA_VERSION and after["epochs_trained"] == 3
    assert {key: value for key, value in after.items() if key in before} == {**before, "epochs_trained": 3}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("created", 5, "not text"), ("image_size", "big", "not a whole number"),
     ("train_seconds", "slow", "not a number"), ("training_finished", "yes", "not true or false"),
     ("class_names", "Cyst", "not a list of text"), ("config", [1], "not an object")],
)
def test_a_field_of_the_wrong_type_breaks_only_its_run(workspace, field, value, expected):
    healthy = _make_run(workspace, "vit")
    damaged = _write_old_run(workspace)
    atomic_write_json(damaged / runs.RUN_FILE, {**read_json(damaged / runs.RUN_FILE), field: value})

    records = {record.path: record for record in runs.list_runs(workspace)}
    assert set(records) == {healthy, damaged}
    assert records[healthy].state == runs.QUEUED and records[healthy].problem is None
    broken = records[damaged]
    assert broken.state == runs.BROKEN
    assert broken.problem == f"run.json: {field} is {value!r}, {expected}"
    assert getattr(broken.info, field) is None
    assert broken.model == "resnet50" and broken.info.run_id == damaged.name
    # Recording something else keeps the damaged value as found, for a person to mend.
    runs.update_run_info(damaged, status=runs.COMPLETED)
    assert read_json(damaged / runs.RUN_FILE)[field] == value


def test_the_model_card_and_leaderboard_skip_a_damaged_field_cleanly(workspace):
    from kidney_lab.evaluation import leaderboard as leaderboard_module

    damaged = _write_old_run(workspace)
    atomic_write_json(damaged / runs.RUN_FILE, {**read_json(damaged / runs.RUN_FILE), "image_size": "big"})
    table = leaderboard_module.leaderboard(workspace)
    assert [item["reason"] for item in table.attrs["skipped"]] == ["run.json: image_size is 'big', not a whole number"]


def test_recording_a_field_of_the_wrong_type_writes_nothing(workspace):
    folder = _make_run(workspace)
    before = (folder / runs.RUN_FILE).read_bytes()
    with pytest.raises(runs.RunError, match=r"image_size is '224', not a whole number"):
        runs.update_run_info(folder, image_size="224", epochs_trained=3)
    with pytest.raises(runs.RunError, match="train_seconds"):
        runs.create_run(workspace, runs.new_run_id("vit"), {"model": "vit", "train_seconds": "slow"})
    assert (folder / runs.RUN_FILE).read_bytes() == before
    assert [record.path for record in runs.list_runs(workspace)] == [folder]


def test_a_run_json_from_a_newer_kidney_lab_is_broken_and_left_alone(workspace):
    folder = _make_run(workspace)
    atomic_write_json(folder / runs.RUN_FILE, {**read_json(folder / runs.RUN_FILE), "schema_version": 99})
    record = runs.read_run(folder)
    assert record.state == runs.BROKEN and "schema_version is 99, newer" in record.problem
    with pytest.raises(runs.RunError, match="newer kidney_lab"):
        runs.update_run_info(folder, epochs_trained=1)
    assert read_json(folder / runs.RUN_FILE)["schema_version"] == 99


# Paths inside a run --------------------------------------------------------------------------


def test_every_file_of_a_run_has_its_path(tmp_path):
    assert runs.evaluation_folder(tmp_path) == tmp_path
    assert runs.evaluation_folder(tmp_path, "abcdef12") == tmp_path / runs.EXTERNAL_FOLDER / "abcdef12"
    assert runs.predictions_path(tmp_path, "abcdef12").name == runs.PREDICTIONS_FILE
    assert runs.metrics_path(tmp_path) == tmp_path / runs.METRICS_FILE
    assert runs.faithfulness_path(tmp_path, "abcdef12").parent == tmp_path / runs.EXTERNAL_FOLDER / "abcdef12"
    assert (runs.model_path(tmp_path).name, runs.history_path(tmp_path).name) == (runs.MODEL_FILE, runs.HISTORY_FILE)
    assert runs.calibration_path(tmp_path) == tmp_path / "calibration.json"
    assert runs.detector_path(tmp_path) == tmp_path / "ood_detector.json"
    assert runs.cv_path(tmp_path) == tmp_path / "cv.json"


def test_evaluation_sources_list_the_test_split_first(tmp_path):
    assert runs.evaluation_sources(tmp_path) == []
    for source in ("ffff0000", runs.TEST_SOURCE, "aaaa1111"):
        runs.predictions_path(tmp_path, source).parent.mkdir(parents=True, exist_ok=True)
        runs.predictions_path(tmp_path, source).write_text("path\n")
    (tmp_path / runs.EXTERNAL_FOLDER / "not-a-fingerprint").mkdir()
    (tmp_path / runs.EXTERNAL_FOLDER / "bbbb2222").mkdir()  # Never evaluated.
    assert runs.evaluation_sources(tmp_path) == [runs.TEST_SOURCE, "aaaa1111", "ffff0000"]


def test_faithfulness_is_read_from_the_folder_of_its_evaluation(tmp_path: Path) -> None:
    assert runs.read_faithfulness(tmp_path) is None
    scores = {"fingerprint": "abcdef12", "methods": {"gradcam": {"pointing_game": 0.5}}}
    atomic_write_json(tmp_path / runs.FAITHFULNESS_FILE, scores)
    assert runs.read_faithfulness(tmp_path) == scores
    # An external folder's scores sit under its fingerprint and never replace the test split's.
    assert runs.read_faithfulness(tmp_path, "abcdef12") is None
    external = {**scores, "methods": {"gradcam": {"pointing_game": 0.1}}}
    atomic_write_json(runs.evaluation_folder(tmp_path, "abcdef12") / runs.FAITHFULNESS_FILE, external)
    assert runs.read_faithfulness(tmp_path, "abcdef12") == external
    assert runs.read_faithfulness(tmp_path) == scores


@pytest.mark.parametrize("content", ["{ not json", "[1, 2]", '{"methods": 3}'])
def test_damaged_faithfulness_says_how_to_rebuild_it(tmp_path: Path, content: str) -> None:
    (tmp_path / runs.FAITHFULNESS_FILE).write_text(content)
    with pytest.raises(runs.EvaluationError, match="explain-eval"):
        runs.read_faithfulness(tmp_path)


def test_a_source_cannot_lead_outside_the_run(tmp_path: Path) -> None:
    with pytest.raises(runs.EvaluationError, match="not an evaluation source"):
        runs.read_faithfulness(tmp_path, "../../etc")


def test_history_rows_have_numbers_parsed(tmp_path):
    path = runs.history_path(tmp_path)
    assert runs.read_history(path) == []
    path.write_text("epoch,phase,loss,val_loss\n1,training the head,0.5,nan\n2,fine-tuning,0.25,0.75\n")
    rows = runs.read_history(path)
    assert [row["epoch"] for row in rows] == [1, 2] and rows[1] == {
        "epoch": 2, "phase": "fine-tuning", "loss": 0.25, "val_loss": 0.75}


def test_checkpoint_record_belongs_to_the_model_file_on_disk(workspace):
    folder = _make_run(workspace)
    assert runs.checkpoint_record(folder) is None
    runs.model_path(folder).write_bytes(b"weights")
    saved = runs.model_path(folder).stat()
    runs.update_run_info(folder, checkpoint={"epoch": 3, "val_loss": 0.5, "bytes": saved.st_size,
                                             "mtime_ns": saved.st_mtime_ns})
    assert runs.checkpoint_record(folder) == {"epoch": 3, "val_loss": 0.5}
    runs.model_path(folder).write_bytes(b"other weights")  # Replaced after the record was written.
    assert runs.checkpoint_record(folder) is None

