"""How the dataset scan and the duplicate audit scale with the number of images.

For each size (default 2,000, 6,000, 12,446 = the full Kaggle dataset, and 25,000 images) the
benchmark builds a synthetic dataset in the Kaggle layout,
``<root>/CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/<Class>/<Class>- (n).jpg``, with the Kaggle
class proportions, then times :func:`kidney_lab.data.discover.scan_dataset` (read, decode and
hash every file) and :func:`kidney_lab.data.audit.audit_dataset` (exact duplicates and
near-duplicate clusters) separately.

The images look like the Kaggle originals: 512x512 RGB JPEGs with R=G=B, quality 90. Drawing
25,000 phantoms one by one is too slow, so a few hundred base phantoms are drawn with
:func:`kidney_lab.data.phantom.make_phantom` and each becomes a "series" of 30-150 slices that
drift smoothly (sub-pixel shifts, slight scaling, fresh noise on every slice), as neighbouring
slices of one CT scan do; about 1% of the slices are byte-for-byte copies of the slice before.
The data therefore has the near-duplicate clusters the audit exists to find, and the table
shows how many series were generated next to how many clusters the audit found.

The images are written once, by two processes, into a pool under the work folder (default
/tmp/kidney_lab_bench); each size's dataset is a folder of hard links into that pool, so the
sizes share their files and a later run reuses them. Before timing, every file of a dataset is
read once so that all sizes are measured with a warm OS page cache (the numbers do not include
disk reads).

Run from the repository root::

    python bench/bench_audit.py [--sizes 2000,6000,12446,25000] [--repeats 3] [--json FILE]

Targets: the full dataset size (12,446 images) scanned and audited in about a minute on two
cores, and near-linear growth from the smallest to the largest size (growth 1.0 is linear).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import multiprocessing
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

import common  # Sets up the environment and sys.path; import before kidney_lab.

import numpy as np
from PIL import Image

from kidney_lab.data import audit as audit_module
from kidney_lab.data import discover
from kidney_lab.data import phantom
from kidney_lab.data.classes import CLASS_NAMES, KAGGLE_FOLDER_NAME, class_index

DEFAULT_SIZES = (2000, 6000, 12446, 25000)
DEFAULT_WORK_DIR = Path("/tmp/kidney_lab_bench")

# Images per class in the Kaggle dataset; every synthetic size keeps these proportions.
KAGGLE_COUNTS = {"Cyst": 3709, "Normal": 5077, "Stone": 1377, "Tumor": 2283}

IMAGE_SIZE = 512
JPEG_QUALITY = 90
SERIES_LENGTHS = (30, 150)
DUPLICATE_PROBABILITY = 0.01
SEED = 0
# Bump when the drawing below changes, so that an old pool is discarded instead of reused.
SYNTHETIC_VERSION = 1

# The drift from one slice to the next: a random walk in shift (pixels) and scale, bounded.
_SHIFT_STEP = 0.7
_SHIFT_LIMIT = 16.0
_SCALE_STEP = 0.007
_SCALE_LIMITS = (0.9, 1.1)
_NOISE_SIGMA = 3.0

_MARKER_NAME = "kidney_lab_bench.json"
_POOL_NAME = "pool"

# Sizes up to this one count as "small" and get --repeats runs; larger ones --large-repeats.
_SMALL_LIMIT = sum(KAGGLE_COUNTS.values())
# The growth (time ratio / image ratio) up to which scaling counts as near-linear.
_NEAR_LINEAR = 1.25
_FULL_DATASET_TARGET_S = 60.0


@dataclasses.dataclass(frozen=True)
class Series:
    """One synthetic CT series: consecutive file numbers of one class drawn from one phantom.

    Attributes:
        label: The class.
        index: The series number within the class; also the phantom index it is drawn from.
        first_number: The file number ``n`` of its first slice (``<Class>- (n).jpg``).
        length: Slices in the whole series (the last series of a class may be cut short).
    """

    label: str
    index: int
    first_number: int
    length: int

    @property
    def numbers(self) -> range:
        """The file numbers of its slices."""
        return range(self.first_number, self.first_number + self.length)


@dataclasses.dataclass(frozen=True)
class SizeResult:
    """The timings of one dataset size."""

    images: int
    series: int
    scan: common.Timing
    audit: common.Timing
    near_duplicate_clusters: int
    exact_duplicate_groups: int

    @property
    def total(self) -> float:
        """Median scan time plus median audit time, in seconds."""
        return self.scan.median + self.audit.median


def class_counts(images: int) -> dict[str, int]:
    """Images per class for a dataset of ``images`` in the Kaggle proportions (largest remainder)."""
    total = sum(KAGGLE_COUNTS.values())
    exact = {name: images * count / total for name, count in KAGGLE_COUNTS.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: images - sum(counts.values())]:
        counts[name] += 1
    return counts


def series_of_class(label: str, images: int) -> list[Series]:
    """The series that hold images 1..``images`` of ``label``.

    The series lengths depend only on the class and :data:`SEED`, so image ``n`` of a class is
    the same in every dataset size.
    """
    rng = np.random.default_rng([SEED, class_index(label), 7])
    series: list[Series] = []
    number = 1
    while number <= images:
        length = int(rng.integers(SERIES_LENGTHS[0], SERIES_LENGTHS[1] + 1))
        series.append(Series(label, len(series), number, length))
        number += length
    return series


def image_name(label: str, number: int) -> str:
    """The Kaggle file name of image ``number`` of ``label``."""
    return f"{label}- ({number}).jpg"


def render_series(series: Series) -> list[bytes]:
    """Draw every slice of ``series`` as JPEG bytes (RGB with R=G=B, quality 90)."""
    base = Image.fromarray(phantom.make_phantom(series.label, IMAGE_SIZE, SEED, series.index).image)
    rng = np.random.default_rng([SEED, class_index(series.label), series.index, 1])
    centre = IMAGE_SIZE / 2
    shift_x = shift_y = 0.0
    scale = 1.0
    slices: list[bytes] = []
    for position in range(series.length):
        if position > 0 and rng.random() < DUPLICATE_PROBABILITY:
            slices.append(slices[-1])
            continue
        shift_x = float(np.clip(shift_x + rng.normal(0, _SHIFT_STEP), -_SHIFT_LIMIT, _SHIFT_LIMIT))
        shift_y = float(np.clip(shift_y + rng.normal(0, _SHIFT_STEP), -_SHIFT_LIMIT, _SHIFT_LIMIT))
        scale = float(np.clip(scale * np.exp(rng.normal(0, _SCALE_STEP)), *_SCALE_LIMITS))
        # PIL's affine transform maps each output pixel back to an input pixel.
        inverse = 1 / scale
        moved = base.transform(
            (IMAGE_SIZE, IMAGE_SIZE),
            Image.Transform.AFFINE,
            (inverse, 0, centre - inverse * (centre + shift_x), 0, inverse, centre - inverse * (centre + shift_y)),
            resample=Image.Resampling.BILINEAR,
        )
        noisy = np.asarray(moved, dtype=np.float32) + _NOISE_SIGMA * rng.standard_normal(
            (IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32
        )
        gray = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(np.repeat(gray[..., None], 3, axis=-1)).save(buffer, "JPEG", quality=JPEG_QUALITY)
        slices.append(buffer.getvalue())
    return slices


def write_series(job: tuple[Series, Path, int]) -> int:
    """Write the missing slices of one series (numbers up to a limit) into ``pool``; return how many."""
    series, pool, last_number = job
    folder = pool / series.label
    wanted = [
        (position, number)
        for position, number in enumerate(series.numbers)
        if number <= last_number and not (folder / image_name(series.label, number)).exists()
    ]
    if not wanted:
        return 0
    slices = render_series(series)
    for position, number in wanted:
        target = folder / image_name(series.label, number)
        temporary = target.with_name(target.name + ".part")
        temporary.write_bytes(slices[position])
        os.replace(temporary, target)
    return len(wanted)


def prepare_pool(work_dir: Path, largest: int, processes: int) -> None:
    """Make sure the pool holds the images of the largest dataset, writing the missing ones."""
    marker = work_dir / _MARKER_NAME
    settings = {
        "synthetic_version": SYNTHETIC_VERSION,
        "image_size": IMAGE_SIZE,
        "jpeg_quality": JPEG_QUALITY,
        "seed": SEED,
        "phantom_generator_version": phantom.GENERATOR_VERSION,
    }
    if marker.exists() and json.loads(marker.read_text()) != settings:
        print(f"Synthetic images in {work_dir} were made with other settings; deleting them.", flush=True)
        remove_work_dir(work_dir)
    elif work_dir.exists() and any(work_dir.iterdir()) and not marker.exists():
        raise SystemExit(f"{work_dir} holds files this benchmark did not write; choose another --work-dir.")
    pool = work_dir / _POOL_NAME
    for label in CLASS_NAMES:
        (pool / label).mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings, indent=2))

    jobs = [
        (series, pool, count)
        for label, count in class_counts(largest).items()
        for series in series_of_class(label, count)
    ]
    missing = sum(
        1
        for series, _, count in jobs
        for number in series.numbers
        if number <= count and not (pool / label_path(series.label, number)).exists()
    )
    if missing == 0:
        print(f"Reusing {largest:,} synthetic images in {pool}.", flush=True)
        return
    print(f"Writing {missing:,} synthetic {IMAGE_SIZE}px JPEGs ({len(jobs)} series) to {pool} "
          f"with {processes} processes...", flush=True)
    # The longest series first, so that no process is left with a long one at the end.
    jobs.sort(key=lambda job: -job[0].length)
    start = time.perf_counter()
    written = 0
    with multiprocessing.get_context("fork").Pool(processes) as workers:
        for count in workers.imap_unordered(write_series, jobs):
            written += count
            if count and written * 10 // missing != (written - count) * 10 // missing:
                print(f"  {written:,}/{missing:,} images, {time.perf_counter() - start:.0f} s", flush=True)
    print(f"Wrote {written:,} images in {time.perf_counter() - start:.0f} s.", flush=True)


def label_path(label: str, number: int) -> Path:
    """The path of an image relative to the pool or to a dataset's Kaggle folder."""
    return Path(label) / image_name(label, number)


