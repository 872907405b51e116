"""The command line: ``python -m kidney_lab <command> ...``.

Each command prints a readable result; ``--json FILE`` also writes a machine-readable one (paths
absolute). Exit status 0 on success; on failure one line on stderr and a non-zero status, never
a traceback (set ``KIDNEY_LAB_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from kidney_lab import __version__
from kidney_lab.errors import KidneyLabError
from kidney_lab.fileio import atomic_write_json

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if not hasattr(arguments, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        result = arguments.handler(arguments)
        if getattr(arguments, "json", None):
            atomic_write_json(arguments.json, result)
        return getattr(arguments, "exit_status", 0)
    except KidneyLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("KIDNEY_LAB_DEBUG"):
            raise
        print(
            f"error: unexpected {type(error).__name__}: {error} "
            "(this is a bug; rerun with KIDNEY_LAB_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="python -m kidney_lab",
        description="Compare deep-learning classifiers of kidney CT slices honestly.",
    )
    parser.add_argument("--version", action="version", version=f"kidney_lab {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    data = commands.add_parser("data", help="make, audit, split or fetch a dataset")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")

    phantom = data_commands.add_parser(
        "phantom", help="write synthetic CT-like phantoms in the Kaggle folder layout"
    )
    phantom.add_argument("--out", required=True, type=Path, help="output folder")
    phantom.add_argument("--per-class", type=_positive_int, default=100, help="images per class (100)")
    phantom.add_argument("--size", type=_positive_int, default=256, help="image side in pixels (256)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (0)")
    phantom.add_argument("--field-of-view", choices=("abdomen", "kidneys"), default="abdomen",
                         help="abdomen: the whole slice (default); kidneys: zoomed onto both kidneys")
    _add_json(phantom)
    phantom.set_defaults(handler=_run_phantom)

    audit = data_commands.add_parser("audit", help="find duplicates, label conflicts and near-duplicates")
    audit.add_argument("dir", type=Path, help="dataset folder (or any folder above it)")
    audit.add_argument("--threshold", type=int, default=None, help="near-duplicate Hamming threshold in bits of 256 (20)")
    _add_workspace(audit)
    _add_json(audit)
    audit.set_defaults(handler=_run_audit)

    split = data_commands.add_parser("split", help="split into train/val/test and store the manifest")
    split.add_argument("dir", type=Path, help="dataset folder (or any folder above it)")
    split.add_argument("--strategy", choices=("random", "grouped"), default="grouped",
                       help="grouped keeps near-duplicate clusters on one side (default); random is image-level")
    split.add_argument("--seed", type=int, default=0, help="random seed (0)")
    split.add_argument("--val-fraction", type=float, default=0.15, help="validation fraction (0.15)")
    split.add_argument("--test-fraction", type=float, default=0.15, help="test fraction (0.15)")
    _add_workspace(split)
    _add_json(split)
    split.set_defaults(handler=_run_split)

    fetch = data_commands.add_parser("fetch", help="download the Kaggle dataset (needs kagglehub and internet)")
    fetch.add_argument("--out", type=Path, default=Path("data"), help="output folder (./data)")
    _add_json(fetch)
    fetch.set_defaults(handler=_run_fetch)

    train = commands.add_parser("train", help="train models on one split and evaluate them on its test images")
    train.add_argument("--data", required=True, type=Path, help="dataset folder (Kaggle layout, or a folder above it)")
    train.add_argument("--models", default="all", help="all (default), or comma-separated registry names; list them with the models command")
    train.add_argument("--epochs", type=_positive_int, default=10, help="maximum epochs per model (10)")
    train.add_argument("--img-size", type=_positive_int, default=None,
                       help="input side in pixels (default: each model's own, 299 for InceptionV3, 224 otherwise)")
    train.add_argument("--split", choices=("random", "grouped"), default="grouped",
                       help="grouped keeps near-duplicate clusters on one side (default); random is image-level")
    train.add_argument("--weights", choices=("auto", "imagenet", "none"), default="auto",
                       help="auto: ImageNet when it can be downloaded, else random (default); imagenet: fail without; none: random")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch and device (32)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (0.001)")
    train.add_argument("--lr-schedule", choices=("plateau", "cosine"), default="plateau",
                       help="plateau: halve when validation loss stalls (default); cosine: decay smoothly to 1/20")
    train.add_argument("--seed", type=int, default=0, help="random seed of split, initialisation and augmentation (0)")
    train.add_argument("--patience", type=_positive_int, default=5, help="early-stopping patience in epochs (5)")
    train.add_argument("--no-augmentation", action="store_true", help="train without random flips, rotations, zoom, brightness and contrast")
    train.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto",
                       help="float16 compute; auto: on only with a GPU")
    train.add_argument("--xla", choices=("auto", "on", "off"), default="auto", help="XLA compilation; auto: on only with a GPU")
    train.add_argument("--strategy", choices=("auto", "one", "mirrored", "multiworker"), default="auto",
                       help="auto: all GPUs when there are several; multiworker reads TF_CONFIG")
    train.add_argument("--study-id", default=None, help=argparse.SUPPRESS)
    _add_workspace(train)
    _add_json(train)
    train.set_defaults(handler=_run_train)

    models = commands.add_parser("models", help="list the registry's models and their facts")
    _add_json(models)
    models.set_defaults(handler=_run_models)

    demo = commands.add_parser(
        "demo", help="build the demo study: phantoms in the workspace and all five models trained on them"
    )
    demo.add_argument("--per-class", type=_positive_int, default=None, help="phantoms per class (400)")
    demo.add_argument("--size", type=_positive_int, default=None, help="phantom and model input side in pixels (96)")
    demo.add_argument("--epochs", type=_positive_int, default=None, help="epochs of every model (default: each model's recipe in kidney_lab/demo.py)")
    demo.add_argument("--models", default="all", help="all (default), or comma-separated registry names")
    demo.add_argument("--seed", type=int, default=None, help="random seed (0)")
    _add_workspace(demo)
    _add_json(demo)
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_phantom(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.phantom import write_phantom_dataset

    started = time.perf_counter()
    root = write_phantom_dataset(arguments.out, arguments.per_class, size=arguments.size, seed=arguments.seed,
                                 field_of_view=arguments.field_of_view)
    images = 4 * arguments.per_class
    print(f"Wrote {images} phantoms ({arguments.size}x{arguments.size}) to {root} "
          f"in {time.perf_counter() - started:.1f} s; masks in {root.parent / 'masks'}")
    return {"root": str(root.resolve()), "masks": str((root.parent / "masks").resolve()),
            "images": images, "per_class": arguments.per_class, "size": arguments.size, "seed": arguments.seed}


def _run_audit(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.audit import NEAR_DUPLICATE_THRESHOLD, audit_dataset
    from kidney_lab.workspace import WorkspaceError, prepare_workspace

    try:
        workspace = prepare_workspace(arguments.workspace)
    except WorkspaceError:
        workspace = None  # An audit only reads; without a workspace it just has no cache.
    report = audit_dataset(_scan(arguments.dir, workspace), threshold=_threshold(arguments, NEAR_DUPLICATE_THRESHOLD))
    print(report.format_report())
    return report.to_dict()


def _run_split(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.audit import audit_dataset
    from kidney_lab.data.split import get_or_make_split
    from kidney_lab.workspace import prepare_workspace

    workspace = prepare_workspace(arguments.workspace)
    report = audit_dataset(_scan(arguments.dir, workspace))
    split, manifest = get_or_make_split(
        report, workspace, arguments.strategy, seed=arguments.seed,
        val_fraction=arguments.val_fraction, test_fraction=arguments.test_fraction,
    )
    print(split.format_report())
    print(f"Manifest {manifest}")
    return split.to_dict(manifest.resolve())


def _start_tensorflow_quietly() -> None:
    """Import TensorFlow and look for devices with stderr muted at the file-descriptor level.

    TensorFlow's C++ start-up messages (oneDNN, CUDA stubs, "failed call to cuInit" on a machine
    without a GPU) are written before its log settings take effect, so they would bury the one
    line a failing command prints. Python exceptions still propagate.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow

            tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _run_train(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.models.registry import parse_model_names
    from kidney_lab.training.engine import TrainConfig, train

    switch = {"auto": None, "on": True, "off": False}
    config = TrainConfig(
        data=arguments.data,
        models=tuple(parse_model_names(arguments.models)),
        epochs=arguments.epochs,
        image_size=arguments.img_size,
        split=arguments.split,
        weights=arguments.weights,
        batch_size=arguments.batch_size,
        learning_rate=arguments.lr,
        lr_schedule=arguments.lr_schedule,
        augmentation=not arguments.no_augmentation,
        seed=arguments.seed,
        patience=arguments.patience,
        mixed_precision=switch[arguments.mixed_precision],
        xla=switch[arguments.xla],
        strategy=arguments.strategy,
        workspace=arguments.workspace,
        study_id=arguments.study_id,
    )
    result = train(config, listener=_TrainingProgress())
    print(_format_study(result))
    if not result.ok:
        arguments.exit_status = EXIT_FAILURE
    return result.to_dict()


def _format_study(result) -> str:
    lines = [f"Study {result.study_id} (split {result.split_id})"]
    for outcome in result.runs:
        score = ""
        if outcome.metrics:
            score = f"test accuracy {outcome.metrics['accuracy']:.3f} on {outcome.metrics['images']} images"
        lines.append(f"  {outcome.model:<15} {outcome.status:<10} {score or outcome.error or ''}  {outcome.path}")
    return "\n".join(lines)


class _TrainingProgress:
    """Draws one progress line per model: redrawn in place on a terminal, per epoch otherwise."""

    def __init__(self) -> None:
        self.terminal = sys.stderr.isatty()
        self.last: dict[str, tuple] = {}

    def __call__(self, run_id: str, status: dict[str, Any]) -> None:
        model = status.get("model") or run_id
        state, phase = status.get("state"), status.get("phase", "")
        epoch, epochs = status.get("epoch"), status.get("epochs")
        step, steps = status.get("step") or 0, status.get("steps") or 0
        if state not in ("running", "queued"):
            line = f"{model}: {state}" + (f" ({status['error']})" if status.get("error") else "")
        else:
            line = f"{model}: {phase}"
            if epoch and epochs:
                done = ((epoch - 1) * steps + step) / max(1, epochs * steps) if steps else 0
                bar = "#" * int(done * 20)
                line += f" [{bar:<20}] epoch {epoch}/{epochs} step {step}/{steps}"
                if status.get("loss") is not None:
                    line += f" loss {status['loss']:.3f} acc {status.get('accuracy') or 0:.3f}"
                if status.get("images_per_second"):
                    line += f" {status['images_per_second']:.0f} img/s"
                if status.get("eta_seconds") is not None:
                    line += f" ETA {status['eta_seconds']:.0f}s"
        key = (state, phase, status.get("epochs_finished"))
        if self.terminal:
            final = state not in ("running", "queued")
            print(f"\r{line[:150]:<150}", end="\n" if final else "", file=sys.stderr, flush=True)
        elif self.last.get(run_id) != key:
            self.last[run_id] = key
            print(line, file=sys.stderr, flush=True)


def _run_models(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.models.registry import REGISTRY, describe

    print(f"{'name':<15} {'model':<19} {'size':>4} {'min':>4}  {'Grad-CAM layer':<18} preprocessing")
    for spec in REGISTRY.values():
        print(f"{spec.name:<15} {spec.display_name:<19} {spec.default_size:>4} {spec.min_size:>4}  "
              f"{spec.cam_layer:<18} {spec.preprocessing}")
    return {"models": [describe(spec) for spec in REGISTRY.values()]}


def _run_fetch(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.fetch import fetch_dataset

    root = fetch_dataset(arguments.out)
    print(f"Dataset ready in {root}")
    return {"root": str(root)}


def _run_demo(arguments: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    _start_tensorflow_quietly()

    from kidney_lab.demo import DemoSettings, run_demo, summary
    from kidney_lab.models.registry import parse_model_names

    chosen = {
        "per_class": arguments.per_class, "image_size": arguments.size,
        "epochs": arguments.epochs, "seed": arguments.seed,
    }
    settings = dataclasses.replace(
        DemoSettings(models=tuple(parse_model_names(arguments.models))),
        **{key: value for key, value in chosen.items() if value is not None},
    )
    started = time.perf_counter()
    print(f"Demo: {4 * settings.per_class} phantoms ({settings.image_size} px, {settings.field_of_view} view), "
          f"{len(settings.models)} models trained from scratch on this machine, one after the other.",
          file=sys.stderr)
    result = run_demo(settings, arguments.workspace, listener=_TrainingProgress())
    seconds = time.perf_counter() - started
    print(_format_study(result))
    print(f"Demo finished in {seconds:.0f} s. Start the app with: streamlit run streamlit_app.py")
    if not result.ok:
        arguments.exit_status = EXIT_FAILURE
    return dict(result.to_dict(), seconds=round(seconds, 1), models=summary(result))


def _scan(folder: Path, workspace: Path | None):
    """Scan a dataset, with the workspace's scan cache when there is a workspace."""
    from kidney_lab.data.discover import scan_dataset
    from kidney_lab.workspace import CACHE_FOLDER

    cache = workspace / CACHE_FOLDER if workspace is not None else None
    return scan_dataset(folder, progress=_progress_printer("Reading images"), cache=cache)


def _threshold(arguments: argparse.Namespace, default: int) -> int:
    threshold = default if arguments.threshold is None else arguments.threshold
    if not 0 <= threshold < 256:
        raise KidneyLabError(f"--threshold must be between 0 and 255 bits, got {threshold}.")
    return threshold


def _progress_printer(label: str) -> Callable[[int, int], None] | None:
    """A progress line on stderr, redrawn in place, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.2:
            last[0] = now
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON to FILE")


def _add_workspace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace folder (default: $KIDNEY_LAB_WORKSPACE or ./trained_models)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
