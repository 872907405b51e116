"""Keras callbacks that keep a run folder truthful while a model trains.

Every file they write is written atomically (a temporary file, then ``os.replace``), so a
process killed at any moment leaves the previous complete version behind, never half a file.
Reading them back is the run store's job (:func:`kidney_lab.runs.read_history`,
:func:`kidney_lab.runs.checkpoint_record`), so evaluation and the pages need not import this
module or TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import h5py
import keras

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.training import jobs

# Status writes during an epoch are at most this often (seconds); epoch ends always write.
STATUS_INTERVAL_SECONDS = 1.0
_WEIGHTS_SUFFIX = ".weights.h5"
# The files keras.callbacks.BackupAndRestore keeps, and the suffix of its previous copies.
_BACKUP_FILES = ("latest.weights.h5", "training_metadata.json")
_PREVIOUS_SUFFIX = ".bkp"


class HistoryWriter(keras.callbacks.Callback):
    """Writes one row per finished epoch to history.csv (epoch numbers from 1).

    Unlike ``keras.callbacks.CSVLogger`` the whole file is rewritten atomically and a row for
    an epoch that is trained again after a resume replaces the old one, so the file never has
    a torn line or a duplicated epoch.
    """

    def __init__(self, path: str | os.PathLike[str], phase: Callable[[], str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rows = [row for row in runs.read_history(self.path) if row.get("epoch", 0) < epoch + 1]
        row: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase()}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        rows.append(row)
        columns: list[str] = []
        for item in rows:
            columns.extend(key for key in item if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        fileio.atomic_write_text(self.path, buffer.getvalue())


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model to ``model.keras`` in a run folder whenever validation loss reaches a new minimum.

    The file is written to a temporary name and moved into place, so the previous best stays
    loadable if the process dies mid-save. After each save, ``run.json`` records the epoch and
    its logs under ``checkpoint``, with the file's size and modification time, so that a resumed
    run knows which loss the checkpoint on disk has to be beaten by (see
    :func:`kidney_lab.runs.checkpoint_record`); ``best`` is that loss.
    """

    def __init__(self, path: str | os.PathLike[str], best: float = math.inf) -> None:
        super().__init__()
        self.path = Path(path)
        self.best = best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get("val_loss")
        if value is None or not math.isfinite(float(value)) or float(value) >= self.best:
            return
        self.best = float(value)
        save_atomically(self.model, self.path)
        saved = self.path.stat()
        record = {"epoch": epoch + 1, **{key: float(item) for key, item in (logs or {}).items()}}
        runs.update_run_info(
            self.path.parent, checkpoint={**record, "bytes": saved.st_size, "mtime_ns": saved.st_mtime_ns}
        )