def prepare_dataset(work_dir: Path, images: int) -> Path:
    """Make the dataset of ``images`` images as hard links into the pool; return its folder."""
    root = work_dir / f"images-{images}"
    dataset = root / KAGGLE_FOLDER_NAME
    pool = work_dir / _POOL_NAME
    for label, count in class_counts(images).items():
        (dataset / label).mkdir(parents=True, exist_ok=True)
        for number in range(1, count + 1):
            relative = label_path(label, number)
            if not (dataset / relative).exists():
                try:
                    os.link(pool / relative, dataset / relative)
                except OSError:
                    shutil.copyfile(pool / relative, dataset / relative)
    return root


def remove_work_dir(work_dir: Path) -> None:
    """Delete the work folder, but only if this benchmark made it."""
    if (work_dir / _MARKER_NAME).exists():
        shutil.rmtree(work_dir)


def measure(root: Path, images: int, series: int, repeats: int) -> SizeResult:
    """Time the scan and the audit of one dataset, each ``repeats`` times."""
    scan_timing, scan = common.time_repeated(lambda: discover.scan_dataset(root), repeats)
    if len(scan.table) != images:
        raise SystemExit(f"Expected {images} usable images in {root}, the scan found {len(scan.table)}.")
    audit_timing, report = common.time_repeated(lambda: audit_module.audit_dataset(scan), repeats)
    return SizeResult(
        images=images,
        series=series,
        scan=scan_timing,
        audit=audit_timing,
        near_duplicate_clusters=len(report.near_duplicate_clusters),
        exact_duplicate_groups=len(report.exact_duplicate_groups),
    )


