"""Input-pipeline throughput and training-step speed on the real CT sample.

Part 1, images per second at 224x224, batch 32, over the same real slices (the sample in
../shared/data/ct-kidney-sample; the benchmark is skipped with a message when it is absent):

(a) Keras' ``ImageDataGenerator(...).flow_from_directory(...)`` on the class folders (target
    224x224, colour mode rgb, shuffled), what the original study used (in Keras 3 it lives in
    ``keras.src.legacy.preprocessing.image``): as its training input, with augmentation
    (rotation 20 degrees, zoom 0.2, shear 0.2, shifts 0.1, horizontal flip; the usual set of such
    studies), and plain (``rescale`` only);
(b) ours, :func:`kidney_lab.data.pipeline.make_dataset` with ``training=True``, each of them
    with our default augmentation and with augmentation off: a first pass that decodes every
    image (``cache=False``), and a cached epoch (``cache=True``, after one epoch that fills the
    cache; this is every epoch of a training run after its first);
(c) the same images already decoded and resized, held in memory as float32 tensors and fed by
    ``tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n).batch(32).prefetch(AUTOTUNE)``.

Each figure is the median of ``--repeats`` timed passes; only iteration is timed (building the
generator or dataset is not), and every file is read once beforehand so that all variants read
from the OS page cache. A pass ends when its last batch arrives: destroying a tf.data iterator
can block for seconds with TensorFlow 2.21 (it waits for tf.data's autotuning thread), so that
wait is measured apart and reported in one line at the end. ``--stages`` adds a table that cuts
the first pass into read, decode and resize.

Part 2, training steps per second: one small Keras CNN (four Conv2D + BatchNorm + ReLU blocks,
global average pooling, Dense(4) softmax; 224x224x3 input; ``jit_compile=False``) is trained with
``model.fit`` for one epoch at a time, fed alternately (i) by our pipeline with ``cache=True``
and augmentation off, after a warm-up epoch that fills the cache, and (ii) by in-memory
tensors, over the same images. An epoch is timed from Keras' ``on_epoch_begin`` to its
``on_epoch_end`` (so the iterator's start-up counts, its teardown does not); "steady" steps/s
leave out the first step. The order within each round alternates, and the ratio is the median
of the per-round ratios, so noise between rounds does not decide it.

Run from the repository root::

    python bench/bench_pipeline.py [--images 2000] [--train-images 640] [--rounds 5] [--json FILE]

Targets: training input, ours / ImageDataGenerator, both augmenting, >= 10 (the ratio is given
for the cached epochs, the steady state of training, and for the first pass); training steps/s
fed by (i) / fed by (ii) >= 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable

import common  # Sets up the environment and sys.path; import before TensorFlow.

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras.src.legacy.preprocessing.image import ImageDataGenerator

from kidney_lab.data import discover, pipeline
from kidney_lab.data.classes import CLASS_NAMES

IMAGE_SIZE = 224
BATCH_SIZE = 32
SEED = 0
# Targets from the project's performance brief.
TARGET_VERSUS_KERAS = 10.0
TARGET_TRAINING_RATIO = 0.95


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Images per second of one way of feeding images.

    Attributes:
        name: What was timed.
        images: Images per pass.
        timing: Seconds per pass, from creating the iterator to receiving its last batch.
        teardown: Seconds each pass's iterator took to be destroyed, after the clock stopped.
    """

    name: str
    images: int
    timing: common.Timing
    teardown: tuple[float, ...] = ()

    @property
    def images_per_second(self) -> float:
        return self.images / self.timing.median


def time_passes(name: str, dataset: tf.data.Dataset, repeats: int) -> Throughput:
    """Time ``repeats`` full passes over ``dataset``.

    The clock stops when the last batch arrives (the number of batches is the dataset's
    cardinality) and the iterator is destroyed afterwards: with TensorFlow 2.21, destroying the
    iterator of a dataset that autotunes sometimes blocks until tf.data's autotuning thread next
    wakes up (its period doubles from 10 ms, so a pass would end at 0.31, 0.63, 1.27, 2.55 or
    5.11 s after it began). That wait is kept apart, in ``teardown``.

    Raises:
        ValueError: The dataset's number of batches is not known.
    """
    batches = int(dataset.cardinality())
    if batches < 0:
        raise ValueError(f"{name}: the number of batches is not known, so a pass cannot be timed.")
    seconds: list[float] = []
    teardown: list[float] = []
    images = 0
    for _ in range(repeats):
        start = time.perf_counter()
        iterator = iter(dataset)
        images = sum(int(tf.nest.flatten(next(iterator))[0].shape[0]) for _ in range(batches))
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        del iterator
        teardown.append(time.perf_counter() - start)
    return Throughput(name, images, common.Timing(tuple(seconds)), tuple(teardown))


