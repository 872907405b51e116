"""Predict a run's test images, or any folder in the Kaggle layout, and store what it scores.

:func:`evaluate` writes the two files of the run-folder contract (see DESIGN.md):
``predictions.csv`` (one row per image) and ``metrics.json`` (everything derived from it, plus
facts about the model and its training). The run's own test split goes to the run folder; an
external folder goes to ``<run>/external/<fingerprint>/`` (see
:func:`kidney_lab.runs.evaluation_folder`), so the run's test results are never overwritten.

Images are predicted in a fixed order and every prediction is stored next to its own path and
true label, so the metrics cannot be computed from predictions and labels that do not belong
to each other. Each row also carries the image's near-duplicate cluster (roughly its CT series):
for the run's own test split the one of the split manifest, for an external folder the one the
audit (:mod:`kidney_lab.data.audit`, as ``data audit`` runs it) finds on that folder, so that the
intervals resample series (see :func:`kidney_lab.evaluation.stats.metrics_with_intervals`).
Everything is computed before anything is written, so a failure leaves the
stored files as they were.

A run with an out-of-distribution detector gets its pooled features from the same forward pass
as its probabilities (:func:`predict_with_features`), and each row its OOD score and flag; a run
with validation predictions gets its temperature fitted on them and its before/after figures
(see :mod:`kidney_lab.evaluation.trust`). :func:`fit_trust` writes those two files for a run
(training calls it when it ends; ``python -m kidney_lab fit-ood`` for older runs).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data import audit as audit_module
from kidney_lab.data import classes
from kidney_lab.data import discover
from kidney_lab.data import pipeline
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import calibration
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.evaluation import trust
from kidney_lab.models import builders
from kidney_lab.models import ood
from kidney_lab.models import registry

EVALUATION_BATCH_SIZE = 32
# Inference time is the median of this many warm calls, at each of these batch sizes.
TIMING_REPEATS = 5
TIMING_BATCH_SIZES = (1, 32)
# What run.json must say to evaluate the run's own test split.
_TEST_SPLIT_FIELDS = ("model", "image_size", "split_id", "workspace", "data_root")


def predict_frame(
    model: keras.Model, frame: pd.DataFrame, image_size: int, batch_size: int = EVALUATION_BATCH_SIZE
) -> pd.DataFrame:
    """Predict every image of ``frame`` (columns ``path``, ``label``, optionally ``cluster``) in order.

    Returns:
        A predictions table (see :mod:`kidney_lab.evaluation.metrics`) with one row per input
        row, in the input's order, and the ``cluster`` column of ``frame`` when it has one.
    """
    return _predict(model, frame, image_size, batch_size, with_features=False)[0]


def predict_with_features(
    model: keras.Model, frame: pd.DataFrame, image_size: int, batch_size: int = EVALUATION_BATCH_SIZE,
    layers: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`predict_frame` and the features of the same images, from one forward pass each batch.

    Args:
        layers: earlier layers whose mean-pooled activations precede the head's features (see
            :func:`kidney_lab.models.ood.feature_tensor`).

    Returns:
        The predictions table and float64 features ``(images, features)`` in its row order.

    Raises:
        kidney_lab.models.ood.OODError: the model has no kidney_lab head or no such layer.
    """
    table, features = _predict(model, frame, image_size, batch_size, with_features=True, layers=layers)
    return table, features


def _predict(
    model: keras.Model, frame: pd.DataFrame, image_size: int, batch_size: int, with_features: bool,
    layers: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, np.ndarray | None]:
    dataset = pipeline.make_dataset(
        frame, image_size, batch_size=batch_size, training=False, cache=False, with_paths=True
    )
    if with_features:
        both = ood.feature_model(model, layers)
        # One graph for every batch (the last, smaller one relaxes its shape instead of retracing).
        forward = tf.function(lambda images: both(images, training=False), reduce_retracing=True)
    paths: list[str] = []
    chunks: list[np.ndarray] = []
    feature_chunks: list[np.ndarray] = []
    for images, _, batch_paths in dataset:
        if with_features:
            outputs, features = forward(images)
            feature_chunks.append(np.asarray(features, dtype=np.float64))
        else:
            outputs = model.predict_on_batch(images)
        chunks.append(np.asarray(outputs, dtype=np.float64))
        paths.extend(path.decode("utf-8") for path in batch_paths.numpy())
    probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(classes.CLASS_NAMES)))
    by_path = dict(zip(frame["path"].astype(str), frame["label"].astype(str)))
    table = pd.DataFrame(
        {
            "path": paths,
            "true_label": [by_path[path] for path in paths],
            "predicted_label": [classes.CLASS_NAMES[index] for index in probabilities.argmax(axis=1)],
        }
    )
    for index, column in enumerate(metrics_module.probability_columns()):
        table[column] = probabilities[:, index]
    if metrics_module.CLUSTER_COLUMN in frame.columns:
        clusters = dict(zip(frame["path"].astype(str), frame[metrics_module.CLUSTER_COLUMN]))
        table[metrics_module.CLUSTER_COLUMN] = [clusters[path] for path in paths]
    if not with_features:
        return table, None
    return table, np.concatenate(feature_chunks) if feature_chunks else np.zeros((0, 0))


