"""Explanation speed: probabilities and Grad-CAM of all five models on one scan.

The Compare page runs every model on every upload, so this is the program's hot path. For the
registry models (all five by default) at their registry input sizes (InceptionV3 299, the
others 224), built with random weights (``builders.create_model(name, weights="none")``),
saved as ``model.keras`` in run folders made with :mod:`kidney_lab.runs` and loaded back as a
run is, the same scan (a 512x512 abdomen phantom, PNG, read with ``read_scan``) goes through:

(a) the floor: each model's forward pass alone, compiled (``tf.function`` with a fixed input
    signature, warm) on the prepared input; the sum over the models is one round. An eager
    ``model(x)`` is not the floor: on a CPU it is several times slower than compiled;
(b) the naive way: per model ``model.predict(x)`` and then a new tf-keras-vis Gradcam for the
    predicted class, on the same prepared input, built as the library recommends for a softmax
    output: ``Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)`` (it clones the
    model to make its output linear); (b') the same without the modifier, ``Gradcam(model)``
    (no clone, the score is the softmax probability): the cheapest form, printed for reference;
(c) ours, warm: ``kidney_lab.explain.explain(runs, scan, "gradcam")``, probabilities and heat
    maps at the scan's size for every model, input preparation included.

Also: (e) each of the four methods, warm, over all the models (what choosing another method
on the Compare page costs); (d) the Compare page's own work from the uploaded bytes to every overlay drawn
(``read_scan`` on the bytes, ``explain``, ``overlay`` and ``to_png`` per model); the cold
start, measured in a fresh process (importing ``kidney_lab.explain``, then loading every model
from disk to the first result); and peak resident memory of that process and of this one.

Figures are medians of ``--repeats`` rounds (7; ``--naive-repeats`` 3 for (b), which is slow).
Every round times (a) and (c) in alternating order, so load that drifts during the run falls on
both; each naive round times (b) and (b') model by model. Targets: (c)/(a) at most 1.3, (b)/(c)
at least 20, (d) under 1 s.

Run from the repository root::

    python bench/bench_explain.py [--models all] [--repeats 7] [--naive-repeats 3]
                                  [--quick] [--json FILE]

``--quick`` is a smoke test at 80 px with one naive and two other rounds (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # Sets up the environment and sys.path; import before TensorFlow.

DEFAULT_JSON = common.REPO_ROOT / "bench" / "out" / "explain.json"
QUICK_SIZE = 80
SCAN_SIZE = 512
SEED = 0
WARMUP_CALLS = 2
TARGET_FLOOR_RATIO = 1.3
TARGET_NAIVE_RATIO = 20.0
TARGET_PAGE_SECONDS = 1.0


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cold_start(run_dirs: list[str], image: str) -> dict[str, float]:
    """In this (fresh) process: import, then the first and a second explain() of every run."""
    started = time.perf_counter()
    from kidney_lab import explain as explanations

    imported = time.perf_counter()
    first = explanations.explain(run_dirs, image, "gradcam")
    loaded = time.perf_counter()
    second = explanations.explain(run_dirs, image, "gradcam")
    if first.errors or second.errors:
        raise SystemExit(f"cold start failed: {first.errors or second.errors}")
    return {
        "import_seconds": imported - started,
        "first_result_seconds": loaded - imported,
        "second_result_seconds": second.seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def make_runs(models: list[str], size: int | None, workspace: Path) -> dict[str, Path]:
    """One completed run folder per model with a randomly initialised ``model.keras``."""
    import keras

    from kidney_lab import runs
    from kidney_lab.models import builders
    from kidney_lab.training.callbacks import save_atomically

    folders = {}
    for name in models:
        keras.utils.set_random_seed(SEED)
        built = builders.create_model(name, size, "none")
        folder = runs.create_run(workspace, runs.new_run_id(name), {
            "model": name, "display_name": built.spec.display_name, "image_size": built.image_size,
            "weights": built.weights, "note": "bench_explain.py: random weights, never trained",
        })
        save_atomically(built.model, folder / runs.MODEL_FILE)
        runs.mark_finished(folder, runs.COMPLETED)
        folders[name] = folder
        keras.backend.clear_session()
    return folders


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(arguments: argparse.Namespace, folders: dict[str, Path], image_bytes: bytes) -> dict[str, object]:
    """Time (a), (b), (c) and (d) in this process; the runs' models are loaded here."""
    import numpy as np
    import tensorflow as tf
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from kidney_lab import explain as explanations
    from kidney_lab import runs
    from kidney_lab.data import pipeline
    from kidney_lab.data.scan import read_scan
    from kidney_lab.models import builders
    from kidney_lab.models import registry

    scan = read_scan(image_bytes)
    run_dirs = [str(folder) for folder in folders.values()]
    models, floors, inputs = {}, {}, {}
    for name, folder in folders.items():
        model = builders.load_model(folder / runs.MODEL_FILE)
        size = int(model.input_shape[1])
        inputs[name] = tf.constant(pipeline.prepare_scan(scan.image, size))
        floors[name] = tf.function(model, input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)])
        models[name] = model
        for _ in range(WARMUP_CALLS):
            floors[name](inputs[name]).numpy()
    for _ in range(WARMUP_CALLS):
        explanations.explain(run_dirs, scan, "gradcam")

    floor_rounds: list[float] = []
    floor_per_model: dict[str, list[float]] = {name: [] for name in folders}
    ours_rounds: list[float] = []
    ours_per_model: dict[str, list[float]] = {name: [] for name in folders}

    def floor_round() -> None:
        total = 0.0
        for name in folders:
            begun = time.perf_counter()
            floors[name](inputs[name]).numpy()
            elapsed = time.perf_counter() - begun
            floor_per_model[name].append(elapsed)
            total += elapsed
        floor_rounds.append(total)

    def ours_round() -> None:
        report = explanations.explain(run_dirs, scan, "gradcam")
        if report.errors:
            raise SystemExit(f"explain failed: {report.errors}")
        ours_rounds.append(report.seconds)
        for result in report.results:
            ours_per_model[result.model].append(result.seconds)

    for repeat in range(arguments.repeats):
        for work in ((floor_round, ours_round) if repeat % 2 == 0 else (ours_round, floor_round)):
            work()

    def naive(name: str, linear: bool) -> float:
        begun = time.perf_counter()
        pixels = inputs[name].numpy()
        probabilities = models[name].predict(pixels, verbose=0)
        visualizer = Gradcam(models[name], model_modifier=ReplaceToLinear(), clone=True) if linear else Gradcam(models[name])
        visualizer(CategoricalScore([int(np.argmax(probabilities[0]))]), pixels,
                   penultimate_layer=registry.get_spec(name).cam_layer, seek_penultimate_conv_layer=False)
        return time.perf_counter() - begun

    naive_rounds: dict[bool, list[float]] = {True: [], False: []}
    naive_per_model: dict[bool, dict[str, list[float]]] = {True: {name: [] for name in folders},
                                                           False: {name: [] for name in folders}}
    for _ in range(arguments.naive_repeats):
        for linear in (True, False):
            total = 0.0
            for name in folders:
                elapsed = naive(name, linear)
                naive_per_model[linear][name].append(elapsed)
                total += elapsed
            naive_rounds[linear].append(total)

    # (e) Every method, warm: what choosing another method on the Compare page costs.
    method_seconds: dict[str, float] = {}
    for method in explanations.METHODS:
        explanations.explain(run_dirs, scan, method)  # Traces and caches this method's explainers.
        method_seconds[method] = median_of(
            [explanations.explain(run_dirs, scan, method).seconds for _ in range(max(1, arguments.repeats // 2))])

    page_rounds: list[float] = []
    for _ in range(arguments.repeats):
        begun = time.perf_counter()
        uploaded = read_scan(image_bytes, name="upload.png")
        report = explanations.explain(run_dirs, uploaded, "gradcam")
        for result in report.results:
            explanations.to_png(explanations.overlay(uploaded, result.heatmap))
        page_rounds.append(time.perf_counter() - begun)

    return {
        "floor_seconds": median_of(floor_rounds),
        "ours_seconds": median_of(ours_rounds),
        "naive_seconds": median_of(naive_rounds[True]),
        "naive_cheapest_seconds": median_of(naive_rounds[False]),
        "page_seconds": median_of(page_rounds),
        "method_seconds": method_seconds,
        "rounds": {"floor": floor_rounds, "ours": ours_rounds, "naive": naive_rounds[True],
                   "naive_cheapest": naive_rounds[False], "page": page_rounds},
        "per_model": {
            name: {
                "display_name": registry.get_spec(name).display_name,
                "image_size": int(models[name].input_shape[1]),
                "floor_ms": 1000 * median_of(floor_per_model[name]),
                "ours_ms": 1000 * median_of(ours_per_model[name]),
                "naive_ms": 1000 * median_of(naive_per_model[True][name]),
                "naive_cheapest_ms": 1000 * median_of(naive_per_model[False][name]),
            }
            for name in folders
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def verdict(value: float, target: float, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return f"{'met' if met else 'NOT met'} (target {'<=' if at_most else '>='} {target:g})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="all (default) or comma-separated registry names")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of (a), (c) and (d) (7)")
    parser.add_argument("--naive-repeats", type=int, default=3, help="rounds of (b) (3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 80 px, 2 rounds, 1 naive round")
    parser.add_argument("--cold-start", nargs=2, metavar=("RUNS", "IMAGE"), help=argparse.SUPPRESS)
    common.add_json_argument(parser)
    arguments = parser.parse_args(argv)
    if arguments.cold_start:
        print(json.dumps(cold_start(arguments.cold_start[0].split(","), arguments.cold_start[1])))
        return 0
    if arguments.quick:
        arguments.repeats, arguments.naive_repeats = min(arguments.repeats, 2), 1
    if arguments.repeats < 1 or arguments.naive_repeats < 1:
        parser.error("--repeats and --naive-repeats must be at least 1")

    from kidney_lab.data import phantom
    from kidney_lab.explain.render import to_png
    from kidney_lab.models import registry

    info = common.machine_info()
    print(common.format_header("Explanations: probabilities + Grad-CAM of every model on one scan", info))
    load_before = os.getloadavg()
    print(f"Load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          "(the machine may be shared: compare ratios, not absolute times)")
    models = registry.parse_model_names(arguments.models)
    size = QUICK_SIZE if arguments.quick else None
    image_bytes = to_png(phantom.make_phantom("Tumor", size=SCAN_SIZE, seed=SEED).image)

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as temporary:
        folder = Path(temporary)
        image = folder / "scan.png"
        image.write_bytes(image_bytes)
        folders = make_runs(models, size, folder / "workspace")
        environment = dict(os.environ, PYTHONPATH=str(common.REPO_ROOT))
        completed = subprocess.run(
            [sys.executable, __file__, "--cold-start", ",".join(map(str, folders.values())), str(image)],
            capture_output=True, text=True, env=environment, check=False,
        )
        if completed.returncode != 0:
            print(completed.stderr[-3000:], file=sys.stderr)
            return 1
        cold = json.loads(completed.stdout.strip().splitlines()[-1])
        result = measure(arguments, folders, image_bytes)

    rows = [
        (name, row["display_name"], row["image_size"], row["floor_ms"], row["ours_ms"], row["naive_ms"],
         row["naive_cheapest_ms"])
        for name, row in result["per_model"].items()
    ]
    print(f"\nScan {SCAN_SIZE}x{SCAN_SIZE} PNG; medians of {arguments.repeats} rounds ((b), (b'): "
          f"{arguments.naive_repeats}); ms per model")
    print(common.format_table(("model", "name", "size", "(a) floor", "(c) ours", "(b) naive", "(b') cheapest"), rows))
    floor, ours, naive, cheapest, page = (
        result[key] for key in ("floor_seconds", "ours_seconds", "naive_seconds", "naive_cheapest_seconds", "page_seconds"))
    print(f"\n(a) floor, compiled forward passes summed: {floor:.3f} s")
    print(f"(c) ours, probabilities + heat maps of {len(models)} models: {ours:.3f} s")
    print(f"(b) naive, model.predict + new Gradcam(model, ReplaceToLinear(), clone=True) per model: {naive:.3f} s")
    print(f"(b') naive without the modifier, model.predict + new Gradcam(model) per model: {cheapest:.3f} s")
    print(f"(c)/(a) = {ours / floor:.2f}: {verdict(ours / floor, TARGET_FLOOR_RATIO, True)}")
    print(f"(b)/(c) = {naive / ours:.1f}: {verdict(naive / ours, TARGET_NAIVE_RATIO, False)}")
    print(f"(b')/(c) = {cheapest / ours:.1f} (for reference); (b')/(a) = {cheapest / floor:.1f}: "
          "no explainer can beat the floor, so (b')/(c) can be at most this")
    print(f"(d) Compare page, upload bytes to {len(models)} overlays as PNG: {page:.3f} s: "
          f"{verdict(page, TARGET_PAGE_SECONDS, True)}")
    print("(e) every method, warm, probabilities + heat maps of all models: " + ", ".join(
        f"{method} {seconds:.3f} s" for method, seconds in result["method_seconds"].items()))
    print(f"Cold start (fresh process): import {cold['import_seconds']:.1f} s, load {len(models)} models "
          f"from disk to the first result {cold['first_result_seconds']:.1f} s, next call "
          f"{cold['second_result_seconds']:.3f} s; peak RSS {cold['peak_rss_mb']:.0f} MiB")
    print(f"Peak RSS of this process (also holds the floor and naive models): {result['peak_rss_mb']:.0f} MiB")
    load_after = os.getloadavg()
    print(f"Load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    common.write_json(arguments.json, {
        "benchmark": "explain", "machine": info, "models": models, "quick": arguments.quick,
        "repeats": arguments.repeats, "naive_repeats": arguments.naive_repeats,
        "load_average": {"before": load_before, "after": load_after},
        "cold_start": cold, **result,
        "ratios": {"ours_over_floor": ours / floor, "naive_over_ours": naive / ours,
                   "naive_cheapest_over_ours": cheapest / ours},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
