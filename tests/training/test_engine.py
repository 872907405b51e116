"""The training engine: run folders, resume after kill -9, cancel, queue and bad input."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.models import builders
from kidney_lab.models import registry
from kidney_lab.training import callbacks as training_callbacks
from kidney_lab.training import config
from kidney_lab.training import engine
from kidney_lab.training import jobs

# The cheapest model at the smallest size keeps these tests fast.
MODEL, SIZE = "vit", 32
REPOSITORY = Path(__file__).resolve().parents[2]


def tiny_config(data: Path, workspace: Path, **overrides) -> config.TrainConfig:
    settings = dict(
        data=data, models=(MODEL,), epochs=2, image_size=SIZE, weights="none",
        batch_size=8, workspace=workspace, patience=5,
    )
    settings.update(overrides)
    return config.TrainConfig(**settings)


def cli(*arguments: str, workspace: Path, **popen) -> subprocess.Popen:
    environment = dict(os.environ, KIDNEY_LAB_WORKSPACE=str(workspace), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "kidney_lab", *arguments], cwd=REPOSITORY, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )


def wait_for(condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def train_arguments(data: Path, workspace: Path, epochs: int) -> list[str]:
    return [
        "train", "--data", str(data), "--models", MODEL, "--epochs", str(epochs),
        "--img-size", str(SIZE), "--weights", "none", "--batch-size", "4",
        "--workspace", str(workspace),
    ]


@pytest.fixture(scope="module")
def finished(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory):
    workspace = tmp_path_factory.mktemp("engine")
    statuses: list[dict] = []
    result = engine.train(
        tiny_config(phantom_root, workspace, weights="auto"),
        listener=lambda run_id, status: statuses.append(status),
    )
    return result, workspace, statuses


def test_a_finished_run_holds_every_file_of_the_contract(finished) -> None:
    result, workspace, _ = finished
    assert result.ok and len(result.runs) == 1
    outcome = result.runs[0]
    for name in (runs.RUN_FILE, runs.STATUS_FILE, runs.HISTORY_FILE, runs.MODEL_FILE,
                 runs.PREDICTIONS_FILE, runs.METRICS_FILE, runs.LOG_FILE):
        assert (outcome.path / name).is_file(), name
    assert not (outcome.path / runs.BACKUP_FOLDER).exists()
    record = runs.read_run(outcome.path)
    assert record.state == runs.COMPLETED
    assert record.study_id == result.study_id
    info = record.info
    assert info.model == MODEL and info.image_size == SIZE
    assert info.split_id == result.split_id and info.training_finished is True
    assert info.versions["tensorflow"] and info.parameters > 0
    assert not list(outcome.path.glob(".*"))


def test_auto_weights_without_imagenet_record_why(finished) -> None:
    result, _, _ = finished
    info = runs.read_run(result.runs[0].path).info
    assert info.weights_requested == "auto"
    assert info.weights == registry.WEIGHTS_RANDOM
    assert "ImageNet" in info.weights_note


def test_predictions_are_the_test_split_and_metrics_follow_from_them(finished) -> None:
    result, workspace, _ = finished
    path = result.runs[0].path
    data_split = split_module.load_split(workspace, result.split_id)
    table = pd.read_csv(path / runs.PREDICTIONS_FILE)
    test = data_split.subset("test")
    assert sorted(table["path"]) == sorted(test["path"])
    truth = dict(zip(test["path"], test["label"]))
    assert all(truth[p] == label for p, label in zip(table["path"], table["true_label"]))
    stored = fileio.read_json(path / runs.METRICS_FILE)
    recomputed = metrics_module.compute_metrics(table)
    assert stored["accuracy"] == pytest.approx(recomputed["accuracy"])
    assert stored["images"] == len(test)
    assert np.asarray(stored["confusion_matrix"]).sum() == len(test)
    model = builders.load_model(path / runs.MODEL_FILE)
    probabilities = table[metrics_module.probability_columns()].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert model.output_shape == (None, len(classes.CLASS_NAMES))


def test_history_has_one_row_per_epoch_and_status_reported_progress(finished) -> None:
    result, _, statuses = finished
    history = runs.read_history(result.runs[0].path / runs.HISTORY_FILE)
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history[0])
    progress = [status for status in statuses if status.get("step")]
    assert progress and all(status["pid"] == os.getpid() for status in progress)
    assert any(status.get("images_per_second") for status in progress)
    assert statuses[-1]["state"] == runs.COMPLETED


def test_class_weights_are_balanced_in_registry_order() -> None:
    counts = {"Cyst": 10, "Normal": 30, "Stone": 5, "Tumor": 5}
    frame = pd.DataFrame({"label": [name for name, n in counts.items() for _ in range(n)]})
    weights = engine._class_weights(frame)
    total = sum(counts.values())
    for index, name in enumerate(classes.CLASS_NAMES):
        assert weights[index] == pytest.approx(total / (4 * counts[name]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": ("alexnet",)}, "Unknown model"),
        ({"models": ("inceptionv3",), "image_size": 50}, "at least 75"),
        ({"image_size": 36}, "multiple of"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1.0}, "learning rate"),
        ({"split": "stratified"}, "Unknown split"),
        ({"weights": "coco"}, "Unknown weights"),
        ({"strategy": "tpu"}, "Unknown strategy"),
        ({"lr_schedule": "step"}, "Unknown learning-rate schedule"),
        ({"study_id": "../x"}, "not a study id"),
    ],
)
def test_bad_settings_are_refused_with_a_message(tmp_path: Path, overrides, message) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        tiny_config(tmp_path, tmp_path, **overrides)


def test_multiworker_without_cluster_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(errors.ConfigError, match="TF_CONFIG"):
        tiny_config(tmp_path, tmp_path, strategy="multiworker")


def test_a_dataset_without_a_class_starts_no_run(phantom_root: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    for file in (data / "Stone").iterdir():
        file.unlink()
    workspace = tmp_path / "workspace"
    with pytest.raises(errors.DatasetError):
        engine.train(tiny_config(data, workspace))
    assert runs.list_runs(workspace) == []


def test_a_workspace_that_cannot_be_made_is_refused(phantom_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(errors.KidneyLabError, match="not writable"):
        engine.train(tiny_config(phantom_root, blocker / "workspace"))


def test_a_failing_model_is_marked_failed_with_its_error(phantom_root, tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while building")

    monkeypatch.setattr(builders, "create_model", broken)
    result = engine.train(tiny_config(phantom_root, tmp_path))
    assert not result.ok
    record = runs.read_run(result.runs[0].path)
    assert record.state == runs.FAILED
    assert "simulated failure" in record.status["error"]
    assert "simulated failure" in record.status["log_tail"]


def test_a_full_disk_while_saving_a_checkpoint_fails_the_run_with_that_reason(
    phantom_root, tmp_path, monkeypatch
) -> None:
    def full(model, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(training_callbacks, "save_atomically", full)
    result = engine.train(tiny_config(phantom_root, tmp_path, epochs=1))
    record = runs.read_run(result.runs[0].path)
    assert record.state == runs.FAILED
    assert "disk is full" in record.status["error"]


def test_cancelling_stops_at_the_next_batch(phantom_root: Path, tmp_path: Path) -> None:
    token = jobs.CancelToken()
    seen: list[dict] = []

    def listener(run_id: str, status: dict) -> None:
        seen.append(status)
        if status.get("step") == 1:
            token.cancel("test")

    result = engine.train(tiny_config(phantom_root, tmp_path, epochs=3), listener=listener, token=token)
    record = runs.read_run(result.runs[0].path)
    assert record.state == runs.CANCELLED
    steps = [status["step"] for status in seen if status.get("state") == runs.RUNNING and "step" in status]
    assert max(steps) <= 2
    assert not runs.read_history(result.runs[0].path / runs.HISTORY_FILE)


def test_kill_9_then_the_same_command_resumes_from_the_last_finished_epoch(
    phantom_root: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    arguments = train_arguments(phantom_root, workspace, epochs=3)
    process = cli(*arguments, workspace=workspace)
    try:
        def one_epoch_done() -> bool:
            records = runs.list_runs(workspace) if workspace.is_dir() else []
            return bool(records) and len(
                runs.read_history(records[0].path / runs.HISTORY_FILE)
            ) >= 1

        wait_for(one_epoch_done, what="the first epoch")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    (killed,) = runs.list_runs(workspace)
    assert killed.state == runs.STALE
    first = runs.read_history(killed.path / runs.HISTORY_FILE)

    again = cli(*arguments, workspace=workspace)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    (resumed,) = runs.list_runs(workspace)
    assert resumed.run_id == killed.run_id and resumed.state == runs.COMPLETED
    history = runs.read_history(resumed.path / runs.HISTORY_FILE)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    # The epochs finished before the kill were not trained again.
    assert history[0]["loss"] == pytest.approx(first[0]["loss"])
    assert (resumed.path / runs.PREDICTIONS_FILE).is_file()


def test_a_second_job_waits_as_queued_until_the_first_finishes(phantom_root: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with jobs.training_lock(workspace):
        process = cli(*train_arguments(phantom_root, workspace, epochs=1), workspace=workspace)

        def queued() -> bool:
            records = runs.list_runs(workspace)
            return bool(records) and "waiting" in str(records[0].status.get("phase"))

        wait_for(queued, what="the run to wait in the queue")
        (record,) = runs.list_runs(workspace)
        assert record.state == runs.QUEUED
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    assert runs.list_runs(workspace)[0].state == runs.COMPLETED


def test_a_background_job_can_be_cancelled(phantom_root: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    # start_job adds the command name and the workspace itself.
    arguments = train_arguments(phantom_root, workspace, epochs=50)[1:-2]
    job = jobs.start_job(arguments, workspace=workspace)

    def training() -> bool:
        assert jobs.read_job(job.job_id, workspace).is_active, job.log_tail()
        records = runs.list_runs(workspace)
        return bool(records) and (records[0].status.get("step") or 0) >= 1

    wait_for(training, what="the job to start training")
    jobs.cancel_job(job.job_id, workspace=workspace, grace_seconds=60)
    wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active, what="the job to end")
    (record,) = runs.list_runs(workspace)
    assert record.state == runs.CANCELLED
    assert record.study_id == job.study_id


def test_the_command_line_refuses_an_unknown_model_in_one_line(tmp_path: Path) -> None:
    process = cli("train", "--data", str(tmp_path), "--models", "alexnet", workspace=tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.strip().startswith("error: Unknown model 'alexnet'")
    assert "Traceback" not in err


def test_the_train_json_result_names_the_study_and_runs(phantom_root: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    result_file = tmp_path / "result.json"
    process = cli(*train_arguments(phantom_root, workspace, epochs=1), "--json", str(result_file),
                  workspace=workspace)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    payload = fileio.read_json(result_file)
    assert payload["study_id"].startswith("study-")
    (run,) = payload["runs"]
    assert run["model"] == MODEL and run["status"] == runs.COMPLETED
    assert Path(run["path"]).is_absolute() and Path(run["path"], runs.MODEL_FILE).is_file()
    assert "test accuracy" in out


def test_pretrained_weights_train_the_head_then_fine_tune_with_batchnorm_frozen(
    phantom_root: Path, tmp_path: Path, monkeypatch
) -> None:
    real_create = builders.create_model
    seen: dict[str, list] = {"trainable": []}

    def pretend_pretrained(name, image_size=None, weights="none", **kwargs):
        built = real_create(name, image_size=image_size, weights="none", **kwargs)
        return builders.BuiltModel(built.model, built.spec, built.image_size, registry.WEIGHTS_IMAGENET, None)

    real_fit = keras.Model.fit

    def recording_fit(self, *args, **kwargs):
        trainable = {layer.name for layer in self.layers if layer.trainable_weights}
        batchnorm = [layer.trainable for layer in self.layers if isinstance(layer, keras.layers.BatchNormalization)]
        seen["trainable"].append((kwargs["initial_epoch"], trainable, batchnorm))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(builders, "create_model", pretend_pretrained)
    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    result = engine.train(tiny_config(phantom_root, tmp_path, models=("mobilenetv2",), epochs=3, weights="auto"))
    assert result.ok, result.runs[0].error
    (head_start, head_trainable, _), (tune_start, tune_trainable, batchnorm) = seen["trainable"]
    assert (head_start, tune_start) == (0, 1)
    assert head_trainable == {registry.OUTPUT_LAYER}
    assert len(tune_trainable) > 10 and not any(batchnorm)
    history = runs.read_history(result.runs[0].path / runs.HISTORY_FILE)
    assert [row["phase"] for row in history] == ["training the head", "fine-tuning", "fine-tuning"]
    assert history[1]["learning_rate"] == pytest.approx(history[0]["learning_rate"] * engine.FINE_TUNE_FACTOR)
    assert runs.read_run(result.runs[0].path).info.weights == registry.WEIGHTS_IMAGENET


def test_mixed_precision_and_cosine_schedule(phantom_root: Path, tmp_path: Path) -> None:
    result = engine.train(
        tiny_config(phantom_root, tmp_path, epochs=2, mixed_precision=True, lr_schedule="cosine")
    )
    assert result.ok, result.runs[0].error
    info = runs.read_run(result.runs[0].path).info
    assert info.mixed_precision is True
    model = builders.load_model(result.runs[0].path / runs.MODEL_FILE)
    assert model.get_layer(registry.OUTPUT_LAYER).dtype_policy.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    history = runs.read_history(result.runs[0].path / runs.HISTORY_FILE)
    # Loss scaling skips the first steps while it finds its scale, so the decay starts late.
    assert history[1]["learning_rate"] < history[0]["learning_rate"]


@pytest.mark.parametrize(
    ("pretrained", "epochs", "head_epochs", "planned"),
    [
        (False, 4, None, [("training", 0, 4, 1e-3, True)]),
        (True, 6, None, [("training the head", 0, 2, 1e-3, False), ("fine-tuning", 2, 6, 1e-4, True)]),
        (True, 6, 4, [("training the head", 0, 4, 1e-3, False), ("fine-tuning", 4, 6, 1e-4, True)]),
        (True, 1, None, [("training the head", 0, 1, 1e-3, False)]),
    ],
)
def test_phases_are_the_head_then_fine_tuning_with_pretrained_weights(
    tmp_path: Path, pretrained, epochs, head_epochs, planned
) -> None:
    settings = tiny_config(tmp_path, tmp_path, epochs=epochs, head_epochs=head_epochs, learning_rate=1e-3)
    phases = engine._plan_phases(settings, pretrained)
    assert [(phase.name, phase.first_epoch, phase.last_epoch, phase.backbone_trainable) for phase in phases] == [
        (name, first, last, trainable) for name, first, last, _, trainable in planned]
    assert [phase.learning_rate for phase in phases] == pytest.approx([rate for *_, rate, _ in planned])


def test_the_kept_model_holds_no_optimizer_state(finished) -> None:
    """model.keras is for inference: Adam's moments live only in backup/ while training."""
    import io
    import zipfile

    import h5py

    result, _, _ = finished
    with zipfile.ZipFile(result.runs[0].path / runs.MODEL_FILE) as archive:
        weights = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(weights, "r") as store:
        optimizer_variables: list[str] = []
        if "optimizer" in store:
            store["optimizer"].visit(optimizer_variables.append)
        layer_variables: list[str] = []
        store["layers"].visit(layer_variables.append)
    assert layer_variables
    assert not [name for name in optimizer_variables if name.endswith(("vars/0", "vars/1", "vars/2"))]