def evaluate(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    workspace: str | os.PathLike[str] | None = None,
    model: keras.Model | None = None,
) -> dict[str, Any]:
    """Predict the run's test split, or the folder ``data``, and store predictions and metrics.

    Args:
        run: a run folder, or a run id looked up in ``workspace``.
        data: None for the run's own test split (stored in the run folder); a dataset folder in
            the Kaggle layout (or a folder above it) to evaluate every usable image in it
            (stored under ``<run>/external/<fingerprint>/``).
        workspace: where a run id is looked up (default: the default workspace).
        model: the loaded model, to skip loading it again; by default ``model.keras`` is loaded
            with ``safe_mode=True``.

    Returns:
        The metrics that were stored: those of :func:`stats.metrics_with_intervals` (intervals
        over clusters except on a random split, clusters per class, the classes with few
        clusters), plus ``run_id``, ``model``, ``display_name``, ``evaluated_on`` (``"test"`` or the
        fingerprint), ``split_kind`` (``"random"``, ``"grouped"`` or ``"external"``), ``cv_id``
        and ``fold`` (of a cross-validation fold's split; ``None`` otherwise), ``data``,
        ``fingerprint``, ``test_with_duplicate_in_train`` (``None`` with ``duplicate_check``
        saying why when it cannot be counted), model facts (``parameters``, ``model_bytes``,
        ``image_size``, ``ms_per_image_batch_1``, ``ms_per_image_batch_32``), training facts
        (``train_seconds``, ``epochs``, ``kept_epoch`` with the train and validation accuracy
        and loss of the epoch of lowest validation loss), ``ood_flagged_share`` and
        ``ood_threshold`` (None when the run has no OOD detector; with one, the predictions
        carry ``ood_score`` and ``ood_flagged`` per image), ``calibration`` (the reliability
        bins of :func:`kidney_lab.evaluation.metrics.reliability` and, when the run has a
        calibration, the before/after figures of
        :func:`kidney_lab.evaluation.trust.calibration_figures` on these images: ``temperature``,
        ``fitted_on``, ``nll_before``, ...), ``predictions`` and ``metrics`` (absolute paths of
        the stored files). Evaluating the test split of a run with validation predictions also
        (re)writes its ``calibration.json``.

    Raises:
        kidney_lab.runs.RunNotFoundError: no run there.
        kidney_lab.runs.RunBusyError: the run is still training in another process.
        kidney_lab.models.registry.ModelLoadError: no usable model file.
        kidney_lab.errors.DatasetError: ``data`` is not a usable dataset, or has a class folder
            the model does not know; the run's test images are missing.
        kidney_lab.errors.SplitError: the run's split cannot be read.
        store.EvaluationError: run.json lacks what evaluation needs, or its class list is not
            the one kidney_lab predicts.
        kidney_lab.models.ood.OODError, kidney_lab.evaluation.calibration.CalibrationError,
        kidney_lab.evaluation.metrics.PredictionsError: the run's detector, calibration or
            validation predictions are damaged (fit them again with ``fit-ood``).
    """
    folder, record = _usable_run(run, workspace, "evaluate")
    info = record.info
    _check_run_info(info, ("model", "image_size") if data is not None else _TEST_SPLIT_FIELDS)
    model_file = runs.model_path(folder)
    image_size = int(info.image_size)
    if data is None:
        frame, context = _test_split(info)
    else:
        frame, context = _external_folder(folder, info, data)
    detector = trust.read_detector(folder)
    validation = trust.read_validation_predictions(folder) if data is None else None
    stored_calibration = trust.read_calibration(folder) if validation is None else None
    if model is None:
        model = load_kept_model(folder, info)
    started = time.perf_counter()
    if detector is None:
        table = predict_frame(model, frame, image_size)
    else:
        table, features = predict_with_features(model, frame, image_size, layers=detector.feature_layers)
        table = trust.add_ood_columns(table, detector, features)
    seconds = time.perf_counter() - started

    result = stats.metrics_with_intervals(table, context["split_kind"])
    # The test split's calibration is fitted on the validation predictions, whenever they exist.
    report = None if validation is None else calibration.calibration_report(validation, table)
    fitted = report or stored_calibration
    result.update(trust.ood_summary(table, detector))
    # metrics.json's calibration (the reliability bins) gains the before/after figures.
    result["calibration"].update(trust.calibration_figures(table, None if fitted is None else fitted["temperature"]) or {})
    spec = registry.get_spec(info.model)
    result.update(
        {
            "run_id": record.run_id,
            "model": spec.name,
            "display_name": spec.display_name,
            "study_id": info.study_id,
            **context,
            "evaluated": fileio.now_iso("seconds"),
            "prediction_seconds": round(seconds, 3),
            **_model_facts(model, model_file, image_size),
            **_training_facts(folder, info),
        }
    )
    predictions_file = runs.predictions_path(folder, context["evaluated_on"])
    metrics_file = runs.metrics_path(folder, context["evaluated_on"])
    result["predictions"] = str(predictions_file.absolute())
    result["metrics"] = str(metrics_file.absolute())
    with fileio.atomic_path(predictions_file) as temporary:
        table.to_csv(temporary, index=False)
    fileio.atomic_write_json(metrics_file, result)
    if report is not None:
        fileio.atomic_write_text(runs.calibration_path(folder), calibration.to_json(report))
    return result


