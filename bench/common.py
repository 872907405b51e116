"""Helpers shared by the benchmarks: timing, the machine header, tables and JSON results.

Import this module before TensorFlow: it sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless already set)
and puts the repository root on ``sys.path`` so that ``kidney_lab`` imports from a checkout that
is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The public sample of real slices that tests and benchmarks may read (never copied).
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "ct-kidney-sample"

# The libraries whose versions every result names, and the distributions that provide them.
_VERSIONED_PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
    "keras": ("keras",),
    "pillow": ("pillow",),
}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated runs of one piece of work.

    Attributes:
        seconds: Every run's time, in seconds, in the order they ran.
    """

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median run time in seconds."""
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median: how noisy the runs were (0 for a single run)."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median > 0 else 0.0


def time_repeated(work: Callable[[], object], repeats: int) -> tuple[Timing, object]:
    """Run ``work`` ``repeats`` times, timing each run with :func:`time.perf_counter`.

    Returns:
        The timings and the value the last run returned.

    Raises:
        ValueError: ``repeats`` is below 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    seconds: list[float] = []
    result: object = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds)), result


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, object]:
    """The machine and library versions a result was measured with.

    Versions come from the installed package metadata, so TensorFlow is not imported (a
    benchmark that forks worker processes must not import it first).
    """
    info: dict[str, object] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "memory_gib": round(_memory_bytes() / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name, distributions in _VERSIONED_PACKAGES.items():
        info[name] = _installed_version(distributions)
    return info


def format_header(title: str, info: dict[str, object]) -> str:
    """A few lines naming the benchmark, the machine and the versions."""
    versions = ", ".join(
        f"{name} {info[name]}" for name in ("python", *_VERSIONED_PACKAGES) if name in info
    )
    lines = [
        f"== {title} ==",
        f"{info['date']}  {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB RAM",
        versions,
    ]
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table; numbers are right-aligned, text left-aligned."""
    cells = [[str(header) for header in headers]]
    numeric = [True] * len(headers)
    for row in rows:
        cells.append([_format_cell(value) for value in row])
        for column, value in enumerate(row):
            if not isinstance(value, (int, float)):
                numeric[column] = False
    widths = [max(len(line[column]) for line in cells) for column in range(len(headers))]

    def render(line: list[str]) -> str:
        return "  ".join(
            text.rjust(width) if is_number else text.ljust(width)
            for text, width, is_number in zip(line, widths, numeric)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(cells[0]), rule, *(render(line) for line in cells[1:])])


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json FILE`` option every benchmark takes."""
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")


def write_json(path: Path | None, payload: dict[str, object]) -> None:
    """Write ``payload`` to ``path`` as indented JSON (nothing when ``path`` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(temporary, path)
    print(f"Results written to {path.resolve()}")


def read_files(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Read every file once (to bring it into the OS page cache) and return the bytes read."""
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total


def _format_cell(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _installed_version(distributions: tuple[str, ...]) -> str:
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
