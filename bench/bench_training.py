"""Training images per second per model: the tf.data pipeline against in-memory input.

For each registry model (``kidney_lab.models.registry``; all five by default) at ``--img-size``
(96) and ``--batch-size`` (16), the model is built from random weights with
``builders.create_model(name, size, "none", batchnorm_momentum=0.9)`` and compiled as the
training engine compiles it on a CPU (Adam, categorical cross-entropy, accuracy,
``jit_compile=False``). Its training throughput is then measured, in the same process and on
the same images, fed two ways:

(1) pipeline: :func:`kidney_lab.data.pipeline.make_dataset` over a phantom dataset on disk
    (PNG files at the model size, written by :func:`kidney_lab.data.phantom.write_phantom_dataset`
    into a temporary folder), ``training=True`` with the default augmentation and
    ``cache=True``, as the training engine feeds a model. The first epoch decodes every file
    and fills the cache; it is timed and reported on its own. Every later epoch reads the cache
    (and still augments, shuffles and batches on the fly): these are the timed runs.
(2) in-memory: the same images, decoded beforehand by the same pipeline (no augmentation), as
    float32 NumPy arrays passed to ``model.fit(x, y, batch_size=...)`` (Keras shuffles them).

Every timed run is one ``model.fit`` call of one epoch of ``--steps`` steps (default: the full
batches of one pass over the dataset), with a callback that notes when each step ends.
Steady-state images/s leave out the first step of each call (which waits for the iterator to
start and, for the pipeline, for its shuffle buffer to fill from the cache), so they count only
steps during which input and training overlap; the time ``fit`` takes to return after its epoch
(destroying the iterator, which can block for seconds for Keras' autotuned array input) is
reported in one line, not counted. Before any timing, short ``fit`` calls on each input trace the training step,
so tracing is in no figure. The first, uncached epoch is timed from Keras' ``on_epoch_begin`` to
``on_epoch_end``, first step included, since that is where it decodes the files.

Figures are medians of ``--repeats`` runs (3). The runs alternate between the two inputs, and
the order within a round alternates too (pipeline first in odd rounds, in-memory first in even
ones), so load that drifts during the run falls on both; the ratio pipeline / in-memory is the
median of the per-round ratios.

Run from the repository root::

    python bench/bench_training.py [--models all] [--img-size 96] [--batch-size 16]
                                   [--per-class 64] [--steps N] [--repeats 3] [--json FILE]

A ratio near 1 means the pipeline keeps the model fed as well as arrays in memory do; below 1,
the time it costs (decoding nothing once cached, but shuffling, augmenting and batching on the
same cores as training) shows as lost training throughput.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # Sets up the environment and sys.path; import before TensorFlow.

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from kidney_lab import errors
from kidney_lab.data import phantom, pipeline
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.models import builders
from kidney_lab.models import registry

DEFAULT_IMAGE_SIZE = 96
DEFAULT_BATCH_SIZE = 16
DEFAULT_PER_CLASS = 64
DEFAULT_JSON = common.REPO_ROOT / "bench" / "out" / "training.json"
BATCHNORM_MOMENTUM = 0.9
SEED = 0
# Steps of the untimed fit calls that trace the training step for each input (and, for the
# arrays, touch their memory once).
WARMUP_STEPS = 2


class StepClock(keras.callbacks.Callback):
    """Notes when a one-epoch ``fit`` begins and ends its epoch, and when its steps end."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_begin = self.epoch_end = 0.0
        self.step_ends: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch_begin = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.step_ends.append(time.perf_counter())

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch_end = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class FitTiming:
    """One one-epoch ``model.fit`` call.

    Attributes:
        steps: Training steps run.
        images: Images trained on (the last batch of a whole pass may be short).
        batch_size: Images per full step.
        epoch: Seconds from ``on_epoch_begin`` to ``on_epoch_end`` (iterator start included).
        steady: Seconds from the end of the first step to the end of the last.
        teardown: Seconds ``fit`` took to return after the epoch ended (iterator destruction).
    """

    steps: int
    images: int
    batch_size: int
    epoch: float
    steady: float
    teardown: float

    @property
    def steady_images_per_second(self) -> float:
        """Images/s over the steps after the first one."""
        return (self.images - self.batch_size) / self.steady

    @property
    def epoch_images_per_second(self) -> float:
        """Images/s over the whole epoch, first step and iterator start included."""
        return self.images / self.epoch