def evaluate_run(run_dir: str | os.PathLike[str], model: keras.Model | None = None) -> dict[str, Any]:
    """Evaluate a run on its own test split (what training does when it ends); see :func:`evaluate`."""
    return evaluate(run_dir, model=model)


def load_kept_model(run_dir: str | os.PathLike[str], info: runs.RunInfo | None = None) -> keras.Model:
    """The run's ``model.keras``, loaded with ``safe_mode=True`` and checked against run.json.

    Raises:
        kidney_lab.models.registry.ModelLoadError: no usable model file.
    """
    info = info or runs.read_info(run_dir)
    model_file = runs.model_path(run_dir)
    if not model_file.is_file():
        raise registry.ModelLoadError(
            f"Run {Path(run_dir).name} has no {runs.MODEL_FILE} (its training did not keep a "
            "checkpoint); train it again."
        )
    return builders.load_model(model_file, model_name=info.model, image_size=int(info.image_size))


def fit_trust(
    run: str | os.PathLike[str],
    *,
    workspace: str | os.PathLike[str] | None = None,
    model: keras.Model | None = None,
    percentile: float = ood.DEFAULT_PERCENTILE,
) -> dict[str, Any]:
    """Predict the run's validation images and fit its OOD detector on its training images.

    One pass over the training and validation images of the run's split, at the model's input
    size, without augmentation: the validation images' predictions and features, the training
    images' features (the mean-pooled activations of the registry's ``ood_layers`` and the
    head's input; a :class:`kidney_lab.models.ood.LayeredDetector` models each). Writes ``val_predictions.csv`` (with the OOD columns) and
    ``ood_detector.json`` (threshold: the ``percentile`` of the validation scores); see
    :mod:`kidney_lab.evaluation.trust`. Evaluating the test split afterwards writes
    ``calibration.json``.

    Args:
        run: a run folder, or a run id looked up in ``workspace``.
        workspace: where a run id is looked up (default: the default workspace).
        model: the loaded model, to skip loading it again.
        percentile: the percentile of the validation scores that sets the threshold.

    Returns:
        ``run_id``, ``training_images``, ``validation_images``, ``threshold``, ``percentile``,
        ``validation_flagged_share``, ``seconds`` (wall time of the pass and the fit),
        ``validation_predictions`` and ``detector`` (absolute paths).

    Raises:
        kidney_lab.runs.RunNotFoundError: no run there.
        kidney_lab.runs.RunBusyError: the run is still training in another process.
        kidney_lab.models.registry.ModelLoadError: no usable model file.
        kidney_lab.errors.SplitError: the run's split cannot be read or lacks training or
            validation images; kidney_lab.errors.DatasetError: its images are missing.
        store.EvaluationError: run.json lacks what is needed, or other classes.
        kidney_lab.models.ood.OODError: the model has no kidney_lab head, or the features cannot
            be fitted.
    """
    folder, record = _usable_run(run, workspace, "fit an OOD detector for")
    info = record.info
    _check_run_info(info, _TEST_SPLIT_FIELDS)
    data_split = split_module.load_split(info.workspace, info.split_id, root=info.data_root)
    training, validation = _subset_rows(data_split, "train"), _subset_rows(data_split, "val")
    if model is None:
        model = load_kept_model(folder, info)
    started = time.perf_counter()
    image_size = int(info.image_size)
    layers = registry.get_spec(info.model).ood_layers
    table, validation_features = predict_with_features(model, validation, image_size, layers=layers)
    _, training_features = predict_with_features(model, training, image_size, layers=layers)
    detector = ood.fit_layered(
        training_features, training["label"].astype(str).tolist(), validation_features,
        segments=(*layers, ood.HEAD_SEGMENT), sizes=ood.segment_sizes(model, layers), percentile=percentile,
    )
    table = trust.add_ood_columns(table, detector, validation_features)
    seconds = time.perf_counter() - started
    predictions_file, detector_file = runs.validation_predictions_path(folder), runs.detector_path(folder)
    with fileio.atomic_path(predictions_file) as temporary:
        table.to_csv(temporary, index=False)
    fileio.atomic_write_text(detector_file, detector.to_json())
    return {
        "run_id": record.run_id,
        "training_images": len(training),
        "validation_images": len(validation),
        "threshold": detector.threshold,
        "percentile": detector.percentile,
        "validation_flagged_share": trust.flagged_share(table),
        "seconds": round(seconds, 3),
        "validation_predictions": str(predictions_file.absolute()),
        "detector": str(detector_file.absolute()),
    }