def profile(root: Path, lines: int = 16) -> str:
    """cProfile of reading every image of ``root`` in this thread, then of one audit.

    ``scan_dataset`` reads images in worker threads, which cProfile does not follow, so the
    per-image work (:func:`kidney_lab.data.discover.inspect_image`) is profiled in the main
    thread instead. Returns the top functions by internal time.
    """
    paths = sorted((root / KAGGLE_FOLDER_NAME).rglob("*.jpg"))
    scan = discover.scan_dataset(root)
    profiler = cProfile.Profile()
    profiler.enable()
    for path in paths:
        discover.inspect_image(path)
    audit_module.audit_dataset(scan)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def growth(seconds: float, images: int, base_seconds: float, base_images: int) -> float:
    """How time grew relative to images: (seconds / base_seconds) / (images / base_images).

    1.0 is linear scaling; 2.0 means the time grew twice as fast as the number of images.
    """
    return (seconds / base_seconds) / (images / base_images)


def results_table(results: list[SizeResult]) -> str:
    """The printed table: times, throughput and growth relative to the smallest size."""
    base = results[0]
    rows = [
        (
            result.images,
            result.series,
            result.near_duplicate_clusters,
            result.exact_duplicate_groups,
            round(result.scan.median, 2),
            round(result.audit.median, 2),
            round(result.total, 2),
            round(result.images / result.total),
            round(growth(result.scan.median, result.images, base.scan.median, base.images), 2),
            round(growth(result.audit.median, result.images, base.audit.median, base.images), 2),
            round(growth(result.total, result.images, base.total, base.images), 2),
            len(result.scan.seconds),
        )
        for result in results
    ]
    headers = (
        "images", "series", "clusters", "exact dup", "scan s", "audit s", "total s", "images/s",
        "scan growth", "audit growth", "growth", "runs",
    )
    return common.format_table(headers, rows)