def fit_timed(
    model: keras.Model, x: object, y: object = None, *, steps: int | None, batch_size: int,
    total_images: int | None = None,
) -> FitTiming:
    """Train ``model`` for one epoch of ``steps`` steps (None: the whole dataset) and time it.

    ``x`` is a batched ``tf.data.Dataset`` (``y`` None) or a NumPy array of images with the
    one-hot labels ``y``, batched here by Keras and shuffled. ``total_images`` is how many images
    a whole pass holds (the default for a dataset: its batches times ``batch_size``).
    """
    clock = StepClock()
    arrays = isinstance(x, np.ndarray)
    model.fit(
        x, y, batch_size=batch_size if arrays else None, epochs=1, steps_per_epoch=steps,
        shuffle=arrays, verbose=0, callbacks=[clock],
    )
    returned = time.perf_counter()
    ends = clock.step_ends
    if len(ends) < 2:
        raise RuntimeError(f"fit ran {len(ends)} step(s); at least 2 are needed to time a steady state.")
    images = len(ends) * batch_size
    if total_images is not None:
        images = min(images, total_images)
    return FitTiming(
        steps=len(ends), images=images, batch_size=batch_size, epoch=clock.epoch_end - clock.epoch_begin,
        steady=ends[-1] - ends[0], teardown=returned - clock.epoch_end,
    )


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """The measurements of one model.

    Attributes:
        name: Registry name.
        display_name: The name people use.
        parameters: Trainable and other weights, counted.
        build_seconds: Building and compiling the model.
        warmup_seconds: The untimed fit calls that trace the training step for both inputs.
        first_epoch: The pipeline's first epoch, decoding every file and filling the cache.
        pipeline: Timed runs fed by the cached pipeline, in the order they ran.
        memory: Timed runs fed by in-memory arrays, in the order they ran.
        pipeline_first: For each round, whether the pipeline ran first.
    """

    name: str
    display_name: str
    parameters: int
    build_seconds: float
    warmup_seconds: float
    first_epoch: FitTiming
    pipeline: tuple[FitTiming, ...]
    memory: tuple[FitTiming, ...]
    pipeline_first: tuple[bool, ...]

    @staticmethod
    def _median_rate(fits: tuple[FitTiming, ...]) -> float:
        return statistics.median(fit.steady_images_per_second for fit in fits)

    @property
    def pipeline_images_per_second(self) -> float:
        """Median steady-state images/s fed by the cached pipeline."""
        return self._median_rate(self.pipeline)

    @property
    def memory_images_per_second(self) -> float:
        """Median steady-state images/s fed by in-memory arrays."""
        return self._median_rate(self.memory)

    @property
    def ratio(self) -> float:
        """Median over rounds of (pipeline images/s) / (in-memory images/s)."""
        return statistics.median(
            ours.steady_images_per_second / memory.steady_images_per_second
            for ours, memory in zip(self.pipeline, self.memory)
        )

    @property
    def first_epoch_images_per_second(self) -> float:
        """Images/s of the whole first (uncached) epoch."""
        return self.first_epoch.epoch_images_per_second

    def spread(self, fits: tuple[FitTiming, ...]) -> float:
        """(slowest - fastest) / median of the runs' steady-state times."""
        return common.Timing(tuple(fit.steady for fit in fits)).spread


def phantom_frame(root: Path, per_class: int, size: int) -> pd.DataFrame:
    """Write ``per_class`` phantoms of each class at ``size`` px under ``root``; return the rows."""
    dataset = phantom.write_phantom_dataset(root, per_class, size, SEED)
    rows = [
        {"path": str(dataset / name / f"{name}- ({number}).png"), "label": name}
        for name in CLASS_NAMES
        for number in range(1, per_class + 1)
    ]
    return pd.DataFrame(rows)


