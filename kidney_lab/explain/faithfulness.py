"""Is a heat map faithful? Measured on held-out images, stored for the leaderboard.

A heat map that points anywhere is worse than none, so every run can be scored:

- On phantoms, whose lesion masks are ground truth (:func:`kidney_lab.data.phantom.mask_path_for`),
  for the lesion classes Cyst, Stone and Tumor (Normal has no lesion):

  - pointing game (Zhang et al., 2016): a hit when the map's maximum lies inside the lesion
    mask dilated by :data:`POINTING_TOLERANCE` of the scan's shorter side (5%: about 5 pixels at
    96 px, 11 at 224; Zhang et al. used 15 pixels at about 224). A flat map has no maximum and
    counts as a miss. Chance level is the dilated mask's share of the image, stored as
    ``baselines.pointing_game``;
  - energy in mask: the share of the map's sum (before scaling; every method's map is ReLU'd,
    so non-negative) that lies inside the undilated mask; a map that is zero everywhere scores
    0. A uniform map would score the mask's area share, stored as ``baselines.energy_in_mask``.

- On any labelled data, deletion and insertion curves (Petsiuk et al., 2018): in the model's
  input, the scan's pixels (never the padding) are ranked by the heat map resized to the input,
  most salient first (ties in random order). Deletion replaces the top 0, 1/N, ..., N/N of them
  with a blurred copy of the input (Gaussian, sigma :data:`BLUR_SIGMA` of the input side) and
  follows the target probability; insertion starts from the blurred copy and puts the original
  pixels back in the same order. The area under each curve (x: fraction of pixels, y:
  probability) is compared with the same curves for a random order of the same pixels: a
  faithful map has a deletion AUC below the random one and an insertion AUC above it.

The class explained is each image's true class, so the scores say whether the map for a class
points at that class's evidence. Everything is computed from the images and the saved model;
``evaluate_faithfulness`` writes ``<run>/faithfulness.json`` atomically (for an external
folder, ``<run>/external/<fingerprint>/faithfulness.json``, so the test split's file is never
replaced by another data set's).

:func:`randomization_check` is the sanity check of Adebayo et al. (2018): the maps of the
trained model must differ clearly from those of the same architecture with random weights. With
the sanity check on, the random-weights model also plays the pointing game on every lesion
image (``random_weights_pointing_game``): a map that finds lesions without what the model
learned (an edge detector, say) scores as well there as the trained one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import pandas as pd
import scipy.ndimage
import scipy.stats
from PIL import Image

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import discover
from kidney_lab.data import phantom
from kidney_lab.data import pipeline
from kidney_lab.data import split as split_module
from kidney_lab.data.scan import read_scan
from kidney_lab.explain import cam
from kidney_lab.models import builders

LESION_CLASSES: tuple[str, ...] = tuple(name for name in classes.CLASS_NAMES if name != "Normal")
# Pointing-game tolerance, as a fraction of the scan's shorter side.
POINTING_TOLERANCE = 0.05
# Deletion/insertion: steps of the curves and the blur (sigma as a fraction of the input side).
CURVE_STEPS = 20
BLUR_SIGMA = 0.05
DEFAULT_MAX_IMAGES = 200
# Images the randomisation check explains per method.
RANDOMIZATION_IMAGES = 16

Progress = Callable[[int, int], None]


def evaluate_faithfulness(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = ("gradcam",),
    max_images: int | None = DEFAULT_MAX_IMAGES,
    *,
    curves: bool = True,
    sanity_check: bool = True,
    steps: int = CURVE_STEPS,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score a run's heat maps and store the scores.

    Args:
        run_dir: a run folder or run id.
        data: a dataset folder (Kaggle layout); None uses the run's own test split.
        methods: methods to score (see :data:`kidney_lab.explain.cam.METHODS`).
        max_images: at most this many images, spread evenly over the classes (a seeded
            choice); None scores them all.
        curves: compute the deletion and insertion curves (the costly part: ``2 * (steps+1)``
            forward passes per image and method, and as many per image for the random order);
            without, their fields are null.
        sanity_check: run :func:`randomization_check` on up to :data:`RANDOMIZATION_IMAGES` of
            the images (spread over the list) and store each method's mean Spearman correlation
            as ``randomization_spearman``, and the pointing game and energy in mask of the
            random-weights model on every lesion image (``random_weights_pointing_game``,
            ``random_weights_energy_in_mask``); without, they are null.
        steps: points of each curve after its start.
        seed: seeds the choice of images and the random orders.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        What was written: ``run_id``, ``model``, ``data`` ("test" or the folder), ``fingerprint``,
        ``images``, ``methods`` (per method: ``pointing_game``, ``energy_in_mask`` (null without
        masks), ``deletion_auc``, ``insertion_auc``, ``random_deletion_auc``,
        ``random_insertion_auc``, ``randomization_spearman``, ``random_weights_pointing_game``,
        ``random_weights_energy_in_mask``, ``accuracy``, ``images``,
        ``seconds``, ``per_class``), plus
        ``baselines``, ``settings``, ``skipped``, ``created`` and ``path`` (the file).

    Raises:
        kidney_lab.errors.ConfigError: an unknown method, or max_images or steps below 1.
        kidney_lab.errors.SplitError: the run's split cannot be read.
        kidney_lab.errors.DatasetError: the data folder cannot be used.
        kidney_lab.models.registry.ModelLoadError: the run's model cannot be loaded.
    """
    started = time.perf_counter()
    chosen = list(dict.fromkeys(cam.check_method(method) for method in methods))
    if not chosen:
        raise errors.ConfigError(f"Name at least one method; choose from {', '.join(cam.method_names())}.")
    if max_images is not None and max_images < 1:
        raise errors.ConfigError(f"max_images must be at least 1; got {max_images}.")
    if steps < 1:
        raise errors.ConfigError(f"steps must be at least 1; got {steps}.")
    folder = runs.resolve_run(run_dir)
    info = runs.read_run(folder).info
    explainers = {method: cam.load_explainer(folder, method) for method in chosen}
    loaded = explainers[chosen[0]].loaded
    # The random-weights explainers are built (and traced) once, for the pointing game on every
    # image and for the rank correlation on a few.
    randomised = random_explainers(loaded, chosen, seed) if sanity_check else {}
    frame, data_label, fingerprint, destination = _images(folder, info, data)
    frame = choose_images(frame, max_images, seed)

    rows: dict[str, list[dict[str, Any]]] = {method: [] for method in chosen}
    baselines: list[dict[str, Any]] = []
    seconds = dict.fromkeys(chosen, 0.0)
    skipped: list[dict[str, str]] = []
    for number, (path, label) in enumerate(zip(frame["path"], frame["label"])):
        try:
            scan = read_scan(path)
        except errors.ScanReadError as error:
            skipped.append({"path": str(path), "reason": str(error)})
            continue
        image = _ImageCase(scan, label, loaded.image_size, _lesion_mask(path, label, scan.image.shape[:2]),
                           np.random.default_rng([seed, number]), steps if curves else 0)
        random_curves = image.curves(loaded, image.random_order()) if curves else (None, None)
        baselines.append(image.baselines())
        for method, explainer in explainers.items():
            begun = time.perf_counter()
            result = explainer.cam(image.pixels, classes.class_index(label))
            rows[method].append(image.score(loaded, result, random_curves))
            seconds[method] += time.perf_counter() - begun
            if method in randomised and image.mask is not None:
                other = randomised[method].cam(image.pixels, classes.class_index(label))
                pointing, energy = image.mask_scores(other)
                rows[method][-1].update(random_weights_pointing_game=pointing, random_weights_energy_in_mask=energy)
        if progress is not None:
            progress(number + 1, len(frame))

    sanity: dict[str, dict[str, Any]] = {}
    readable = frame[~frame["path"].astype(str).isin({row["path"] for row in skipped})]
    if sanity_check and len(readable):
        spread = np.unique(np.linspace(0, len(readable) - 1, RANDOMIZATION_IMAGES).astype(int))
        sanity = _randomization_check(folder, list(readable["path"].iloc[spread]), randomised)
    summaries = {method: _summary(rows[method], seconds[method]) for method in chosen}
    for method, summary in summaries.items():
        summary["randomization_spearman"] = sanity.get(method, {}).get("mean_spearman")
    report = {
        "run_id": folder.name,
        "model": info.model,
        "data": data_label,
        "fingerprint": fingerprint,
        "images": len(baselines),
        "methods": summaries,
        "baselines": _baselines(baselines),
        "settings": {
            "target": "true class",
            "pointing_tolerance": POINTING_TOLERANCE,
            "curve_steps": steps if curves else None,
            "blur_sigma": BLUR_SIGMA,
            "max_images": max_images,
            "seed": seed,
            "image_size": loaded.image_size,
            "randomization_images": min(RANDOMIZATION_IMAGES, len(readable)) if sanity_check else 0,
        },
        "skipped": skipped,
        "seconds": time.perf_counter() - started,
        "created": fileio.now_iso("seconds"),
    }
    fileio.atomic_write_json(destination, report)
    return dict(report, path=str(destination))