def fit_ood(
    run: str | os.PathLike[str], *, workspace: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``python -m kidney_lab fit-ood`` does: :func:`fit_trust`, then :func:`evaluate` of the
    test split (which writes ``calibration.json``), with the model loaded once.

    Returns:
        ``(fitted, evaluation)``: :func:`fit_trust`'s result with ``calibration`` (the absolute
        path of ``calibration.json``) added, and :func:`evaluate`'s.

    Raises:
        everything :func:`fit_trust` and :func:`evaluate` raise.
    """
    folder, record = _usable_run(run, workspace, "fit an OOD detector for")
    model = load_kept_model(folder, record.info)
    fitted = fit_trust(folder, model=model)
    evaluation = evaluate(folder, model=model)
    return {**fitted, "calibration": str(runs.calibration_path(folder).absolute())}, evaluation


def _usable_run(
    run: str | os.PathLike[str], workspace: str | os.PathLike[str] | None, doing: str
) -> tuple[Path, runs.RunRecord]:
    """The folder and record of a run that is readable, not training in another process, and has a model.

    Raises:
        kidney_lab.runs.RunNotFoundError, kidney_lab.runs.RunBusyError,
        kidney_lab.models.registry.ModelLoadError: as :func:`evaluate` says.
    """
    folder = runs.resolve_run(run, workspace)
    record = runs.read_run(folder)
    if record.state == runs.BROKEN:
        raise runs.RunNotFoundError(f"Run folder {folder} cannot be read: {record.problem}.")
    if record.is_active and record.status.get("pid") != os.getpid():
        raise runs.RunBusyError(
            f"Run {record.run_id} is still {record.state} (process {record.status.get('pid')}); "
            f"{doing} it when training has finished."
        )
    if not runs.model_path(folder).is_file():
        raise registry.ModelLoadError(
            f"Run {record.run_id} has no {runs.MODEL_FILE} (its training did not keep a "
            f"checkpoint); train it again before you {doing} it."
        )
    return folder, record


def _check_run_info(info: runs.RunInfo, fields: tuple[str, ...]) -> None:
    """Refuse a run.json without the fields evaluation needs, or with other classes."""
    missing = [field for field in fields if getattr(info, field) is None]
    if missing:
        raise store.EvaluationError(
            f"The run.json of run {info.run_id} lacks {', '.join(missing)}; it was not "
            "written by kidney_lab's training, so the run cannot be evaluated."
        )
    stored = info.class_names
    if stored is not None and list(stored) != list(classes.CLASS_NAMES):
        raise store.EvaluationError(
            f"Run {info.run_id} predicts the classes {', '.join(map(str, stored))}, but "
            f"kidney_lab evaluates {', '.join(classes.CLASS_NAMES)} in that order; its "
            "predictions cannot be scored against these labels."
        )


def _test_split(info: runs.RunInfo) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The run's test rows and what the metrics say about them."""
    data_split = split_module.load_split(info.workspace, info.split_id, root=info.data_root)
    test = _subset_rows(data_split, "test")
    leakage = data_split.leakage("test")
    return test, {
        "evaluated_on": runs.TEST_SOURCE,
        "split_kind": data_split.strategy,
        "split_id": data_split.split_id,
        "split_strategy": data_split.strategy,
        "cv_id": data_split.cv_id,
        "fold": data_split.fold,
        "data": str(data_split.root),
        "fingerprint": data_split.fingerprint,
        "test_with_duplicate_in_train": leakage["exact_or_near"],
        "test_with_exact_duplicate_in_train": leakage["exact"],
        "duplicate_check": (
            f"test images with the same MD5 as, or in one near-duplicate cluster (perceptual hash "
            f"within {data_split.threshold} bits) with, a training image"
        ),
    }


