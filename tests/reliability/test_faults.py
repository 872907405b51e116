"""Faults: kill -9 at chosen points, a full disk, concurrent jobs and readers, deleted runs.

The training processes are real ``python -m kidney_lab train`` commands (the ViT at 32 px on the
session's phantoms). Each kill happens at a point the process itself announces
(tests/reliability/fault_driver.py), so no test depends on timing. After every fault the run
folder must stay readable, no run may look "running" without a live process, and the same
command must resume without training a finished epoch again.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.models import builders
from kidney_lab.training import callbacks as training_callbacks
from kidney_lab.training import engine
from tests.training.test_engine import MODEL, REPOSITORY, SIZE, cli, tiny_config, train_arguments, wait_for


def kill_at(point: str, arguments: list[str], workspace: Path, scratch: Path) -> None:
    """Run the training command with ``point`` armed, and kill -9 it once the point is reached."""
    marker = scratch / f"{point}.reached"
    log_path = scratch / f"{point}.log"
    environment = dict(os.environ, KIDNEY_LAB_WORKSPACE=str(workspace), PYTHONUNBUFFERED="1")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.fault_driver", point, str(marker), *arguments],
            cwd=REPOSITORY, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: marker.exists() or process.poll() is not None, timeout=300, what=point)
        assert marker.exists(), f"ended before the {point} point:\n{log_path.read_text()[-3000:]}"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def killed_run(workspace: Path) -> runs.RunRecord:
    """The one run of ``workspace``, checked to be readable and not shown as running."""
    (record,) = runs.list_runs(workspace)
    assert record.state == runs.STALE, (record.state, record.problem)
    assert "has ended without marking the run finished" in record.problem
    for name in (runs.RUN_FILE, runs.STATUS_FILE):
        assert isinstance(fileio.read_json(record.path / name), dict)
    return record


def history(record: runs.RunRecord) -> list[dict]:
    return runs.read_history(record.path / runs.HISTORY_FILE)


def assert_usable_checkpoint(record: runs.RunRecord) -> None:
    assert record.model_problem is None, record.model_problem
    builders.load_model(record.path / runs.MODEL_FILE, model_name=MODEL, image_size=SIZE)


@pytest.mark.slow
def test_kill_9_at_each_stage_then_the_same_command_resumes_and_completes(
    phantom_root: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    arguments = train_arguments(phantom_root, workspace, epochs=2)

    # 1. While the first checkpoint is written: half a file under a temporary name, no model.
    kill_at("checkpoint", arguments, workspace, tmp_path)
    record = killed_run(workspace)
    assert not (record.path / runs.MODEL_FILE).exists()
    assert list(record.path.glob(".model.*.tmp.keras"))

    # 2. In the middle of the second epoch: the first epoch and its checkpoint are kept.
    kill_at("epoch", arguments, workspace, tmp_path)
    resumed = killed_run(workspace)
    assert resumed.run_id == record.run_id
    first = history(resumed)
    assert [row["epoch"] for row in first] == [1]
    assert_usable_checkpoint(resumed)
    assert not list(resumed.path.glob(".*")), "leftovers of the killed writes were cleaned up"

    # 3. During the final evaluation: both epochs are kept; the first was not trained again.
    kill_at("evaluation", arguments, workspace, tmp_path)
    evaluated = killed_run(workspace)
    trained = history(evaluated)
    assert [row["epoch"] for row in trained] == [1, 2]
    assert trained[0] == first[0]
    assert evaluated.info.training_finished is True
    assert not (evaluated.path / runs.BACKUP_FOLDER).exists()
    assert not (evaluated.path / runs.PREDICTIONS_FILE).exists()
    assert_usable_checkpoint(evaluated)

    # 4. Unharmed: it only evaluates the kept checkpoint, and completes.
    process = cli(*arguments, workspace=workspace)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    (done,) = runs.list_runs(workspace)
    assert (done.run_id, done.state) == (record.run_id, runs.COMPLETED)
    assert history(done) == trained
    assert (done.path / runs.PREDICTIONS_FILE).is_file() and (done.path / runs.METRICS_FILE).is_file()
    assert_usable_checkpoint(done)
    assert not list(done.path.glob(".*"))
    # The kept epoch is the one whose weights model.keras holds, as recorded when it was saved.
    kept = done.info.kept_epoch
    assert kept == {key: value for key, value in done.info.checkpoint.items() if key not in ("bytes", "mtime_ns")}
    assert kept["epoch"] == done.info.best_epoch
    assert kept["val_loss"] == pytest.approx(trained[kept["epoch"] - 1]["val_loss"])
    assert kept["val_loss"] == pytest.approx(min(row["val_loss"] for row in trained))
    assert done.info.peak_rss_mb >= done.info.rss_start_mb > 0
    assert f"peak memory {done.info.peak_rss_mb:.0f} MB while training" in out


@pytest.mark.slow
def test_two_jobs_started_at_once_take_turns_and_keep_their_own_files(
    phantom_root: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    first = cli(*train_arguments(phantom_root, workspace, epochs=1), workspace=workspace)
    second = cli(*train_arguments(phantom_root, workspace, epochs=1), "--seed", "1", workspace=workspace)
    reads = 0
    try:
        # Meanwhile, read every run again and again, as the app's pages do.
        while first.poll() is None or second.poll() is None:
            for record in runs.list_runs(workspace):
                assert record.state in (runs.QUEUED, runs.RUNNING, runs.COMPLETED), record.problem
                assert record.info.run_id == record.run_id
                reads += 1
            time.sleep(0.05)
    finally:
        outputs = [process.communicate(timeout=300) for process in (first, second)]
    for process, (_, err) in zip((first, second), outputs):
        assert process.returncode == 0, err[-2000:]
    assert reads > 10

    records = runs.list_runs(workspace)
    assert len(records) == 2 and len({record.study_id for record in records}) == 2
    assert {record.status["pid"] for record in records} == {first.pid, second.pid}
    spans = []
    for record in records:
        assert record.state == runs.COMPLETED
        assert fileio.read_json(record.path / runs.METRICS_FILE)["run_id"] == record.run_id
        assert [row["epoch"] for row in history(record)] == [1]
        log = (record.path / runs.LOG_FILE).read_text().splitlines()
        assert sum(f"(run {record.run_id})" in line for line in log) == 1
        spans.append((log[0][:19], log[-1][:19]))
    # The training lock let one train at a time: one run's log ends before the other's starts.
    (start_a, end_a), (start_b, end_b) = sorted(spans)
    assert end_a <= start_b


def test_reading_a_run_while_it_is_written_never_sees_half_a_file(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    run = runs.create_run(workspace, runs.new_run_id(MODEL), {"model": MODEL})
    runs.write_status(run, {"state": runs.RUNNING, "step": 0})
    stop = threading.Event()

    def write_continuously() -> None:
        step = 0
        while not stop.is_set():
            runs.write_status(run, {"state": runs.RUNNING, "step": step, "padding": "x" * 20_000})
            runs.update_run_info(run, step=step, padding="y" * 20_000)
            step += 1

    writer = threading.Thread(target=write_continuously)
    writer.start()
    reads = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            (record,) = runs.list_runs(workspace)
            again = runs.read_run(run)
            assert record.state == again.state == runs.RUNNING, (again.state, again.problem)
            assert again.info.run_id == run.name
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 20


def test_runs_created_and_deleted_while_they_are_listed(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    keeper = runs.create_run(workspace, runs.new_run_id(MODEL), {"model": MODEL})
    runs.mark_finished(keeper, runs.COMPLETED)
    stop = threading.Event()
    churned = []

    def create_and_delete() -> None:
        while not stop.is_set():
            folder = runs.create_run(workspace, runs.new_run_id("resnet50"), {"model": "resnet50"})
            runs.mark_finished(folder, runs.FAILED, error="made to be deleted")
            runs.delete_run(workspace, folder.name)
            churned.append(folder.name)

    worker = threading.Thread(target=create_and_delete)
    worker.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            listed = runs.list_runs(workspace)
            assert keeper.name in {record.run_id for record in listed}
            assert all(record.state != runs.BROKEN for record in listed), [r.problem for r in listed]
    finally:
        stop.set()
        worker.join()
    assert len(churned) > 5
    assert [record.run_id for record in runs.list_runs(workspace)] == [keeper.name]


def test_a_run_deleted_between_listing_and_reading_is_left_out(tmp_path: Path, monkeypatch) -> None:
    workspace = tmp_path / "workspace"
    folders = [runs.create_run(workspace, runs.new_run_id(MODEL), {"model": MODEL}) for _ in range(3)]
    for folder in folders:
        runs.mark_finished(folder, runs.COMPLETED)
    victim = folders[1]
    read_run = runs.read_run
    deleted = []

    def delete_first(run_dir, *args, **kwargs):
        if not deleted:
            deleted.append(victim.name)  # delete_run reads the run too
            runs.delete_run(workspace, victim.name)
        return read_run(run_dir, *args, **kwargs)

    monkeypatch.setattr(runs, "read_run", delete_first)
    listed = {record.run_id for record in runs.list_runs(workspace)}
    assert listed == {folders[0].name, folders[2].name}


# Keras' BackupAndRestore after a kill during its own write --------------------------------------


def _fit_with_backup(folder: Path, epochs: int) -> int:
    """Fit a tiny model up to ``epochs`` with a BackupAndRestore in ``folder``; return epochs run."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    backup = keras.callbacks.BackupAndRestore(str(folder), double_checkpoint=True, delete_checkpoint=False)
    data = np.ones((8, 4), np.float32), np.zeros((8, 2), np.float32)
    return len(model.fit(*data, epochs=epochs, verbose=0, callbacks=[backup]).history.get("loss", []))


