"""Run every benchmark in turn and keep its printed output and JSON result in bench/out/.

Each benchmark runs in its own process (so one's threads and caches cannot slow the next) with
its default arguments; ``bench/out/<name>.txt`` gets what it printed and ``bench/out/<name>.json``
its result. bench/out/ is ignored by git.

Run from the repository root::

    python bench/run_all.py [--only audit,pipeline,training,explain]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
BENCHMARKS = ("audit", "pipeline", "training", "explain")


def run(name: str) -> int:
    """Run ``bench/bench_<name>.py``, echoing and saving its output; return its exit status."""
    script = BENCH_DIR / f"bench_{name}.py"
    command = [sys.executable, str(script), "--json", str(OUT_DIR / f"{name}.json")]
    start = time.perf_counter()
    with open(OUT_DIR / f"{name}.txt", "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout or ():
            sys.stdout.write(line)
            log.write(line)
    print(f"[{name}: exit status {process.returncode}, {time.perf_counter() - start:.0f} s; "
          f"output in {OUT_DIR / (name + '.txt')}]\n", flush=True)
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated benchmarks to run (default %(default)s)")
    arguments = parser.parse_args(argv)
    names = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    OUT_DIR.mkdir(exist_ok=True)
    statuses = [run(name) for name in names]
    return max(statuses, default=0)


if __name__ == "__main__":
    sys.exit(main())