# ImageDataGenerator's augmentation as such studies configure it for training.
KERAS_AUGMENTATION = {
    "rotation_range": 20, "zoom_range": 0.2, "shear_range": 0.2,
    "width_shift_range": 0.1, "height_shift_range": 0.1, "horizontal_flip": True,
}


def keras_generator(root: Path, images: int, repeats: int, augment: bool) -> Throughput:
    """(a) ImageDataGenerator.flow_from_directory, as the original study used it."""
    batches = math.ceil(images / BATCH_SIZE)
    seconds: list[float] = []
    seen = 0
    for repeat in range(repeats):
        generator = ImageDataGenerator(rescale=1.0 / 255, **(KERAS_AUGMENTATION if augment else {}))
        iterator = generator.flow_from_directory(
            str(root),
            target_size=(IMAGE_SIZE, IMAGE_SIZE),
            color_mode="rgb",
            classes=list(CLASS_NAMES),
            class_mode="categorical",
            batch_size=BATCH_SIZE,
            shuffle=True,
            seed=SEED + repeat,
        )
        start = time.perf_counter()
        seen = sum(len(next(iterator)[0]) for _ in range(batches))
        seconds.append(time.perf_counter() - start)
    name = "(a) ImageDataGenerator, " + ("with augmentation" if augment else "plain")
    return Throughput(name, seen, common.Timing(tuple(seconds)))


def ours_first_pass(frame: pd.DataFrame, repeats: int, augmentation: pipeline.Augmentation) -> Throughput:
    """(b) make_dataset decoding every image (no cache)."""
    dataset = pipeline.make_dataset(
        frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=True,
        augmentation=augmentation, cache=False, seed=SEED,
    )
    name = "(b) ours, first pass, " + ("with augmentation" if augmentation.enabled else "plain")
    return time_passes(name, dataset, repeats)


def ours_cached(frame: pd.DataFrame, repeats: int, augmentation: pipeline.Augmentation) -> Throughput:
    """(b) make_dataset with cache=True: one untimed epoch fills the cache, later epochs are timed."""
    dataset = pipeline.make_dataset(
        frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=True,
        augmentation=augmentation, cache=True, seed=SEED,
    )
    time_passes("cache fill", dataset, 1)
    name = "(b) ours, cached epoch, " + ("with augmentation" if augmentation.enabled else "plain")
    return time_passes(name, dataset, repeats)


def decoded_in_memory(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``frame`` decoded and resized by our pipeline, as float32 arrays in memory."""
    dataset = pipeline.make_dataset(frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=False, cache=False)
    images, labels = zip(*((batch_images.numpy(), batch_labels.numpy()) for batch_images, batch_labels in dataset))
    return np.concatenate(images), np.concatenate(labels)


def in_memory_dataset(images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    """(c) Tensors in memory, shuffled each epoch, batched and prefetched."""
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=SEED, reshuffle_each_iteration=True)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )


def stage_breakdown(frame: pd.DataFrame, repeats: int) -> list[Throughput]:
    """Images/s of the first pass cut into stages, to show where decoding time goes.

    Each stage is a tf.data map over the file paths with ``num_parallel_calls=AUTOTUNE``,
    batched and prefetched like the pipeline, and timed the same way.
    """
    paths = tf.data.Dataset.from_tensor_slices(frame["path"].astype(str).tolist())

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 3])

    def resize_plain(path: tf.Tensor) -> tf.Tensor:
        return tf.image.resize(decode(path), (IMAGE_SIZE, IMAGE_SIZE))

    def resize_pipeline(path: tf.Tensor) -> tf.Tensor:
        return pipeline.resize_with_pad(decode(path), IMAGE_SIZE)

    stages = (
        ("read_file", tf.io.read_file),
        ("read + decode_image", decode),
        ("read + decode + tf.image.resize (bilinear)", resize_plain),
        ("read + decode + resize_with_pad (antialias)", resize_pipeline),
    )
    return [
        time_passes(
            name,
            paths.map(function, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE),
            repeats,
        )
        for name, function in stages
    ]


def build_model() -> keras.Model:
    """A small CNN: four strided Conv2D + BatchNorm + ReLU blocks, pooling, Dense(4) softmax."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32, 64, 128):
        features = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(features)
        features = keras.layers.BatchNormalization()(features)
        features = keras.layers.ReLU()(features)
    features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(features)
    model = keras.Model(inputs, outputs, name="bench_cnn")
    model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=False)
    return model