def verdicts(results: list[SizeResult]) -> list[str]:
    """One line per target: measured value, target and whether it is met."""
    lines: list[str] = []
    full = [result for result in results if result.images == _SMALL_LIMIT]
    if full:
        seconds = full[0].total
        lines.append(
            f"Full dataset ({_SMALL_LIMIT:,} images): {seconds:.1f} s scan + audit; target about "
            f"{_FULL_DATASET_TARGET_S:.0f} s: {'met' if seconds <= _FULL_DATASET_TARGET_S * 1.1 else 'NOT met'}."
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        total = growth(last.total, last.images, first.total, first.images)
        audit_only = growth(last.audit.median, last.images, first.audit.median, first.images)
        lines.append(
            f"Growth {first.images:,} -> {last.images:,} images: {total:.2f} (1.0 = linear; "
            f"target <= {_NEAR_LINEAR}): {'met' if total <= _NEAR_LINEAR else 'NOT met'}; "
            f"audit_dataset alone {audit_only:.2f}."
        )
    return lines


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in DEFAULT_SIZES),
        help="comma-separated dataset sizes in images (default %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=3,
                        help=f"timed runs per size up to {_SMALL_LIMIT:,} images; the median is shown (default 3)")
    parser.add_argument("--large-repeats", type=int, default=1,
                        help=f"timed runs per size above {_SMALL_LIMIT:,} images (default 1)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="folder for the synthetic images (default %(default)s)")
    parser.add_argument("--processes", type=int, default=2, help="processes that write images (default 2)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of reading every image (one thread) and auditing the largest size")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep", dest="clean", action="store_false",
                      help="keep the synthetic images for the next run (default)")
    keep.add_argument("--clean", dest="clean", action="store_true",
                      help="delete the synthetic images when the benchmark ends")
    parser.set_defaults(clean=False)
    common.add_json_argument(parser)
    arguments = parser.parse_args(argv)
    try:
        arguments.sizes = sorted({int(size) for size in arguments.sizes.split(",") if size.strip()})
    except ValueError:
        parser.error(f"--sizes must be whole numbers separated by commas, got {arguments.sizes!r}")
    if not arguments.sizes or arguments.sizes[0] < len(CLASS_NAMES):
        parser.error(f"every size must be at least {len(CLASS_NAMES)} images (one per class)")
    if arguments.repeats < 1 or arguments.large_repeats < 1 or arguments.processes < 1:
        parser.error("--repeats, --large-repeats and --processes must be at least 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Prepare the data, time every size, print the table and verdicts; return the exit status."""
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    info = common.machine_info()
    print(common.format_header("kidney_lab audit scaling: scan_dataset + audit_dataset", info), flush=True)
    work_dir = arguments.work_dir.resolve()
    try:
        generation_start = time.perf_counter()
        prepare_pool(work_dir, arguments.sizes[-1], arguments.processes)
        roots = {size: prepare_dataset(work_dir, size) for size in arguments.sizes}
        generation_seconds = time.perf_counter() - generation_start

        # Freshly written images are flushed to disk first, so that write-back does not compete
        # with the timed runs. All sizes share the pool's files, so reading the largest dataset
        # once puts every size in the page cache; one untimed scan of the smallest size warms up
        # the code paths (imports, FFT plans, thread pool).
        warm_start = time.perf_counter()
        os.sync()
        warmed = common.read_files(
            path for path in (roots[arguments.sizes[-1]] / KAGGLE_FOLDER_NAME).rglob("*.jpg")
        )
        audit_module.audit_dataset(discover.scan_dataset(roots[arguments.sizes[0]]))
        print(f"Warm-up: read {warmed / 2**20:,.0f} MiB and scanned {arguments.sizes[0]:,} images once in "
              f"{time.perf_counter() - warm_start:.1f} s; every size below is measured with its files "
              "in the OS page cache.", flush=True)

        results: list[SizeResult] = []
        for size in arguments.sizes:
            repeats = arguments.repeats if size <= _SMALL_LIMIT else arguments.large_repeats
            series = sum(len(series_of_class(label, count)) for label, count in class_counts(size).items())
            result = measure(roots[size], size, series, repeats)
            results.append(result)
            print(f"  {size:>6,} images: scan {result.scan.median:6.2f} s, audit {result.audit.median:6.2f} s "
                  f"(median of {repeats})", flush=True)

        print()
        print(f"scan_dataset (workers = {common.usable_cores()} threads) and audit_dataset, median seconds;")
        print("growth = (time / time at the smallest size) / (images / smallest size); 1.0 = linear.")
        print("series = synthetic series generated; clusters = near-duplicate clusters the audit found.")
        print(results_table(results))
        print()
        for line in verdicts(results):
            print(line)
        profile_text = None
        if arguments.profile:
            profile_text = profile(roots[arguments.sizes[-1]])
            print()
            print(f"cProfile of inspect_image on every file (1 thread) and audit_dataset, {arguments.sizes[-1]:,} images:")
            print(profile_text)
        elapsed = time.perf_counter() - started
        print(f"Benchmark took {elapsed:.0f} s ({generation_seconds:.0f} s preparing data).")
        common.write_json(
            arguments.json,
            {
                "benchmark": "audit",
                "machine": info,
                "work_dir": str(work_dir),
                "image_size": IMAGE_SIZE,
                "jpeg_quality": JPEG_QUALITY,
                "warm_page_cache": True,
                "results": [
                    {
                        "images": result.images,
                        "series": result.series,
                        "near_duplicate_clusters": result.near_duplicate_clusters,
                        "exact_duplicate_groups": result.exact_duplicate_groups,
                        "scan_seconds": list(result.scan.seconds),
                        "audit_seconds": list(result.audit.seconds),
                        "scan_median_s": result.scan.median,
                        "audit_median_s": result.audit.median,
                        "total_s": result.total,
                        "images_per_s": result.images / result.total,
                    }
                    for result in results
                ],
                "verdicts": verdicts(results),
                "profile": profile_text,
                "generation_seconds": generation_seconds,
                "elapsed_seconds": elapsed,
            },
        )
    finally:
        if arguments.clean:
            remove_work_dir(work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
