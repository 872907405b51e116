"""Input-pipeline throughput and training-step speed on the real CT sample.

Part 1, images per second at 224x224, batch 32, over the same real slices (the sample in
../shared/data/ct-kidney-sample; the benchmark is skipped with a message when it is absent):

(a) Keras' ``ImageDataGenerator(rescale=1/255).flow_from_directory(...)`` on the class folders
    (target 224x224, colour mode rgb, shuffled), what the original study used; in Keras 3 it
    lives in ``keras.src.legacy.preprocessing.image``;
(b) ours, :func:`kidney_lab.data.pipeline.make_dataset` with ``training=True``: a first pass that
    decodes every image (``cache=False``, augmentation off), a cached epoch (``cache=True``,
    after one epoch that fills the cache), and a cached epoch with the default augmentation;
(c) the same images already decoded and resized, held in memory as float32 tensors and fed by
    ``tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n).batch(32).prefetch(AUTOTUNE)``.

Each figure is the median of ``--repeats`` timed passes; only iteration is timed (building the
generator or dataset is not), and every file is read once beforehand so that all variants read
from the OS page cache.

Part 2, training steps per second: one small Keras CNN (four Conv2D + BatchNorm + ReLU blocks,
global average pooling, Dense(4) softmax; 224x224x3 input; ``jit_compile=False``) is trained with
``model.fit`` for one epoch at a time, fed alternately (i) by our pipeline with ``cache=True``
and augmentation off, after a warm-up epoch that fills the cache, and (ii) by in-memory
tensors, over the same images. The order within each round alternates, and the ratio is the
median of the per-round ratios, so noise between rounds does not decide it.

Run from the repository root::

    python bench/bench_pipeline.py [--images 2000] [--train-images 640] [--rounds 5] [--json FILE]

Targets: (b) first pass / (a) >= 10; training steps/s fed by (i) / fed by (ii) >= 0.95.
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
    """Images per second of one way of feeding images."""

    name: str
    images: int
    timing: common.Timing

    @property
    def images_per_second(self) -> float:
        return self.images / self.timing.median


def count_images(batches: Iterable[tuple[object, ...]]) -> int:
    """Iterate over batches of ``(images, labels, ...)`` and return how many images went by."""
    return sum(int(batch[0].shape[0]) for batch in batches)


def time_epochs(dataset: tf.data.Dataset, repeats: int) -> tuple[common.Timing, int]:
    """Time ``repeats`` full passes over ``dataset``; return the timings and images per pass."""
    timing, images = common.time_repeated(lambda: count_images(dataset), repeats)
    return timing, int(images)


def keras_generator(root: Path, images: int, repeats: int) -> Throughput:
    """(a) ImageDataGenerator.flow_from_directory, as the original study used it."""
    batches = math.ceil(images / BATCH_SIZE)
    seconds: list[float] = []
    seen = 0
    for repeat in range(repeats):
        generator = ImageDataGenerator(rescale=1.0 / 255)
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
    return Throughput("(a) Keras ImageDataGenerator, flow_from_directory", seen, common.Timing(tuple(seconds)))


def ours_first_pass(frame: pd.DataFrame, repeats: int) -> Throughput:
    """(b) make_dataset decoding every image (no cache, augmentation off)."""
    dataset = pipeline.make_dataset(
        frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=True,
        augmentation=pipeline.Augmentation.off(), cache=False, seed=SEED,
    )
    timing, images = time_epochs(dataset, repeats)
    return Throughput("(b) make_dataset, first pass (decode; cache=False)", images, timing)


def ours_cached(frame: pd.DataFrame, repeats: int, augmentation: pipeline.Augmentation) -> Throughput:
    """(b) make_dataset with cache=True: one untimed epoch fills the cache, later epochs are timed."""
    dataset = pipeline.make_dataset(
        frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=True,
        augmentation=augmentation, cache=True, seed=SEED,
    )
    count_images(dataset)
    timing, images = time_epochs(dataset, repeats)
    name = "(b) make_dataset, cached epoch" + (", default augmentation" if augmentation.enabled else "")
    return Throughput(name, images, timing)


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
    results: list[Throughput] = []
    for name, function in stages:
        dataset = paths.map(function, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)
        timing, _ = common.time_repeated(lambda: sum(1 for _ in dataset), repeats)
        results.append(Throughput(name, len(frame), timing))
    return results


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


@dataclasses.dataclass(frozen=True)
class TrainingComparison:
    """Per-epoch training times fed by our pipeline and by in-memory tensors, round by round."""

    steps: int
    ours: common.Timing
    memory: common.Timing

    @property
    def paired_ratio(self) -> float:
        """Median over rounds of (steps/s fed by ours) / (steps/s fed from memory)."""
        return statistics.median(m / o for o, m in zip(self.ours.seconds, self.memory.seconds))


def compare_training(frame: pd.DataFrame, images: np.ndarray, labels: np.ndarray, rounds: int) -> TrainingComparison:
    """Alternate one-epoch ``model.fit`` calls fed by (i) our cached pipeline and (ii) memory."""
    keras.utils.set_random_seed(SEED)
    model = build_model()
    ours = pipeline.make_dataset(
        frame, IMAGE_SIZE, batch_size=BATCH_SIZE, training=True,
        augmentation=pipeline.Augmentation.off(), cache=True, seed=SEED,
    )
    memory = in_memory_dataset(images, labels)
    steps = math.ceil(len(frame) / BATCH_SIZE)
    # Warm-up: fills our cache and traces the training function for both inputs.
    for dataset in (ours, memory):
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)

    def fit_seconds(dataset: tf.data.Dataset) -> float:
        start = time.perf_counter()
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - start

    ours_seconds: list[float] = []
    memory_seconds: list[float] = []
    for round_number in range(rounds):
        if round_number % 2 == 0:
            ours_seconds.append(fit_seconds(ours))
            memory_seconds.append(fit_seconds(memory))
        else:
            memory_seconds.append(fit_seconds(memory))
            ours_seconds.append(fit_seconds(ours))
        print(f"  round {round_number + 1}/{rounds}: ours {ours_seconds[-1]:.2f} s, "
              f"in-memory {memory_seconds[-1]:.2f} s per epoch of {steps} steps", flush=True)
    return TrainingComparison(steps, common.Timing(tuple(ours_seconds)), common.Timing(tuple(memory_seconds)))


def throughput_table(results: list[Throughput], reference: Throughput) -> str:
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
    rows = [
        (name, comparison.steps, round(timing.median, 3), round(comparison.steps / timing.median, 2),
         f"{timing.spread:.0%}", len(timing.seconds))
        for name, timing in (
            ("(i) make_dataset, cache=True, augmentation off", comparison.ours),
            ("(ii) in-memory tensors (from_tensor_slices)", comparison.memory),
        )
    ]
    return common.format_table(("fed by", "steps", "median s/epoch", "steps/s", "spread", "rounds"), rows)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
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
    print(f"Real sample: {len(scan.table):,} images in {scan.root}; {images:,} per pass, "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH_SIZE}. Warm-up read {warmed / 2**20:.0f} MiB: all "
          "variants read from the OS page cache.", flush=True)

    keras_result = keras_generator(scan.root, images, arguments.repeats)
    first_pass = ours_first_pass(throughput_frame, arguments.repeats)
    cached = ours_cached(throughput_frame, arguments.repeats, pipeline.Augmentation.off())
    augmented = ours_cached(throughput_frame, arguments.repeats, pipeline.Augmentation())
    decoded_images, decoded_labels = decoded_in_memory(throughput_frame)
    memory_timing, memory_images = time_epochs(in_memory_dataset(decoded_images, decoded_labels), arguments.repeats)
    memory = Throughput("(c) in-memory tensors, from_tensor_slices", memory_images, memory_timing)
    results = [keras_result, first_pass, cached, augmented, memory]

    print()
    print(f"Throughput, images/s (median of {arguments.repeats} passes; iteration only):")
    print(throughput_table(results, keras_result))
    versus_keras = first_pass.images_per_second / keras_result.images_per_second
    versus_memory = first_pass.images_per_second / memory.images_per_second
    verdict_lines = [
        f"(b) first pass / (a) Keras generator = {versus_keras:.2f} (target >= {TARGET_VERSUS_KERAS:g}): "
        f"{'met' if versus_keras >= TARGET_VERSUS_KERAS else 'NOT met'}.",
        f"(b) first pass / (c) in-memory = {versus_memory:.3f}; "
        f"(b) cached epoch / (c) in-memory = {cached.images_per_second / memory.images_per_second:.3f}.",
    ]
    for line in verdict_lines:
        print(line)

    stages = None
    if arguments.stages:
        stages = [*stage_breakdown(throughput_frame, arguments.repeats), first_pass]
        print()
        print("First pass cut into stages (tf.data map, AUTOTUNE, batch 32):")
        print(throughput_table(stages, keras_result))

    print()
    print(f"Training: small CNN, model.fit one epoch per call over {len(training_frame)} images, "
          f"{arguments.rounds} alternating rounds:", flush=True)
    training_images = decoded_images[: len(training_frame)]
    training_labels = decoded_labels[: len(training_frame)]
    comparison = compare_training(training_frame, training_images, training_labels, arguments.rounds)
    print(training_table(comparison))
    training_line = (
        f"Training steps/s, (i) / (ii) = {comparison.paired_ratio:.3f} (median of per-round ratios; "
        f"target >= {TARGET_TRAINING_RATIO}): {'met' if comparison.paired_ratio >= TARGET_TRAINING_RATIO else 'NOT met'}."
    )
    print(training_line)
    verdict_lines.append(training_line)
    elapsed = time.perf_counter() - started
    print(f"Benchmark took {elapsed:.0f} s.")

    def describe(result: Throughput) -> dict[str, object]:
        return {"name": result.name, "images": result.images, "seconds": list(result.timing.seconds),
                "images_per_second": result.images_per_second}

    common.write_json(
        arguments.json,
        {
            "benchmark": "pipeline",
            "machine": info,
            "data": str(scan.root),
            "image_size": IMAGE_SIZE,
            "batch_size": BATCH_SIZE,
            "throughput": [describe(result) for result in results],
            "stages": [describe(result) for result in stages] if stages else None,
            "first_pass_versus_keras": versus_keras,
            "first_pass_versus_memory": versus_memory,
            "training": {
                "steps_per_epoch": comparison.steps,
                "ours_seconds": list(comparison.ours.seconds),
                "memory_seconds": list(comparison.memory.seconds),
                "ours_steps_per_second": comparison.steps / comparison.ours.median,
                "memory_steps_per_second": comparison.steps / comparison.memory.median,
                "ratio": comparison.paired_ratio,
            },
            "verdicts": verdict_lines,
            "elapsed_seconds": elapsed,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