class EpochClock(keras.callbacks.Callback):
    """Records when a one-epoch ``fit`` begins and ends its epoch and its first and last steps."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[str, float] = {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.marks["epoch_begin"] = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.marks.setdefault("first_step_end", time.perf_counter())
        self.marks["last_step_end"] = time.perf_counter()
        self.marks["steps"] = batch + 1

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.marks["epoch_end"] = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class FitTiming:
    """One one-epoch ``model.fit`` call.

    Attributes:
        epoch: Seconds from the start to the end of the epoch (iterator creation included).
        steady_step: Mean seconds per step after the first step (iterator start-up excluded).
        teardown: Seconds ``fit`` took to return after the epoch ended (iterator destruction).
    """

    epoch: float
    steady_step: float
    teardown: float


@dataclasses.dataclass(frozen=True)
class TrainingComparison:
    """One-epoch training times fed by our pipeline and by in-memory tensors, round by round."""

    steps: int
    ours: tuple[FitTiming, ...]
    memory: tuple[FitTiming, ...]

    def paired_ratio(self, steady: bool = False) -> float:
        """Median over rounds of (steps/s fed by ours) / (steps/s fed from memory)."""
        return statistics.median(
            (memory.steady_step / ours.steady_step) if steady else (memory.epoch / ours.epoch)
            for ours, memory in zip(self.ours, self.memory)
        )


def fit_one_epoch(model: keras.Model, dataset: tf.data.Dataset) -> FitTiming:
    """Train ``model`` for one epoch on ``dataset`` and time it with :class:`EpochClock`."""
    clock = EpochClock()
    model.fit(dataset, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    returned = time.perf_counter()
    marks = clock.marks
    return FitTiming(
        epoch=marks["epoch_end"] - marks["epoch_begin"],
        steady_step=(marks["last_step_end"] - marks["first_step_end"]) / max(marks["steps"] - 1, 1),
        teardown=returned - marks["epoch_end"],
    )


def compare_training(frame: pd.DataFrame, images: np.ndarray, labels: np.ndarray, rounds: int) -> TrainingComparison:
    """Alternate one-epoch ``model.fit`` calls fed by (i) our cached pipeline and (ii) memory."""
    keras.utils.set_random_seed(SEED)
    model = build_model()
    ours = pipeline.make_dataset(
        frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=True,
        augmentation=pipeline.Augmentation.off(), cache=True, seed=SEED,
    )
    memory = in_memory_dataset(images, labels)
    # Warm-up: fills our cache and traces the training function for both inputs.
    for dataset in (ours, memory):
        fit_one_epoch(model, dataset)
    ours_fits: list[FitTiming] = []
    memory_fits: list[FitTiming] = []
    for round_number in range(rounds):
        if round_number % 2 == 0:
            ours_fits.append(fit_one_epoch(model, ours))
            memory_fits.append(fit_one_epoch(model, memory))
        else:
            memory_fits.append(fit_one_epoch(model, memory))
            ours_fits.append(fit_one_epoch(model, ours))
        print(f"  round {round_number + 1}/{rounds}: epoch ours {ours_fits[-1].epoch:.2f} s, "
              f"in-memory {memory_fits[-1].epoch:.2f} s", flush=True)
    return TrainingComparison(int(ours.cardinality()), tuple(ours_fits), tuple(memory_fits))


def throughput_table(results: list[Throughput], reference: Throughput) -> str:
    """The printed throughput table, each row also as a multiple of ``reference``."""
    rows = [
        (
            result.name,
            result.images,
            round(result.timing.median, 3),
            round(result.images_per_second),
            round(result.images_per_second / reference.images_per_second, 2),
            f"{result.timing.spread:.0%}",
        )
        for result in results
    ]
    return common.format_table(("input", "images", "median s", "images/s", "vs (a)", "spread"), rows)


def training_table(comparison: TrainingComparison) -> str:
    """The printed training table: per-epoch and steady-state steps per second of each feed."""
    rows = []
    for name, fits in (
        ("(i) make_dataset, cache=True, augmentation off", comparison.ours),
        ("(ii) in-memory tensors (from_tensor_slices)", comparison.memory),
    ):
        epoch = common.Timing(tuple(fit.epoch for fit in fits))
        steady = statistics.median(fit.steady_step for fit in fits)
        rows.append((
            name, comparison.steps, round(epoch.median, 3), round(comparison.steps / epoch.median, 2),
            round(1 / steady, 2), f"{epoch.spread:.0%}", round(max(fit.teardown for fit in fits), 2),
        ))
    headers = ("fed by", "steps", "median s/epoch", "steps/s", "steady steps/s", "spread", "max teardown s")
    return common.format_table(headers, rows)


def teardown_note(results: Iterable[Throughput], comparison: TrainingComparison) -> str:
    """How often destroying a tf.data iterator blocked (excluded from every figure above)."""
    waits = [wait for result in results for wait in result.teardown]
    waits += [fit.teardown for fit in (*comparison.ours, *comparison.memory)]
    blocked = [wait for wait in waits if wait > 0.1]
    return (
        f"Iterator teardown (excluded above): {len(blocked)} of {len(waits)} tf.data iterators took "
        f"more than 0.1 s to be destroyed (longest {max(waits, default=0):.2f} s, total {sum(blocked):.1f} s)."
    )


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000,
                        help="images per throughput pass (default 2000, the whole sample)")
    parser.add_argument("--train-images", type=int, default=640,
                        help="images per training epoch (default 640, 20 steps)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per throughput figure (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating training rounds (default 5)")
    parser.add_argument("--stages", action="store_true",
                        help="also time the first pass cut into stages (read, decode, resize)")
    parser.add_argument("--data", type=Path, default=common.REAL_SAMPLE,
                        help="the real sample folder (default %(default)s)")
    common.add_json_argument(parser)
    arguments = parser.parse_args(argv)
    if min(arguments.images, arguments.train_images) < BATCH_SIZE:
        parser.error(f"--images and --train-images must be at least one batch ({BATCH_SIZE})")
    if arguments.repeats < 1 or arguments.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its tables and verdicts; return the exit status."""
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    info = common.machine_info()
    print(common.format_header("kidney_lab input pipeline: throughput and training steps", info), flush=True)
    if not arguments.data.is_dir():
        message = f"Skipped: the real CT sample is not at {arguments.data} (see DESIGN.md, 'Data available')."
        print(message)
        common.write_json(arguments.json, {"benchmark": "pipeline", "machine": info, "skipped": message})
        return 0

    scan = discover.scan_dataset(arguments.data)
    images = min(arguments.images, len(scan.table))
    frame = scan.table.sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    throughput_frame = frame.iloc[:images]
    training_frame = frame.iloc[: min(arguments.train_images, len(frame))]
    warmed = common.read_files(frame["path"])
    print(f"Dataset: {len(scan.table):,} images in {scan.root}; {images:,} per pass, "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH_SIZE}. Warm-up read {warmed / 2**20:.0f} MiB: all "
          "variants read from the OS page cache.", flush=True)

    keras_augmented = keras_generator(scan.root, images, arguments.repeats, augment=True)
    keras_result = keras_generator(scan.root, images, arguments.repeats, augment=False)
    augmented_first = ours_first_pass(throughput_frame, arguments.repeats, pipeline.Augmentation())
    augmented = ours_cached(throughput_frame, arguments.repeats, pipeline.Augmentation())
    first_pass = ours_first_pass(throughput_frame, arguments.repeats, pipeline.Augmentation.off())
    cached = ours_cached(throughput_frame, arguments.repeats, pipeline.Augmentation.off())
    decoded_images, decoded_labels = decoded_in_memory(throughput_frame)
    memory_dataset = in_memory_dataset(decoded_images, decoded_labels)
    # One untimed pass first: the first touches the freshly made tensors' memory pages.
    time_passes("memory warm-up", memory_dataset, 1)
    memory = time_passes("(c) in-memory tensors, from_tensor_slices", memory_dataset, arguments.repeats)
    augmenting = [keras_augmented, augmented_first, augmented]
    plain = [keras_result, first_pass, cached, memory]
    results = [*augmenting, *plain]

    print()
    print(f"Training input with augmentation, images/s (median of {arguments.repeats} passes; iteration only):")
    print(throughput_table(augmenting, keras_augmented))
    print()
    print("Without augmentation:")
    print(throughput_table(plain, keras_result))
    versus_keras = augmented.images_per_second / keras_augmented.images_per_second
    first_versus_keras = augmented_first.images_per_second / keras_augmented.images_per_second
    versus_memory = first_pass.images_per_second / memory.images_per_second
    verdict_lines = [
        f"Training input, ours cached epoch / ImageDataGenerator, both augmenting = {versus_keras:.1f} "
        f"(target >= {TARGET_VERSUS_KERAS:g}): {'met' if versus_keras >= TARGET_VERSUS_KERAS else 'NOT met'}; "
        f"first pass (decoding every file) = {first_versus_keras:.1f}.",
        f"Plain: ours first pass / ImageDataGenerator = "
        f"{first_pass.images_per_second / keras_result.images_per_second:.1f}; cached epoch / "
        f"ImageDataGenerator = {cached.images_per_second / keras_result.images_per_second:.1f}; "
        f"cached epoch / in-memory = {cached.images_per_second / memory.images_per_second:.3f}.",
    ]
    for line in verdict_lines:
        print(line)

    stages: list[Throughput] = []
    if arguments.stages:
        stages = stage_breakdown(throughput_frame, arguments.repeats)
        print()
        print("First pass cut into stages (tf.data map, AUTOTUNE, batch 32):")
        print(throughput_table([*stages, first_pass], keras_result))

    print()
    print(f"Training: small CNN, model.fit one epoch per call over {len(training_frame)} images, "
          f"{arguments.rounds} alternating rounds:", flush=True)
    training_images = decoded_images[: len(training_frame)]
    training_labels = decoded_labels[: len(training_frame)]
    comparison = compare_training(training_frame, training_images, training_labels, arguments.rounds)
    print(training_table(comparison))
    training_ratio = comparison.paired_ratio()
    training_line = (
        f"Training steps/s, (i) / (ii) = {training_ratio:.3f} (whole epochs; median of per-round ratios; "
        f"target >= {TARGET_TRAINING_RATIO}): {'met' if training_ratio >= TARGET_TRAINING_RATIO else 'NOT met'}. "
        f"Steady state (after the first step): {comparison.paired_ratio(steady=True):.3f}."
    )
    print(training_line)
    verdict_lines.append(training_line)
    print(teardown_note([*results, *stages], comparison))
    elapsed = time.perf_counter() - started
    print(f"Benchmark took {elapsed:.0f} s.")

    def describe(result: Throughput) -> dict[str, object]:
        return {"name": result.name, "images": result.images, "seconds": list(result.timing.seconds),
                "teardown_seconds": list(result.teardown), "images_per_second": result.images_per_second}

    common.write_json(
        arguments.json,
        {
            "benchmark": "pipeline",
            "machine": info,
            "data": str(scan.root),
            "image_size": IMAGE_SIZE,
            "batch_size": BATCH_SIZE,
            "throughput": [describe(result) for result in results],
            "stages": [describe(result) for result in stages] or None,
            "training_input_versus_keras": versus_keras,
            "first_pass_with_augmentation_versus_keras": first_versus_keras,
            "first_pass_versus_memory": versus_memory,
            "training": {
                "steps_per_epoch": comparison.steps,
                "ours": [dataclasses.asdict(fit) for fit in comparison.ours],
                "memory": [dataclasses.asdict(fit) for fit in comparison.memory],
                "ratio": training_ratio,
                "steady_ratio": comparison.paired_ratio(steady=True),
            },
            "verdicts": verdict_lines,
            "elapsed_seconds": elapsed,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