def _subset_rows(data_split: split_module.Split, subset: str) -> pd.DataFrame:
    """The rows of one subset of a split (``"train"``, ``"val"`` or ``"test"``), every image present.

    Raises:
        kidney_lab.errors.SplitError: the subset is empty.
        kidney_lab.errors.DatasetError: some of its images are missing.
    """
    rows = data_split.subset(subset)
    words = {"train": "training", "val": "validation", "test": "test"}[subset]
    if rows.empty:
        raise errors.SplitError(f"Split {data_split.split_id} has no {words} images.")
    missing = [path for path in rows["path"] if not os.path.isfile(path)]
    if missing:
        raise errors.DatasetError(
            f"{len(missing)} of the {len(rows)} {words} images of split {data_split.split_id} are "
            f"missing (such as {missing[0]}); the dataset at {data_split.root} moved or changed."
        )
    return rows


def _external_folder(
    folder: Path, info: runs.RunInfo, data: str | os.PathLike[str]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every usable image of an external dataset folder and what the metrics say about it."""
    cache = _scan_cache(folder)
    scan = discover.scan_dataset(data, cache=cache)
    unknown = _unknown_class_folders(scan)
    if unknown:
        raise errors.DatasetError(
            f"{scan.root} has the folder(s) {', '.join(unknown)} holding images of a class the "
            f"model does not know; it predicts only {', '.join(classes.CLASS_NAMES)}. Move those "
            "folders out, or evaluate a folder with these classes only."
        )
    overlap, reason = _training_overlap(scan, info, cache)
    frame = audit_module.audit_dataset(scan).table[["path", "label", "format", "mode", metrics_module.CLUSTER_COLUMN]]
    return frame, {
        "evaluated_on": scan.fingerprint,
        "split_kind": store.EXTERNAL_KIND,
        "split_id": info.split_id,
        "cv_id": None,
        "fold": None,
        "data": str(scan.root),
        "fingerprint": scan.fingerprint,
        "same_dataset_as_training": scan.fingerprint == info.dataset_fingerprint,
        "skipped_images": scan.skipped[["path", "reason"]].to_dict(orient="records"),
        "test_with_duplicate_in_train": overlap,
        "duplicate_check": reason,
    }


def _scan_cache(folder: Path) -> Path | None:
    """The scan cache of the workspace the run lives in, if there is one."""
    cache = folder.parent / workspace_module.CACHE_FOLDER
    return cache if cache.is_dir() else None


def _unknown_class_folders(scan: discover.DatasetScan) -> list[str]:
    """Sub-folders of the dataset root that hold images but are not a class folder."""
    known = {path.resolve() for path in scan.class_folders.values()}
    unknown = []
    for child in sorted(scan.root.iterdir()):
        if child.name.startswith(".") or not child.is_dir() or child.resolve() in known:
            continue
        if any(
            path.suffix.lower() in discover.IMAGE_EXTENSIONS
            for path in child.rglob("*")
            if path.is_file()
        ):
            unknown.append(child.name)
    return unknown


def _training_overlap(
    scan: discover.DatasetScan, info: runs.RunInfo, cache: Path | None
) -> tuple[int | None, str]:
    """How many images of ``scan`` duplicate a training image of the run, and how that was found.

    An image counts when its MD5 equals a training image's or when it falls into one
    near-duplicate cluster with one (the audit's perceptual hash and threshold, single
    linkage over the training and the external images together), which is how a split counts
    its test images with a duplicate in train.
    """
    if info.workspace is None or info.split_id is None:
        return None, "not counted: the run's split cannot be read (run.json lacks workspace or split_id)"
    try:
        data_split = split_module.load_split(info.workspace, info.split_id, root=info.data_root)
    except errors.SplitError as error:
        return None, f"not counted: the run's split cannot be read ({error})"
    train = data_split.subset("train")
    exact = scan.table["md5"].isin(set(train["md5"])).to_numpy()
    try:
        training_scan = discover.scan_dataset(data_split.root, cache=cache)
    except errors.DatasetError as error:
        return None, (
            f"not counted: {int(exact.sum())} images have the MD5 of a training image, but the "
            f"training images cannot be read for near duplicates ({error})"
        )
    hashes = training_scan.table.set_index("path")["phash"]
    train_hashes = hashes.reindex(train["path"]).dropna().tolist()
    external_hashes = scan.table["phash"].tolist()
    bits = audit_module.hashes_to_bits(train_hashes + external_hashes)
    clusters = audit_module.cluster_hashes(bits, data_split.threshold)
    train_clusters = set(clusters[: len(train_hashes)].tolist())
    near = np.isin(clusters[len(train_hashes):], list(train_clusters))
    return int((exact | near).sum()), (
        f"images with the MD5 of one of the run's {len(train)} training images, or in one "
        f"near-duplicate cluster (perceptual hash within {data_split.threshold} bits) with one"
    )


def _model_facts(model: keras.Model, model_file: Path, image_size: int) -> dict[str, Any]:
    """Parameters, file size and warm inference time per image of the model."""
    facts: dict[str, Any] = {
        "parameters": int(model.count_params()),
        "model_bytes": model_file.stat().st_size,
        "image_size": image_size,
        "timing_device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
        "timing_repeats": TIMING_REPEATS,
    }
    for batch in TIMING_BATCH_SIZES:
        facts[f"ms_per_image_batch_{batch}"] = round(
            _inference_seconds(model, image_size, batch) * 1000.0 / batch, 3
        )
    return facts


def _inference_seconds(model: keras.Model, image_size: int, batch: int) -> float:
    """Median wall time of a warm ``predict_on_batch`` of ``batch`` images (seconds)."""
    images = np.full((batch, image_size, image_size, 3), 127.0, dtype=np.float32)
    model.predict_on_batch(images)
    times = []
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        model.predict_on_batch(images)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _training_facts(folder: Path, info: runs.RunInfo) -> dict[str, Any]:
    """Training time, epochs and the kept epoch (lowest validation loss) from the run's files."""
    history = runs.read_history(runs.history_path(folder))
    # The checkpoint's own record names the epoch model.keras holds; history.csv can disagree
    # after a kill between saving the checkpoint and writing the history row.
    kept = runs.checkpoint_record(folder)
    rule = "the epoch BestCheckpoint recorded for this model.keras (lowest validation loss)"
    if kept is None:
        scored = [row for row in history if _finite(row.get("val_loss"))]
        kept = min(scored, key=lambda row: row["val_loss"]) if scored else None
        rule = "the epoch with the lowest validation loss in history.csv (its checkpoint is model.keras)"
    return {
        "train_seconds": info.train_seconds,
        "epochs": info.epochs_trained if info.epochs_trained is not None else (len(history) or None),
        "weights": info.weights,
        "kept_epoch": None if kept is None else {
            "epoch": kept.get("epoch"),
            "phase": kept.get("phase"),
            "train_accuracy": kept.get("accuracy"),
            "train_loss": kept.get("loss"),
            "val_accuracy": kept.get("val_accuracy"),
            "val_loss": kept.get("val_loss"),
            "rule": rule,
        },
    }


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)
