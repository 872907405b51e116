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

    demo = commands.add_parser("demo", help="build the built-in demo: phantoms in the workspace, audited and split")
    demo.add_argument("--per-class", type=_positive_int, default=60, help="phantoms per class (60)")
    demo.add_argument("--size", type=_positive_int, default=128, help="phantom side in pixels (128)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    _add_workspace(demo)
    _add_json(demo)
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_phantom(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.phantom import write_phantom_dataset

    started = time.perf_counter()
    root = write_phantom_dataset(arguments.out, arguments.per_class, size=arguments.size, seed=arguments.seed)
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


def _run_fetch(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.fetch import fetch_dataset

    root = fetch_dataset(arguments.out)
    print(f"Dataset ready in {root}")
    return {"root": str(root)}


def _run_demo(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.audit import audit_dataset
    from kidney_lab.data.phantom import write_phantom_dataset
    from kidney_lab.data.split import get_or_make_split
    from kidney_lab.workspace import DEMO_DATA_FOLDER, prepare_workspace

    workspace = prepare_workspace(arguments.workspace)
    out = workspace / DEMO_DATA_FOLDER
    print(f"Writing {4 * arguments.per_class} phantoms to {out} ...")
    root = write_phantom_dataset(out, arguments.per_class, size=arguments.size, seed=arguments.seed)
    report = audit_dataset(_scan(root, workspace))
    split, manifest = get_or_make_split(report, workspace, "grouped", seed=arguments.seed)
    print(split.format_report())
    print(f"Demo data ready: {root}\nSplit manifest: {manifest}")
    return {"root": str(root), "split": split.to_dict(manifest.resolve())}


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