def choose_images(frame: pd.DataFrame, max_images: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_images`` rows, spread evenly over the labels (a seeded choice, per-label
    order kept); all rows when there are not more."""
    if max_images is None or len(frame) <= max_images:
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    queues = {
        label: list(rng.permutation(group.index.to_numpy()))
        for label, group in frame.groupby("label", sort=True)
    }
    picked: list[int] = []
    while len(picked) < max_images:
        for queue in queues.values():
            if queue and len(picked) < max_images:
                picked.append(queue.pop(0))
    return frame.loc[sorted(picked)].reset_index(drop=True)


def _images(
    folder: Path, info: runs.RunInfo, data: str | os.PathLike[str] | None
) -> tuple[pd.DataFrame, str, str, Path]:
    """The images to score, the data's label and fingerprint, and where the result goes."""
    if data is None:
        if not info.split_id or not info.workspace:
            raise errors.SplitError(f"Run {folder.name} names no split; pass a data folder instead.")
        data_split = split_module.load_split(info.workspace, info.split_id, root=info.data_root)
        test = data_split.subset("test")
        if test.empty:
            raise errors.SplitError(f"Split {info.split_id} has no test images.")
        return test[["path", "label"]], "test", data_split.fingerprint, runs.faithfulness_path(folder)
    scanned = discover.scan_dataset(data)
    destination = runs.faithfulness_path(folder, scanned.fingerprint)
    return scanned.table[["path", "label"]], str(scanned.root), scanned.fingerprint, destination


def _lesion_mask(path: str, label: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The phantom's lesion mask at the scan's size, or None (Normal, or no mask file)."""
    if label not in LESION_CLASSES:
        return None
    mask_file = phantom.mask_path_for(path)
    if mask_file is None:
        return None
    with Image.open(mask_file) as picture:
        mask = picture.convert("L")
        if mask.size != (shape[1], shape[0]):
            mask = mask.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        pixels = np.asarray(mask) > 127
    return pixels if pixels.any() else None


class _ImageCase:
    """One image's model input, blurred copy, mask and curves, shared by all methods."""

    def __init__(self, scan, label: str, image_size: int, mask: np.ndarray | None,
                 rng: np.random.Generator, steps: int) -> None:
        self.label = label
        self.target = classes.class_index(label)
        self.height, self.width = scan.image.shape[:2]
        self.image_size = image_size
        self.mask = mask
        self.rng = rng
        self.steps = steps
        self.pixels = pipeline.prepare_scan(scan.image, image_size)
        top, left, rows, columns = cam.content_box(self.height, self.width, image_size)
        content = np.zeros((image_size, image_size), bool)
        content[top:top + rows, left:left + columns] = True
        self.content = np.flatnonzero(content)
        grey = self.pixels[0, :, :, 0]
        blurred = scipy.ndimage.gaussian_filter(grey, sigma=BLUR_SIGMA * image_size)
        self.blurred = np.where(content, blurred, grey)
        if mask is not None:
            tolerance = max(1.0, POINTING_TOLERANCE * min(self.height, self.width))
            self.near = scipy.ndimage.distance_transform_edt(~mask) <= tolerance

    def random_order(self) -> np.ndarray:
        """The content pixels in random order."""
        return self.rng.permutation(self.content)

    def salient_order(self, heat: np.ndarray) -> np.ndarray:
        """The content pixels by decreasing heat (``heat`` at input size), ties in random order."""
        values = heat.ravel()[self.content]
        return self.content[np.lexsort((self.rng.random(len(values)), -values))]

    def curves(self, loaded: cam.LoadedRun, order: np.ndarray) -> tuple[float, float]:
        """Deletion and insertion AUC of the target probability for pixels taken in ``order``."""
        rank = np.full(self.image_size * self.image_size, np.inf)
        rank[order] = np.arange(len(order))
        counts = np.round(np.linspace(0, len(order), self.steps + 1))
        replaced = rank[None, :] < counts[:, None]
        original, blurred = self.pixels[0, :, :, 0].ravel(), self.blurred.ravel()
        deletion = np.where(replaced, blurred, original)
        insertion = np.where(replaced, original, blurred)
        grey = np.concatenate([deletion, insertion]).reshape(-1, self.image_size, self.image_size, 1)
        probabilities = loaded.predict(np.repeat(grey, 3, axis=-1).astype(np.float32))[:, self.target]
        fractions = counts / max(1, len(order))
        half = self.steps + 1
        return (float(np.trapezoid(probabilities[:half], fractions)),
                float(np.trapezoid(probabilities[half:], fractions)))

    def baselines(self) -> dict[str, Any]:
        """Chance levels of the pointing game and the energy share (None without a mask)."""
        if self.mask is None:
            return {"label": self.label, "pointing_game": None, "energy_in_mask": None}
        return {"label": self.label, "pointing_game": float(self.near.mean()),
                "energy_in_mask": float(self.mask.mean())}

    def mask_scores(self, result: cam.CamResult) -> tuple[float, float]:
        """Pointing game (1.0 or 0.0) and energy in mask of one map; the image has a mask."""
        heat = cam.grid_to_scan(result.grid, self.image_size, self.height, self.width)
        peak = float(heat.max())
        pointing = float(peak > float(heat.min()) and float(heat[self.near].max()) >= peak)
        total = float(heat.sum())
        return pointing, float(heat[self.mask].sum()) / total if total > 0 else 0.0

    def score(self, loaded: cam.LoadedRun, result: cam.CamResult,
              random_curves: tuple[float | None, float | None]) -> dict[str, Any]:
        """Every score of one method's map of this image."""
        row: dict[str, Any] = {
            "label": self.label,
            "correct": int(np.argmax(result.probabilities)) == self.target,
            "pointing_game": None,
            "energy_in_mask": None,
        }
        if self.mask is not None:
            row["pointing_game"], row["energy_in_mask"] = self.mask_scores(result)
        if self.steps:
            heat_input = cam.grid_to_input(result.grid, self.image_size)
            row["deletion_auc"], row["insertion_auc"] = self.curves(loaded, self.salient_order(heat_input))
            row["random_deletion_auc"], row["random_insertion_auc"] = random_curves
        return row


_CURVE_FIELDS = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
_RANDOM_WEIGHTS_FIELDS = ("random_weights_pointing_game", "random_weights_energy_in_mask")


def _mean(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [row[field] for row in rows if row.get(field) is not None]
    return float(np.mean(values)) if values else None


def _scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scores: dict[str, Any] = {
        "pointing_game": _mean(rows, "pointing_game"),
        "energy_in_mask": _mean(rows, "energy_in_mask"),
    }
    scores.update((field, _mean(rows, field)) for field in _CURVE_FIELDS)
    scores.update((field, _mean(rows, field)) for field in _RANDOM_WEIGHTS_FIELDS)
    scores["accuracy"] = float(np.mean([row["correct"] for row in rows])) if rows else None
    scores["images"] = len(rows)
    return scores


def _summary(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """A method's scores over all images (pointing game and energy over the lesion images with
    a mask), its time, and the same per class."""
    summary = _scores(rows)
    summary["seconds"] = seconds
    summary["per_class"] = {
        name: _scores([row for row in rows if row["label"] == name])
        for name in classes.CLASS_NAMES
        if any(row["label"] == name for row in rows)
    }
    return summary


def _baselines(rows: list[dict[str, Any]]) -> dict[str, Any]:
    baselines: dict[str, Any] = {
        "pointing_game": _mean(rows, "pointing_game"),
        "energy_in_mask": _mean(rows, "energy_in_mask"),
        "per_class": {},
    }
    for name in LESION_CLASSES:
        subset = [row for row in rows if row["label"] == name]
        if subset:
            baselines["per_class"][name] = {
                "pointing_game": _mean(subset, "pointing_game"),
                "energy_in_mask": _mean(subset, "energy_in_mask"),
            }
    return baselines


def randomization_check(
    run_dir: str | os.PathLike[str],
    images: Sequence[cam.ImageInput],
    methods: Sequence[str] = ("gradcam",),
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Model-randomisation sanity check (Adebayo et al., 2018).

    The trained model's heat maps are compared with those of the same architecture, at the same
    input size, with freshly initialised random weights (Keras' global generators seeded with
    ``seed``), explaining the same class (the trained model's prediction). If the maps were
    mostly an edge detector of the input they would stay alike; a faithful method's maps change.

    Returns:
        Per method ``{"images", "spearman": [rho per image], "mean_spearman", "flat"}``: the
        Spearman rank correlation of the two maps (at the scan's size) per image and its mean;
        an image where either map is flat has no correlation and is counted in ``flat``.
    """
    first = cam.load_explainer(run_dir, methods[0])
    return _randomization_check(run_dir, images, random_explainers(first.loaded, methods, seed))


def random_explainers(loaded: cam.LoadedRun, methods: Sequence[str], seed: int = 0) -> dict[str, cam.Explainer]:
    """Explainers, by method, of the same architecture at the same input size with fresh random
    weights (Keras' global generators seeded with ``seed``), sharing one model."""
    keras.utils.set_random_seed(seed)
    random_model = builders.create_model(loaded.spec.name, loaded.image_size, "none").model
    random_run = cam.LoadedRun(random_model, loaded.spec, loaded.image_size, f"{loaded.run_id}-random")
    chosen = [cam.get_method(method) for method in methods]
    return {method.name: method(random_run) for method in chosen}


def _randomization_check(
    run_dir: str | os.PathLike[str],
    images: Sequence[cam.ImageInput],
    explainers: dict[str, cam.Explainer],
) -> dict[str, dict[str, Any]]:
    scans = [cam.load_image(image) for image in images]
    checks: dict[str, dict[str, Any]] = {}
    for method, randomised in explainers.items():
        trained = cam.load_explainer(run_dir, method)
        correlations: list[float] = []
        flat = 0
        for scan in scans:
            one = trained.explain(scan)
            other = randomised.explain(scan, target=one.target)
            if one.raw_max <= one.raw_min or other.raw_max <= other.raw_min:
                flat += 1
                continue
            correlations.append(float(scipy.stats.spearmanr(one.heatmap.ravel(), other.heatmap.ravel()).statistic))
        checks[trained.method] = {
            "images": len(scans),
            "spearman": correlations,
            "mean_spearman": float(np.mean(correlations)) if correlations else None,
            "flat": flat,
        }
    return checks
