"""The training engine: ``train(config)`` trains one or more registry models on one split.

Its settings are a :class:`kidney_lab.training.config.TrainConfig` (declared there with the flags
of ``python -m kidney_lab train``). One model's run goes through named steps: choose the devices,
build the datasets and the model, record the setup, plan the phases, run each phase, record how
training went, fit the trust files (validation predictions, OOD detector), evaluate.

One call is one study: every model is trained on the same stored split and its runs share a
study id. For each model the engine

1. builds the model from the registry (ImageNet weights when asked and available),
2. trains it: with pretrained weights first the head on a frozen backbone, then the whole
   network at a lower learning rate with BatchNormalization kept in inference mode; from
   random initialisation end to end,
3. keeps the checkpoint of lowest validation loss as ``model.keras`` (written atomically),
4. predicts the validation images with that saved model (``val_predictions.csv``) and fits the
   out-of-distribution detector on the training images' pooled features
   (``ood_detector.json``), one extra pass over both without augmentation,
5. evaluates that saved file on the test split, storing ``predictions.csv`` (with OOD scores),
   ``metrics.json`` and ``calibration.json`` (temperature scaling fitted on the validation
   predictions, scored on the test images).

Class weights are "balanced" weights of the training split, in the registry's class order.
``BackupAndRestore`` keeps the state of the last finished epoch, so running the same command
again after the process was killed resumes where it stopped. One job trains at a time per
workspace (a file lock); a second one waits as "queued". SIGTERM or Ctrl+C stop training after
the current batch, and the run is marked cancelled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pandas as pd
import sklearn.utils.class_weight
import tensorflow as tf

from kidney_lab import __version__
from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data import audit as audit_module
from kidney_lab.data import classes
from kidney_lab.data import discover
from kidney_lab.data import folds as folds_module
from kidney_lab.data import pipeline
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import cv as cv_module
from kidney_lab.evaluation import evaluate as evaluate_module
from kidney_lab.evaluation import study_ensemble
from kidney_lab.models import builders
from kidney_lab.models import registry
from kidney_lab.training import callbacks as training_callbacks
from kidney_lab.training import config as config_module
from kidney_lab.training import distribute
from kidney_lab.training import jobs

# Fine-tuning after the head phase uses the learning rate times this factor.
FINE_TUNE_FACTOR = 0.1

Listener = Callable[[str, dict[str, Any]], None]

# Several models trained in one process trace their own functions; TensorFlow's retracing
# warning about that is noise on the command line.
tf.get_logger().setLevel("ERROR")


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How one model's run ended."""

    run_id: str
    model: str
    path: Path
    status: str
    error: str | None = None
    metrics: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The study a :func:`train` call produced."""

    study_id: str
    split_id: str
    runs: tuple[RunOutcome, ...]
    cv_folds: int | None = None
    pooled: tuple[dict[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every run completed."""
        return all(outcome.status == runs.COMPLETED for outcome in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """The ``train --json`` result (see DESIGN.md)."""
        return {
            "study_id": self.study_id,
            "split_id": self.split_id,
            "runs": [
                {
                    "run_id": outcome.run_id,
                    "model": outcome.model,
                    "path": str(outcome.path.resolve()),
                    "status": outcome.status,
                    "error": outcome.error,
                    "test_accuracy": (outcome.metrics or {}).get("accuracy"),
                }
                for outcome in self.runs
            ],
            **({} if self.cv_folds is None else {"cv": self._cv_dict()}),
        }

    def _cv_dict(self) -> dict[str, Any]:
        """The ``cv`` entry of ``train --json``: the fold runs and each model's pooled result."""
        fold_of = {outcome.run_id: runs.read_run(outcome.path).info.fold for outcome in self.runs}
        keys = ("model", "predictions", "metrics", "images", "macro_f1", "macro_f1_interval",
                "folds_macro_f1", "macro_f1_mean", "macro_f1_sd", "complete")
        return {
            "folds": self.cv_folds,
            "cv_id": self.split_id,
            "runs": [
                {"model": outcome.model, "fold": fold_of[outcome.run_id], "run_id": outcome.run_id,
                 "path": str(outcome.path.resolve()), "status": outcome.status}
                for outcome in self.runs
            ],
            "pooled": [{key: entry.get(key) for key in keys} for entry in self.pooled],
        }


def train(
    config: config_module.TrainConfig,
    listener: Listener | None = None,
    token: jobs.CancelToken | None = None,
    *,
    take_lock: bool = True,
) -> TrainResult:
    """Train every model of ``config`` on one split and evaluate each on its test images.

    Args:
        config: the settings.
        listener: called as ``listener(run_id, status)`` whenever a run's status is written
            (the command line draws its progress bars from it).
        token: a cancellation token; by default one is installed for SIGTERM and SIGINT
            while training runs in the main thread.
        take_lock: wait for and hold the workspace's training lock while training (the
            default); False only for a caller that holds it already on this call's behalf
            (the demo, whose two processes train under the one lock it took).

    Returns:
        The study id, the split id and one outcome per model. A model that fails does not
        stop the others; its outcome says failed, with the error.

    Raises:
        kidney_lab.errors.KidneyLabError: before any run starts, when the dataset, the split or
            the workspace cannot be used; also when another process is training this study.
    """
    if config.strategy == "multiworker":
        # Collective ops can be configured only before TensorFlow's runtime starts.
        distribute.make_strategy(config.strategy)
    chief, scratch = distribute.is_chief(config.strategy), None
    if chief:
        workspace = workspace_module.prepare_workspace(config.workspace)
    else:
        # Workers other than the chief write their copies of the run files to a scratch folder.
        scratch = Path(tempfile.mkdtemp(prefix="kidney-lab-worker-"))
        workspace = scratch
    try:
        return _train_study(config, workspace, listener, token, take_lock)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _train_study(
    config: config_module.TrainConfig, workspace: Path, listener: Listener | None, token: jobs.CancelToken | None,
    take_lock: bool = True,
) -> TrainResult:
    scan = discover.scan_dataset(config.data, cache=workspace / workspace_module.CACHE_FOLDER)
    _check_classes(scan)
    report = audit_module.audit_dataset(scan)
    plan = None
    if config.cv is None:
        data_split, _ = split_module.get_or_make_split(
            report,
            workspace,
            config.split,
            seed=config.seed,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
        )
        _check_split(data_split)
        fold_splits: list[tuple[int | None, split_module.Split]] = [(None, data_split)]
        split_id = data_split.split_id
    else:
        plan, _ = folds_module.get_or_make_plan(
            report, workspace, config.cv, seed=config.seed, val_fraction=config.val_fraction
        )
        chosen = range(plan.folds) if config.fold is None else [config.fold]
        fold_splits = [(fold, plan.split(fold)) for fold in chosen]
        for _, fold_split in fold_splits:
            _check_split(fold_split)
        split_id = plan.cv_id
    command_key = _command_key(config, scan.fingerprint, split_id)
    wanted = [(name, fold) for name in config.models for fold, _ in fold_splits]
    every = [(name, fold) for name in config.models for fold in (range(plan.folds) if plan else [None])]
    study_id, existing = _find_resumable_study(workspace, command_key, config.study_id, wanted, every)
    study_id = study_id or config.study_id or runs.new_study_id()

    # Every fold of one model before the next model: the folds of an architecture train one after
    # the other in the same process, which keeps what Keras and TensorFlow cache between them.
    planned: list[tuple[str, Path, bool, split_module.Split]] = []
    splits_by_fold = dict(fold_splits)
    for name, fold in wanted:
        fold_split = splits_by_fold[fold]
        record = existing.get((name, fold))
        if record is not None:
            planned.append((record.run_id, record.path, record.state == runs.COMPLETED, fold_split))
            if record.state != runs.COMPLETED:
                runs.write_status(record.path, {"state": runs.QUEUED, "phase": "queued", "resumed": True})
            continue
        run_id = runs.new_run_id(name)
        info = _run_info(config, name, run_id, study_id, command_key, scan, fold_split, workspace)
        planned.append((run_id, runs.create_run(workspace, run_id, info), False, fold_split))

    own_token = token is None
    token = token or jobs.CancelToken()
    if own_token:
        token.install()
    outcomes: list[RunOutcome] = []
    try:
        waiting = [path for _, path, done, _ in planned if not done]
        try:
            lock = jobs.training_lock(
                workspace,
                on_wait=lambda: [_note(path, "waiting for another training job to finish") for path in waiting],
                cancel_token=token,
            ) if take_lock else contextlib.nullcontext()
            with lock:
                for run_id, path, done, fold_split in planned:
                    if token.cancelled:
                        break
                    outcomes.append(
                        _finished_outcome(run_id, path)
                        if done
                        else _train_run(config, run_id, path, fold_split, listener, token)
                    )
        except jobs.Cancelled:
            pass
        for run_id, path, _, _ in planned[len(outcomes):]:
            runs.mark_finished(path, runs.CANCELLED, error="cancelled before it started")
            outcomes.append(_finished_outcome(run_id, path))
    finally:
        if own_token:
            token.uninstall()
    pooled: tuple[dict[str, Any], ...] = ()
    if plan is not None and distribute.is_chief(config.strategy):
        pooled = tuple(cv_module.pool_study(workspace, study_id, plan))
    if plan is None and distribute.is_chief(config.strategy):
        study_ensemble.build_after_training(workspace, study_id)
    return TrainResult(
        study_id=study_id, split_id=split_id, runs=tuple(outcomes),
        cv_folds=None if plan is None else plan.folds, pooled=pooled,
    )


def _train_run(
    config: config_module.TrainConfig,
    run_id: str,
    path: Path,
    data_split: split_module.Split,
    listener: Listener | None,
    token: jobs.CancelToken,
) -> RunOutcome:
    log = _RunLog(path / runs.LOG_FILE)
    name = runs.read_run(path).model or ""
    try:
        token.raise_if_cancelled()
        log.write(f"training {name} (run {run_id}) on split {data_split.split_id}")
        metrics = _fit_and_evaluate(config, name, path, data_split, listener, token, log)
    except jobs.Cancelled:
        log.write("cancelled")
        runs.mark_finished(path, runs.CANCELLED, error="cancelled by the user")
        _emit(listener, run_id, path)
        return RunOutcome(run_id, name, path, runs.CANCELLED, error="cancelled by the user")
    except (KeyboardInterrupt, SystemExit):
        log.write("interrupted")
        runs.mark_finished(path, runs.CANCELLED, error="interrupted")
        raise
    except Exception as error:
        message = _error_message(error)
        log.write(f"failed: {message}\n{traceback.format_exc()}")
        _mark_finished(path, runs.FAILED, message)
        _emit(listener, run_id, path)
        return RunOutcome(run_id, name, path, runs.FAILED, error=message)
    _mark_finished(path, runs.COMPLETED)
    if metrics:
        log.write(f"completed: test accuracy {metrics['accuracy']:.4f} on {metrics['images']} images")
    _emit(listener, run_id, path)
    return RunOutcome(run_id, name, path, runs.COMPLETED, metrics=metrics or None)


@dataclasses.dataclass(frozen=True)
class _Devices:
    """Where one run trains: the strategy, and what follows from the devices it has."""

    strategy: tf.distribute.Strategy
    on_gpu: bool
    mixed_precision: bool
    xla: bool
    replicas: int
    global_batch: int


@dataclasses.dataclass(frozen=True)
class _Datasets:
    """The training and validation datasets of one run, its steps per epoch and class weights."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    steps: int
    class_weight: dict[int, float]


@dataclasses.dataclass(frozen=True)
class _Phase:
    """One ``model.fit`` call: epochs ``first_epoch`` (exclusive) to ``last_epoch``, at ``learning_rate``."""

    name: str
    first_epoch: int
    last_epoch: int
    learning_rate: float
    backbone_trainable: bool


@dataclasses.dataclass(frozen=True)
class _Fit:
    """Everything a training phase of one run needs."""

    config: config_module.TrainConfig
    name: str
    path: Path
    model: keras.Model
    pretrained: bool
    devices: _Devices
    datasets: _Datasets
    checkpoint: training_callbacks.BestCheckpoint
    listener: Listener | None
    token: jobs.CancelToken
    log: "_RunLog"


def _fit_and_evaluate(
    config: config_module.TrainConfig,
    name: str,
    path: Path,
    data_split: split_module.Split,
    listener: Listener | None,
    token: jobs.CancelToken,
    log: "_RunLog",
) -> dict[str, Any]:
    """Train model ``name`` into run ``path`` (resuming what a killed attempt left), then evaluate it.

    Returns the test metrics; empty on a worker other than the chief, which does not evaluate.
    """
    # Temporary files of writes that a killed attempt left unfinished (never the real files).
    for leftover in path.glob(".*.tmp*"):
        leftover.unlink(missing_ok=True)
    if runs.read_info(path).training_finished and (path / runs.MODEL_FILE).is_file():
        log.write("training had finished before; evaluating the stored checkpoint")
        model = None if runs.detector_path(path).is_file() else _fit_trust(path, listener, log)
        return _evaluate(path, listener, model)

    keras.utils.set_random_seed(config.seed)
    devices = _choose_devices(config)
    datasets = _build_datasets(config, name, data_split, devices)
    built = _build_model(config, name, devices)
    if built.weights_note:
        log.write(f"warning: {built.weights_note}")
    _record_setup(path, config, built, devices, datasets)
    pretrained = built.weights == registry.WEIGHTS_IMAGENET
    fit = _Fit(
        config, name, path, built.model, pretrained, devices, datasets,
        training_callbacks.BestCheckpoint(path / runs.MODEL_FILE, best=_checkpoint_loss(path)),
        listener, token, log,
    )
    started = time.perf_counter()
    with _PeakMemory() as memory:
        for index, phase in enumerate(_plan_phases(config, pretrained)):
            _run_phase(fit, index, phase)
    _record_training(path, time.perf_counter() - started, memory)
    if not distribute.is_chief(config.strategy):
        log.write("not the chief worker: the chief evaluates the model")
        return {}
    return _evaluate(path, listener, _fit_trust(path, listener, log))


def _choose_devices(config: config_module.TrainConfig) -> _Devices:
    """The distribution strategy, and mixed precision and XLA (by default on only with a GPU)."""
    strategy = distribute.make_strategy(config.strategy)
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    replicas = strategy.num_replicas_in_sync
    return _Devices(
        strategy=strategy,
        on_gpu=on_gpu,
        mixed_precision=on_gpu if config.mixed_precision is None else config.mixed_precision,
        xla=on_gpu if config.xla is None else config.xla,
        replicas=replicas,
        global_batch=config.batch_size * replicas,
    )


def _build_datasets(
    config: config_module.TrainConfig, name: str, data_split: split_module.Split, devices: _Devices
) -> _Datasets:
    """The split's training and validation images as batched datasets at model ``name``'s size."""
    size = config.size_for(name)
    global_batch, replicas = devices.global_batch, devices.replicas
    train_frame, val_frame = data_split.subset("train"), data_split.subset("val")
    # With several replicas only full batches (a partial one can leave a replica empty).
    full_only = distribute.full_batches_only("training", len(train_frame), global_batch, replicas)
    distribute.full_batches_only("validation", len(val_frame), global_batch, replicas)
    augmentation = pipeline.Augmentation() if config.augmentation else pipeline.Augmentation.off()
    train_data = distribute.shardable(
        pipeline.make_dataset(
            train_frame, size, batch_size=global_batch, training=True,
            augmentation=augmentation, seed=config.seed, cache=config.cache_images,
            drop_remainder=full_only,
        )
    )
    val_data = distribute.shardable(
        pipeline.make_dataset(
            val_frame, size, batch_size=global_batch, cache=config.cache_images, drop_remainder=full_only
        )
    )
    steps = len(train_frame) // global_batch if full_only else math.ceil(len(train_frame) / global_batch)
    return _Datasets(train_data, val_data, steps, _class_weights(train_frame))


def _build_model(config: config_module.TrainConfig, name: str, devices: _Devices) -> builders.BuiltModel:
    """Model ``name`` built in the strategy's scope, under the run's precision policy."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if devices.mixed_precision else "float32")
    try:
        with devices.strategy.scope():
            return builders.create_model(
                name,
                image_size=config.size_for(name),
                weights=config.weights,
                # With pretrained weights BatchNormalization is never trained (frozen backbone,
                # then inference mode), so the momentum only matters from scratch.
                batchnorm_momentum=config.batchnorm_momentum,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _record_setup(
    path: Path, config: config_module.TrainConfig, built: builders.BuiltModel, devices: _Devices,
    datasets: _Datasets,
) -> None:
    """Write into run.json what the run trains with: weights, size of the model, devices, class weights."""
    runs.update_run_info(
        path,
        weights=built.weights,
        weights_note=built.weights_note,
        parameters=int(built.model.count_params()),
        mixed_precision=devices.mixed_precision,
        xla=devices.xla,
        strategy=config.strategy,
        replicas=devices.replicas,
        global_batch_size=devices.global_batch,
        class_weights={classes.CLASS_NAMES[index]: value for index, value in datasets.class_weight.items()},
        device="GPU" if devices.on_gpu else "CPU",
    )


def _plan_phases(config: config_module.TrainConfig, pretrained: bool) -> list[_Phase]:
    """The phases of a run: with pretrained weights the head on a frozen backbone, then (if epochs
    remain) the whole network at :data:`FINE_TUNE_FACTOR` times the learning rate; from random
    initialisation one phase of end-to-end training."""
    if not pretrained:
        return [_Phase("training", 0, config.epochs, config.learning_rate, True)]
    head_epochs = min(config.epochs, config.head_epochs or max(1, config.epochs // 3))
    phases = [_Phase("training the head", 0, head_epochs, config.learning_rate, False)]
    if head_epochs < config.epochs:
        phases.append(
            _Phase("fine-tuning", head_epochs, config.epochs, config.learning_rate * FINE_TUNE_FACTOR, True)
        )
    return phases


def _run_phase(fit: _Fit, index: int, phase: _Phase) -> None:
    """Train one phase, resuming from its backup; a phase finished before only restores its weights.

    Raises:
        kidney_lab.training.jobs.Cancelled: the run was cancelled during the phase.
    """
    config, path, model, log = fit.config, fit.path, fit.model, fit.log
    backup = path / runs.BACKUP_FOLDER / f"phase-{index}"
    done_marker = path / runs.BACKUP_FOLDER / f"phase-{index}-done.weights.h5"
    if done_marker.is_file():
        model.load_weights(done_marker)
        log.write(f"{phase.name}: finished before, weights restored")
        return
    repaired = training_callbacks.repair_backup(backup)
    if repaired:
        log.write(f"{phase.name}: {repaired}")
    if fit.pretrained:
        builders.set_backbone_trainable(model, phase.backbone_trainable)
    steps = fit.datasets.steps
    with fit.devices.strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(
                _learning_rate(config.lr_schedule, phase.learning_rate, steps * (phase.last_epoch - phase.first_epoch))
            ),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=fit.devices.xla,
        )
    listener = fit.listener
    reporter = training_callbacks.StatusReporter(
        path,
        phase=phase.name,
        epochs=phase.last_epoch,
        steps_per_epoch=steps,
        batch_size=fit.devices.global_batch,
        base={"model": fit.name},
        token=fit.token,
        listener=None if listener is None else (lambda status: listener(path.name, status)),
    )
    # At the end of an epoch the checkpoint and the history row are written before the
    # backup that counts the epoch as done: a process killed in between trains the epoch
    # again instead of resuming after an epoch whose checkpoint or row never landed.
    phase_callbacks = [
        fit.checkpoint,
        training_callbacks.HistoryWriter(path / runs.HISTORY_FILE, phase=lambda: phase.name),
        keras.callbacks.BackupAndRestore(
            str(backup),
            double_checkpoint=True,
            # Kept after a cancelled fit so the same command resumes; removed on success.
            delete_checkpoint=False,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        reporter,
    ]
    if config.lr_schedule == "plateau":
        phase_callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-6
            )
        )
    log.write(f"{phase.name}: epochs {phase.first_epoch + 1}-{phase.last_epoch}, learning rate {phase.learning_rate:g}")
    model.fit(
        fit.datasets.train,
        validation_data=fit.datasets.val,
        epochs=phase.last_epoch,
        initial_epoch=phase.first_epoch,
        class_weight=fit.datasets.class_weight,
        callbacks=phase_callbacks,
        shuffle=False,  # The dataset shuffles itself, seeded, every epoch.
        verbose=0,
    )
    fit.token.raise_if_cancelled()
    # Atomically, so that a process killed while writing it leaves no half file behind.
    training_callbacks.save_atomically(model, done_marker)


def _record_training(path: Path, seconds: float, memory: "_PeakMemory") -> None:
    """Write into run.json how training went (time, epochs, the kept epoch, peak memory).

    Raises:
        kidney_lab.errors.KidneyLabError: training kept no checkpoint (no finite validation loss).
    """
    history = runs.read_history(path / runs.HISTORY_FILE)
    if not (path / runs.MODEL_FILE).is_file():
        raise errors.KidneyLabError(
            "Training never produced a finite validation loss, so no checkpoint was kept; "
            "try a lower --lr."
        )
    kept = runs.checkpoint_record(path) or min(
        history, key=lambda row: row.get("val_loss", math.inf), default={}
    )
    runs.update_run_info(
        path,
        training_finished=True,
        train_seconds=round(seconds, 3),
        epochs_trained=len(history),
        best_epoch=kept.get("epoch"),
        kept_epoch=kept,
        **memory.summary(),
    )
    shutil.rmtree(path / runs.BACKUP_FOLDER, ignore_errors=True)


def _fit_trust(path: Path, listener: Listener | None, log: "_RunLog") -> keras.Model:
    """Predict the validation images with the kept model and fit the OOD detector on the training
    images' pooled features (:func:`kidney_lab.evaluation.evaluate.fit_trust`); record its time.

    Returns the kept model, loaded once for this and the evaluation that follows.
    """
    runs.write_status(path, {"state": runs.RUNNING, "phase": "fitting the out-of-distribution detector"})
    _emit(listener, path.name, path)
    model = evaluate_module.load_kept_model(path)
    fitted = evaluate_module.fit_trust(path, model=model)
    runs.update_run_info(path, trust_seconds=fitted["seconds"])
    log.write(
        f"OOD detector fitted on {fitted['training_images']} training images, threshold {fitted['threshold']:.3f} "
        f"(the {fitted['percentile']:g}th percentile of {fitted['validation_images']} validation scores), "
        f"validation predictions stored, in {fitted['seconds']:.1f} s"
    )
    return model


def _checkpoint_loss(path: Path) -> float:
    """The validation loss of the run's checkpoint on disk, which training must beat to replace it."""
    if not (path / runs.MODEL_FILE).is_file():
        return math.inf
    record = runs.checkpoint_record(path)
    if record is not None and isinstance(record.get("val_loss"), float):
        return record["val_loss"]
    # A checkpoint without a record of its own (killed between saving and recording, or saved
    # by an older version): the best loss of the history is the closest guess.
    losses = [row["val_loss"] for row in runs.read_history(path / runs.HISTORY_FILE)
              if isinstance(row.get("val_loss"), float)]
    return min(losses, default=math.inf)


def _mark_finished(path: Path, state: str, error: str | None = None) -> None:
    """Record how the run ended; when even that cannot be written, stop with a clear error."""
    try:
        runs.mark_finished(path, state, error=error)
    except OSError as failure:
        # Why it failed is in train.log already; this says why not even that could be recorded.
        raise errors.KidneyLabError(
            f"Run {path.name} could not be marked {state}: {_error_message(failure)}"
        ) from None


class _PeakMemory:
    """The peak resident memory of this process while one model trains (a context manager).

    ``ru_maxrss`` is the peak of the whole process since it started (TensorFlow's start-up and
    the models trained before included) and never goes down, so a thread samples the resident
    set size from ``/proc/self/statm`` every :attr:`interval` seconds instead. Where there is no
    ``/proc`` the process-wide peak is all there is, and the summary says so.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.start_mb: float | None = None
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def __enter__(self) -> "_PeakMemory":
        self.start_mb = self.peak_mb = _resident_mb()
        if self.start_mb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._note(_resident_mb())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(_resident_mb())

    def _note(self, value: float | None) -> None:
        if value is not None and self.peak_mb is not None:
            self.peak_mb = max(self.peak_mb, value)

    def summary(self) -> dict[str, Any]:
        """``peak_rss_mb`` and ``rss_start_mb`` (MiB) and how the peak was measured."""
        if self.peak_mb is None:
            divisor = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB elsewhere
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / divisor
            return {"peak_rss_mb": round(peak, 1), "rss_start_mb": None,
                    "peak_rss_measure": "peak of the whole process since it started (ru_maxrss)"}
        return {"peak_rss_mb": round(self.peak_mb, 1), "rss_start_mb": round(self.start_mb or 0.0, 1),
                "peak_rss_measure": f"resident set sampled every {self.interval:g} s while this model trained"}


def _resident_mb() -> float | None:
    """This process's resident set size in MiB, or None without ``/proc``."""
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            pages = int(stream.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _learning_rate(schedule: str, rate: float, steps: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, steps), alpha=0.05)
    return rate


def _evaluate(path: Path, listener: Listener | None, model: keras.Model | None) -> dict[str, Any]:
    status = {"state": runs.RUNNING, "phase": "evaluating on the test split"}
    runs.write_status(path, status)
    _emit(listener, path.name, path)
    return evaluate_module.evaluate_run(path, model=model)


def _check_classes(scan: discover.DatasetScan) -> None:
    counts = scan.per_class
    empty = [name for name in classes.CLASS_NAMES if counts.get(name, 0) == 0]
    if empty:
        raise errors.DatasetError(
            f"The dataset at {scan.root} has no images of {', '.join(empty)}; every class needs "
            "images to train a 4-class model."
        )


def _check_split(data_split: split_module.Split) -> None:
    """Training and validation images of every class, or a SplitError that says how to get them."""
    per_subset = data_split.counts_per_class
    remedies = {
        "train": "use a smaller --val-fraction or --test-fraction",
        "val": f"use a larger --val-fraction than {data_split.val_fraction:g}",
    }
    for subset, remedy in remedies.items():
        missing = [name for name in classes.CLASS_NAMES if per_subset.get(subset, {}).get(name, 0) == 0]
        if missing:
            raise errors.SplitError(
                f"The {subset} split has no images of {', '.join(missing)}; the dataset is too "
                f"small for this split. Add images, or {remedy} (train and data split take both)."
            )


def _class_weights(frame: pd.DataFrame) -> dict[int, float]:
    """Balanced class weights, ``n / (classes * count)``, keyed by registry class index."""
    indices = np.array([classes.class_index(label) for label in frame["label"]])
    present = np.arange(len(classes.CLASS_NAMES))
    values = sklearn.utils.class_weight.compute_class_weight("balanced", classes=present, y=indices)
    return {int(index): float(value) for index, value in zip(present, values)}


def _command_key(config: config_module.TrainConfig, fingerprint: str, split_id: str) -> str:
    """Identifies "the same command" for resuming: everything that shapes the trained models."""
    settings = config.to_dict()
    # The fold is left out so that `--fold I` of one cross-validation joins the study of the others;
    # cv is left out when unset so that commands written before it existed keep their key.
    for volatile in ("workspace", "study_id", "data", "fold"):
        settings.pop(volatile)
    if settings["cv"] is None:
        settings.pop("cv")
    return fileio.short_hash(fingerprint, split_id, repr(sorted(settings.items())), length=16)


def _find_resumable_study(
    workspace: Path,
    command_key: str,
    study_id: str | None,
    wanted: list[tuple[str, int | None]],
    every: list[tuple[str, int | None]],
) -> tuple[str | None, dict[tuple[str, int | None], runs.RunRecord]]:
    """The newest unfinished study of the same command, and its runs by (model, fold).

    A study is unfinished while one of ``every`` (model, fold) pair it should hold is missing or
    not completed (the fold is None outside cross-validation). A study that another process is
    training blocks only a call that would train the same (model, fold); ``train --fold I`` on
    another fold of it joins it.
    """
    studies: dict[str, dict[tuple[str, int | None], runs.RunRecord]] = {}
    for record in runs.list_runs(workspace, study_id=study_id):
        if record.info.command_key == command_key and record.study_id and record.model:
            studies.setdefault(record.study_id, {}).setdefault((record.model, record.info.fold), record)
    for candidate, members in studies.items():
        if all(key in members and members[key].state == runs.COMPLETED for key in every):
            continue
        busy = [members[key] for key in wanted if key in members and members[key].state in runs.ACTIVE_STATES]
        if busy:
            raise runs.RunBusyError(
                f"Study {candidate} is being trained by process {busy[0].status.get('pid')}; "
                "wait for it, or cancel it first."
            )
        return candidate, members
    return None, {}


def _run_info(
    config: config_module.TrainConfig,
    name: str,
    run_id: str,
    study_id: str,
    command_key: str,
    scan: discover.DatasetScan,
    data_split: split_module.Split,
    workspace: Path,
) -> dict[str, Any]:
    spec = registry.get_spec(name)
    return {
        "run_id": run_id,
        "study_id": study_id,
        "model": spec.name,
        "display_name": spec.display_name,
        "spec": registry.describe(spec),
        "image_size": config.size_for(name),
        "class_names": list(classes.CLASS_NAMES),
        "config": config.to_dict(),
        "command_key": command_key,
        "workspace": str(workspace),
        "data_root": str(scan.root),
        "dataset_fingerprint": scan.fingerprint,
        "dataset_images": int(len(scan.table)),
        "split_id": data_split.split_id,
        "split_strategy": data_split.strategy,
        "split_counts": data_split.counts,
        "cv_id": data_split.cv_id,
        "fold": data_split.fold,
        "folds": data_split.folds,
        "test_with_duplicate_in_train": data_split.leakage("test")["exact_or_near"],
        "weights_requested": config.weights,
        "host": socket.gethostname(),
        "versions": {
            "kidney_lab": __version__,
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
    }


def _finished_outcome(run_id: str, path: Path) -> RunOutcome:
    record = runs.read_run(path)
    metrics = None
    if record.state == runs.COMPLETED and (path / runs.METRICS_FILE).is_file():
        metrics = fileio.read_json(path / runs.METRICS_FILE)
    return RunOutcome(run_id, record.model or "", path, record.state, error=record.problem, metrics=metrics)


def _note(path: Path, phase: str) -> None:
    runs.write_status(path, {"state": runs.QUEUED, "phase": phase})


def _emit(listener: Listener | None, run_id: str, path: Path) -> None:
    if listener is not None:
        listener(run_id, runs.read_run(path).status)


def _error_message(error: BaseException) -> str:
    if isinstance(error, errors.KidneyLabError):
        return str(error)
    if isinstance(error, OSError) and error.errno == 28:
        return f"the disk is full ({error.filename or 'while writing'}); free space and run the same command again to resume"
    if isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError)):
        return "out of memory; use a smaller --batch-size or --img-size"
    return f"{type(error).__name__}: {errors.first_line(error, 300, empty='')}"


class _RunLog:
    """Appends timestamped lines to a run's train.log (and echoes nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, message: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")