def _cut_weights(folder: Path) -> None:
    weights = folder / "latest.weights.h5"
    os.truncate(weights, weights.stat().st_size // 2)


def _cut_metadata(folder: Path) -> None:
    (folder / "training_metadata.json").write_text('{"epo')


@pytest.mark.parametrize(
    ("backed_up", "damage", "keras_error", "action", "epochs_left"),
    [
        (1, _cut_weights, OSError, "the phase starts again", 3),
        (2, _cut_weights, None, "resuming from the one before it", 2),
        (1, _cut_metadata, ValueError, "the phase starts again", 3),
        (2, _cut_metadata, ValueError, "resuming from the one before it", 2),
    ],
    ids=["first-weights", "later-weights", "first-metadata", "later-metadata"],
)
def test_a_backup_cut_short_by_a_kill_is_repaired_before_resuming(
    tmp_path: Path, backed_up: int, damage, keras_error, action: str, epochs_left: int
) -> None:
    folder = tmp_path / "backup"
    assert _fit_with_backup(folder, backed_up) == backed_up
    damage(folder)
    if keras_error is not None:
        # What Keras alone does with it: every later resume fails.
        shutil.copytree(folder, tmp_path / "as-keras-sees-it")
        with pytest.raises(keras_error):
            _fit_with_backup(tmp_path / "as-keras-sees-it", 3)
    assert action in training_callbacks.repair_backup(folder)
    assert _fit_with_backup(folder, 3) == epochs_left
    assert training_callbacks.repair_backup(folder) is None


# A full disk -------------------------------------------------------------------------------------


def _no_space(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_then_freed_fails_the_run_with_the_reason_and_resumes_without_losses(
    phantom_root: Path, tmp_path: Path, monkeypatch
) -> None:
    config = tiny_config(phantom_root, tmp_path, epochs=2)
    write_json = runs.atomic_write_json

    # 1. status.json cannot be written when training begins.
    def status_fails(path, payload):
        if Path(path).name == runs.STATUS_FILE and payload.get("state") == runs.RUNNING:
            raise _no_space(path)
        return write_json(path, payload)

    with monkeypatch.context() as patch:
        patch.setattr(runs, "atomic_write_json", status_fails)
        result = engine.train(config)
    record = runs.read_run(result.runs[0].path)
    assert record.state == runs.FAILED and "the disk is full" in record.problem
    assert "status.json" in record.problem and "the disk is full" in record.info.error
    assert history(record) == []

    # 2. Freed; the disk fills again while the weights that close the training phase are written.
    save_weights = keras.Model.save_weights

    def half_then_full(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if "-done." in str(filepath):
            os.truncate(filepath, os.path.getsize(filepath) // 2)
            raise _no_space(filepath)

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save_weights", half_then_full)
        result = engine.train(config)
    record = runs.read_run(result.runs[0].path)
    assert record.state == runs.FAILED and "the disk is full" in record.problem
    trained = history(record)
    assert [row["epoch"] for row in trained] == [1, 2]
    assert_usable_checkpoint(record)

    # 3. Freed: the same command completes without training an epoch again.
    result = engine.train(config)
    assert result.ok, result.runs[0].error
    record = runs.read_run(result.runs[0].path)
    assert history(record) == trained
    assert (record.path / runs.PREDICTIONS_FILE).is_file()
    assert not list(record.path.glob(".*"))


def test_a_disk_that_stays_full_ends_training_with_one_clear_error(
    phantom_root: Path, tmp_path: Path, monkeypatch
) -> None:
    write_json = runs.atomic_write_json
    full = threading.Event()

    def fills_up(path, payload):
        if Path(path).name == runs.STATUS_FILE and payload.get("state") == runs.RUNNING:
            full.set()
        if full.is_set():
            raise _no_space(path)
        return write_json(path, payload)

    monkeypatch.setattr(runs, "atomic_write_json", fills_up)
    with pytest.raises(errors.KidneyLabError, match="the disk is full") as caught:
        engine.train(tiny_config(phantom_root, tmp_path, epochs=1))
    assert "run the same command again" in str(caught.value)
    (folder,) = [path for path in tmp_path.iterdir() if runs.RUN_ID_PATTERN.fullmatch(path.name)]
    # What was last written whole is still there: the run never shows half a file.
    assert fileio.read_json(folder / runs.STATUS_FILE)["state"] == runs.QUEUED
    assert isinstance(fileio.read_json(folder / runs.RUN_FILE), dict)
    assert not list(folder.glob(".*.tmp"))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 4 MiB tmpfs; skipped where this process may not mount one (not root, no mount)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and the mount command; the patched-write tests cover this")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk_keeps_the_previous_checkpoint_and_status(small_disk: Path) -> None:
    run = runs.create_run(small_disk, runs.new_run_id(MODEL), {"model": MODEL, "image_size": SIZE})
    model = builders.create_model(MODEL, SIZE).model
    training_callbacks.save_atomically(model, run / runs.MODEL_FILE)
    runs.write_status(run, {"state": runs.RUNNING, "epoch": 1})
    saved = (run / runs.MODEL_FILE).read_bytes()
    free = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 100_000))

    with pytest.raises(OSError) as caught:
        training_callbacks.save_atomically(model, run / runs.MODEL_FILE)
    assert caught.value.errno == errno.ENOSPC
    assert engine._error_message(caught.value).startswith("the disk is full")
    with pytest.raises(OSError) as caught:
        runs.write_status(run, {"state": runs.RUNNING, "epoch": 2, "padding": "x" * 200_000})
    assert caught.value.errno == errno.ENOSPC

    record = runs.read_run(run)
    assert record.state == runs.RUNNING and record.status["epoch"] == 1
    assert (run / runs.MODEL_FILE).read_bytes() == saved and not list(run.glob(".*"))
    assert record.model_problem is None
    builders.load_model(run / runs.MODEL_FILE, model_name=MODEL, image_size=SIZE)


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / runs.MODEL_FILE
    first = builders.create_model(MODEL, SIZE).model
    training_callbacks.save_atomically(first, path)
    before = path.read_bytes()
    save = keras.Model.save

    def half_then_full(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        os.truncate(filepath, os.path.getsize(filepath) // 2)
        raise _no_space(filepath)

    monkeypatch.setattr(keras.Model, "save", half_then_full)
    second = builders.create_model(MODEL, SIZE).model
    with pytest.raises(OSError) as caught:
        training_callbacks.save_atomically(second, path)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [item.name for item in tmp_path.iterdir()] == [runs.MODEL_FILE]
    loaded = builders.load_model(path, model_name=MODEL, image_size=SIZE)
    pixels = np.full((1, SIZE, SIZE, 3), 128.0, np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(pixels), first.predict_on_batch(pixels), atol=1e-6)