def save_atomically(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """Save ``model`` to ``path`` through a temporary file in its folder.

    A ``.weights.h5`` path gets the weights only, any other (``.keras``) the model for inference:
    its architecture and weights without the optimizer's state (Adam's two moments per weight
    would triple ResNet50's file). Resuming reads the optimizer from the ``backup/`` folder of
    ``keras.callbacks.BackupAndRestore``, never from ``model.keras``, and the model is loaded
    with ``compile=False``.
    """
    destination = Path(path)
    weights_only = destination.name.endswith(_WEIGHTS_SUFFIX)
    suffix = _WEIGHTS_SUFFIX if weights_only else destination.suffix
    # Keras picks the format from the suffix, so the temporary name keeps it.
    stem = destination.name[: -len(suffix)]
    temporary = destination.with_name(f".{stem}.{os.getpid()}.tmp{suffix}")
    try:
        if weights_only:
            model.save_weights(temporary)
        else:
            optimizer = getattr(model, "optimizer", None)
            model.optimizer = None
            try:
                model.save(temporary)
            finally:
                model.optimizer = optimizer
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def repair_backup(folder: str | os.PathLike[str]) -> str | None:
    """Make a ``keras.callbacks.BackupAndRestore`` folder loadable after a kill during a backup.

    Keras writes its state in place. It falls back to the previous copy (``double_checkpoint``)
    only when the latest weights fail to load, and only if a previous copy exists, so a process
    killed while writing the first epoch's backup, or its small metadata file, would make every
    later resume fail. Here the latest state is checked whole (metadata readable, every weight
    readable); if it is not, the previous state replaces it, and when there is none the folder
    is removed, so that the phase starts again: none of its epochs had been backed up.

    Returns:
        What was done (for the run's log), or None when the folder is whole or absent.
    """
    base = Path(folder)
    latest = [base / name for name in _BACKUP_FILES]
    if not base.is_dir() or _whole_backup(*latest):
        return None
    previous = [path.with_name(path.name + _PREVIOUS_SUFFIX) for path in latest]
    if _whole_backup(*previous):
        for source, target in zip(previous, latest):
            shutil.copyfile(source, target)
        return "the last backup was cut short; resuming from the one before it"
    shutil.rmtree(base)
    return "the only backup was cut short; the phase starts again"


def _whole_backup(weights: Path, metadata: Path) -> bool:
    """Whether a backed-up state reads completely: its epoch number and every weight array."""

    def read_array(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            item[()]  # Reading every array is what finds a file cut short.

    try:
        epoch = json.loads(metadata.read_text(encoding="utf-8")).get("epoch")
        with h5py.File(weights, "r") as store:
            store.visititems(read_array)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(epoch, int)


class StatusReporter(keras.callbacks.Callback):
    """Writes the live state of training to status.json and stops on cancellation.

    The status holds the phase, epoch and step of the total, the running loss and accuracy of
    the epoch, training images per second, an estimate of the seconds left of this phase, and
    (from :func:`kidney_lab.runs.write_status`) the pid and a heartbeat; ``listener`` gets each
    status written. A cancelled :class:`~kidney_lab.training.jobs.CancelToken` stops training
    after the current batch by raising :class:`~kidney_lab.training.jobs.Cancelled`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        phase: str,
        epochs: int,
        steps_per_epoch: int,
        batch_size: int,
        base: dict[str, Any],
        token: jobs.CancelToken | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.phase = phase
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.batch_size = batch_size
        self.base = base
        self.token = token
        self.listener = listener
        self._epoch = 0
        self._epoch_start = time.perf_counter()
        self._last_write = 0.0
        self._rate: float | None = None
        self._last_epoch_logs: dict[str, float] = {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        self._write(step=0, logs=None, force=True)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = batch + 1
        elapsed = time.perf_counter() - self._epoch_start
        # The first batch carries tracing time; the rate counts from the second one on.
        if step > 1 and elapsed > 0:
            self._rate = step * self.batch_size / elapsed
        self._write(step=step, logs=logs, force=False)
        if self.token is not None:
            # Raising (rather than setting stop_training) leaves the unfinished epoch out of
            # the history, the checkpoint and the backup, so a resume trains it again.
            self.token.raise_if_cancelled()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._last_epoch_logs = {key: float(value) for key, value in (logs or {}).items()}
        self._write(step=self.steps_per_epoch, logs=logs, force=True, finished_epoch=epoch + 1)

    def _write(
        self,
        step: int,
        logs: dict[str, Any] | None,
        force: bool,
        finished_epoch: int | None = None,
    ) -> None:
        now = time.perf_counter()
        if not force and now - self._last_write < STATUS_INTERVAL_SECONDS:
            return
        self._last_write = now
        status = dict(self.base)
        status.update(
            {
                "state": runs.RUNNING,
                "phase": self.phase,
                "epoch": self._epoch + 1,
                "epochs": self.epochs,
                "step": step,
                "steps": self.steps_per_epoch,
                "images_per_second": self._rate,
                "eta_seconds": self._eta(step),
                "last_epoch": self._last_epoch_logs or None,
            }
        )
        if finished_epoch is not None:
            status["epochs_finished"] = finished_epoch
        if logs:
            status["loss"] = _finite(logs.get("loss"))
            status["accuracy"] = _finite(logs.get("accuracy"))
        written = runs.write_status(self.run_dir, status)
        if self.listener is not None:
            self.listener(written)

    def _eta(self, step: int) -> float | None:
        if not self._rate:
            return None
        steps_left = (self.epochs - self._epoch - 1) * self.steps_per_epoch + (
            self.steps_per_epoch - step
        )
        return steps_left * self.batch_size / self._rate


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