def decoded_in_memory(frame: pd.DataFrame, size: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``frame`` decoded and resized by the pipeline (no augmentation), in memory."""
    dataset = pipeline.make_dataset(frame, size, batch_size=batch_size, training=False, cache=False)
    images, labels = zip(*((batch[0].numpy(), batch[1].numpy()) for batch in dataset))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def training_dataset(frame: pd.DataFrame, size: int, batch_size: int) -> tf.data.Dataset:
    """The pipeline as training uses it: shuffled, default augmentation, cached in memory."""
    return pipeline.make_dataset(
        frame, size, batch_size=batch_size, training=True, augmentation=pipeline.Augmentation(),
        cache=True, seed=SEED,
    )


def measure_model(
    name: str, frame: pd.DataFrame, images: np.ndarray, labels: np.ndarray, arguments: argparse.Namespace
) -> ModelResult:
    """Build, compile, warm up and time one model fed both ways."""
    size, batch_size, steps = arguments.img_size, arguments.batch_size, arguments.steps
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    built = builders.create_model(name, size, "none", batchnorm_momentum=BATCHNORM_MOMENTUM)
    model = built.model
    model.compile(
        optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"],
        jit_compile=False,
    )
    build_seconds = time.perf_counter() - start

    # Warm-up: trace the training step for each input. The pipeline is traced on a separate
    # small dataset of the same element spec, so the measured dataset's cache stays empty.
    start = time.perf_counter()
    fit_timed(model, training_dataset(frame.iloc[: WARMUP_STEPS * batch_size], size, batch_size),
              steps=WARMUP_STEPS, batch_size=batch_size)
    fit_timed(model, images, labels, steps=WARMUP_STEPS, batch_size=batch_size)
    warmup_seconds = time.perf_counter() - start

    dataset = training_dataset(frame, size, batch_size)
    # The first epoch runs over the whole dataset, so the cache is complete after it.
    first_epoch = fit_timed(model, dataset, steps=None, batch_size=batch_size, total_images=len(frame))
    print(f"  {name}: built in {build_seconds:.1f} s, warm-up {warmup_seconds:.1f} s, first epoch "
          f"{first_epoch.epoch:.2f} s ({first_epoch.epoch_images_per_second:.0f} img/s)", flush=True)

    pipeline_fits: list[FitTiming] = []
    memory_fits: list[FitTiming] = []
    order: list[bool] = []
    for round_number in range(arguments.repeats):
        pipeline_first = round_number % 2 == 0
        order.append(pipeline_first)
        for feed in ("pipeline", "memory") if pipeline_first else ("memory", "pipeline"):
            if feed == "pipeline":
                pipeline_fits.append(fit_timed(model, dataset, steps=steps, batch_size=batch_size))
            else:
                memory_fits.append(fit_timed(model, images, labels, steps=steps, batch_size=batch_size))
        print(f"  {name} round {round_number + 1}/{arguments.repeats}: pipeline "
              f"{pipeline_fits[-1].steady_images_per_second:.1f} img/s, in-memory "
              f"{memory_fits[-1].steady_images_per_second:.1f} img/s", flush=True)
    result = ModelResult(
        name=name, display_name=built.spec.display_name, parameters=int(model.count_params()),
        build_seconds=build_seconds, warmup_seconds=warmup_seconds, first_epoch=first_epoch,
        pipeline=tuple(pipeline_fits), memory=tuple(memory_fits), pipeline_first=tuple(order),
    )
    del model, built, dataset
    keras.backend.clear_session()
    gc.collect()
    return result


def results_table(results: list[ModelResult]) -> str:
    """The printed table: steady-state images/s both ways, their ratio and the first epoch."""
    rows = [
        (
            result.name,
            round(result.pipeline_images_per_second, 1),
            round(result.memory_images_per_second, 1),
            round(result.ratio, 3),
            round(result.first_epoch_images_per_second, 1),
            f"{result.spread(result.pipeline):.0%} / {result.spread(result.memory):.0%}",
        )
        for result in results
    ]
    headers = ("model", "pipeline img/s", "in-memory img/s", "pipeline/in-memory", "first epoch img/s",
               "spread pipe/mem")
    return common.format_table(headers, rows)


def teardown_note(results: list[ModelResult]) -> str:
    """How long fit calls took to return after their epoch ended (excluded from every figure)."""
    parts = []
    for feed in ("pipeline", "memory"):
        waits = [fit.teardown for result in results for fit in getattr(result, feed)]
        blocked = [wait for wait in waits if wait > 0.1]
        label = "pipeline" if feed == "pipeline" else "in-memory"
        parts.append(f"{label} {len(blocked)} of {len(waits)} (longest {max(waits, default=0):.2f} s)")
    return (
        "Iterator teardown (excluded above), timed runs whose fit took more than 0.1 s to return after "
        f"the epoch ended: {'; '.join(parts)}. Keras feeds arrays through an autotuned tf.data "
        "dataset, whose iterator can block when destroyed (see bench/README.md, bench_pipeline.py)."
    )


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the system has none."""
    try:
        return tuple(round(value, 2) for value in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return None


def describe_load(load: tuple[float, float, float] | None, cores: object) -> str:
    if load is None:
        return "Load average: not available."
    return f"Load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min) on {cores} cores."


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all",
                        help=f"'all' or comma-separated registry names (default all: {','.join(registry.MODEL_NAMES)})")
    parser.add_argument("--img-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help="image side in pixels, for the phantoms and the models (default %(default)s; "
                             "InceptionV3 needs at least 75, the ViT a multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per step (default %(default)s)")
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS,
                        help="phantom images per class (default %(default)s; 4 classes)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per timed run (default: one pass, 4 x per-class // batch-size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each input per model (default %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE", default=DEFAULT_JSON,
                        help="write the results as JSON to FILE (default bench/out/training.json)")
    arguments = parser.parse_args(argv)
    try:
        arguments.models = registry.parse_model_names(arguments.models)
        for name in arguments.models:
            registry.get_spec(name).check_size(arguments.img_size)
    except errors.ConfigError as error:
        parser.error(str(error))
    if not phantom.MIN_SIZE <= arguments.img_size <= phantom.MAX_SIZE:
        parser.error(f"--img-size must be from {phantom.MIN_SIZE} to {phantom.MAX_SIZE} (the phantom sizes)")
    if arguments.batch_size < 1 or arguments.per_class < 1 or arguments.repeats < 1:
        parser.error("--batch-size, --per-class and --repeats must be at least 1")
    full_batches = len(CLASS_NAMES) * arguments.per_class // arguments.batch_size
    if arguments.steps is None:
        arguments.steps = full_batches
    if arguments.steps < 2:
        parser.error(f"at least 2 steps per run are needed (--steps {arguments.steps}; "
                     f"{len(CLASS_NAMES)} x --per-class holds {full_batches} full batches); raise --per-class")
    if arguments.steps > full_batches:
        parser.error(f"--steps {arguments.steps} needs {arguments.steps * arguments.batch_size} images; "
                     f"the dataset holds {full_batches} full batches ({len(CLASS_NAMES)} x --per-class "
                     f"{arguments.per_class}); raise --per-class")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table; return the exit status."""
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    info = common.machine_info()
    print(common.format_header("kidney_lab training throughput: tf.data pipeline against in-memory input", info))
    load_before = load_average()
    print(describe_load(load_before, info["cores"]) + " Other work on the machine slows both inputs alike; "
          "read the ratios.", flush=True)
    size, batch_size, steps = arguments.img_size, arguments.batch_size, arguments.steps
    images_total = len(CLASS_NAMES) * arguments.per_class

    with tempfile.TemporaryDirectory(prefix="kidney_lab_bench_training_") as work:
        start = time.perf_counter()
        frame = phantom_frame(Path(work), arguments.per_class, size)
        common.read_files(frame["path"])
        images, labels = decoded_in_memory(frame, size, batch_size)
        print(f"Data: {images_total} phantom PNGs at {size}x{size} ({arguments.per_class} per class) written "
              f"and decoded in {time.perf_counter() - start:.1f} s; in memory {images.nbytes / 2**20:.0f} MiB "
              f"float32. Batch {batch_size}, {steps} steps per timed run, {arguments.repeats} rounds; "
              f"models: {', '.join(arguments.models)}.", flush=True)
        results = [measure_model(name, frame, images, labels, arguments) for name in arguments.models]

    print()
    print(f"Training throughput at {size}x{size}, batch {batch_size}: steady-state images/s (steps after the "
          f"first of each fit call), median of {arguments.repeats} runs; ratio = median of per-round ratios; "
          f"first epoch = the whole uncached epoch ({math.ceil(images_total / batch_size)} steps, decoding every file):")
    print(results_table(results))
    ratios = [result.ratio for result in results]
    lowest = min(results, key=lambda result: result.ratio)
    summary = (
        f"Pipeline / in-memory: median over models {statistics.median(ratios):.3f}, lowest "
        f"{lowest.ratio:.3f} ({lowest.name}). The pipeline augments (flip, rotation, zoom, brightness, "
        "contrast) on the same cores as training; the in-memory input does not augment."
    )
    print(summary)
    print(teardown_note(results))
    load_after = load_average()
    elapsed = time.perf_counter() - started
    print(describe_load(load_after, info["cores"]) + f" Benchmark took {elapsed:.0f} s.")

    def describe(result: ModelResult) -> dict[str, object]:
        return {
            "name": result.name,
            "display_name": result.display_name,
            "parameters": result.parameters,
            "build_seconds": result.build_seconds,
            "warmup_seconds": result.warmup_seconds,
            "pipeline_images_per_second": result.pipeline_images_per_second,
            "memory_images_per_second": result.memory_images_per_second,
            "ratio": result.ratio,
            "ratio_of_medians": result.pipeline_images_per_second / result.memory_images_per_second,
            "first_epoch_images_per_second": result.first_epoch_images_per_second,
            "pipeline_epoch_images_per_second": statistics.median(
                fit.epoch_images_per_second for fit in result.pipeline),
            "memory_epoch_images_per_second": statistics.median(
                fit.epoch_images_per_second for fit in result.memory),
            "first_epoch": dataclasses.asdict(result.first_epoch),
            "pipeline_runs": [dataclasses.asdict(fit) for fit in result.pipeline],
            "memory_runs": [dataclasses.asdict(fit) for fit in result.memory],
            "pipeline_first_in_round": list(result.pipeline_first),
        }

    common.write_json(
        arguments.json,
        {
            "benchmark": "training",
            "machine": info,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "image_size": size,
            "batch_size": batch_size,
            "per_class": arguments.per_class,
            "images": images_total,
            "steps": steps,
            "repeats": arguments.repeats,
            "batchnorm_momentum": BATCHNORM_MOMENTUM,
            "models": [describe(result) for result in results],
            "summary": summary,
            "elapsed_seconds": elapsed,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
