"""Run every benchmark in turn, keep what each printed, and write bench/RESULTS.md.

Each benchmark runs in its own process (so one's threads and caches cannot slow the next) with
its default arguments; ``bench/out/<name>.txt`` gets what it printed and ``bench/out/<name>.json``
its result (bench/out/ is ignored by git). ``bench/RESULTS.md`` is then written from those files:
the machine and versions, each benchmark's tables and target lines exactly as printed (every
figure a median of repeated runs, every comparison a ratio measured in the same run), and a
summary of the target lines. It is committed, so it always shows the last full run.

Run from the repository root::

    python bench/run_all.py [--only audit,pipeline,training,explain] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import common

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
BENCHMARKS = ("audit", "pipeline", "training", "explain")
TITLES = {
    "audit": "Scan and audit scaling (bench_audit.py)",
    "pipeline": "Input pipeline and training steps (bench_pipeline.py)",
    "training": "Training throughput per model, pipeline against memory (bench_training.py)",
    "explain": "Explanations, the Compare page's hot path (bench_explain.py)",
}
# The lines that judge a target ("... met", "... NOT met") or sum up a comparison or a memory figure.
SUMMARY_LINE = re.compile(r"\b(NOT )?met\b|median over models|^Cold start|^Peak RSS")


def run(name: str) -> dict[str, object]:
    """Run ``bench/bench_<name>.py``, echoing and saving its output.

    Returns:
        The benchmark's name, exit status, wall-clock seconds and printed output.
    """
    script = BENCH_DIR / f"bench_{name}.py"
    command = [sys.executable, str(script), "--json", str(OUT_DIR / f"{name}.json")]
    start = time.perf_counter()
    lines: list[str] = []
    with open(OUT_DIR / f"{name}.txt", "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout or ():
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
    seconds = time.perf_counter() - start
    print(f"[{name}: exit status {process.returncode}, {seconds:.0f} s; "
          f"output in {OUT_DIR / (name + '.txt')}]\n", flush=True)
    return {"name": name, "status": process.returncode, "seconds": seconds, "output": "".join(lines)}


def verdict_lines(output: str) -> list[str]:
    """The lines of a benchmark's output that judge a target or sum up a comparison."""
    return [line.strip() for line in output.splitlines() if SUMMARY_LINE.search(line.strip())]


def render_results(results: list[dict[str, object]], info: dict[str, object]) -> str:
    """RESULTS.md: the machine, a summary of the target lines, then each benchmark's output."""
    versions = ", ".join(f"{name} {info[name]}" for name in ("python", "numpy", "tensorflow", "keras", "pillow"))
    parts = [
        "# Benchmark results",
        "",
        "Written by `python bench/run_all.py` from what the benchmarks printed in one run; do not "
        "edit by hand. How each figure is measured: `bench/README.md`.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB RAM, {info['platform']}",
        f"- Versions: {versions}",
        "",
        "## Targets and summary",
        "",
    ]
    for result in results:
        lines = verdict_lines(str(result["output"]))
        status = "" if result["status"] == 0 else f" (exit status {result['status']})"
        parts.append(f"**{result['name']}**{status}, {result['seconds']:.0f} s:")
        parts.append("")
        parts.extend(f"- {line}" for line in lines or ["no target line printed"])
        parts.append("")
    for result in results:
        parts += [f"## {TITLES[str(result['name'])]}", "", "```", str(result["output"]).rstrip(), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated benchmarks to run (default %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE,
                        help="where to write the Markdown summary (default bench/RESULTS.md)")
    arguments = parser.parse_args(argv)
    names = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    OUT_DIR.mkdir(exist_ok=True)
    info = common.machine_info()
    results = [run(name) for name in names]
    text = render_results(results, info)
    temporary = arguments.results.with_name(arguments.results.name + ".tmp")
    temporary.write_text(text + "\n")
    temporary.replace(arguments.results)
    print(f"Results written to {arguments.results.resolve()}")
    (OUT_DIR / "run_all.json").write_text(json.dumps(
        {"machine": info, "runs": [{key: value for key, value in result.items() if key != "output"}
                                   for result in results]}, indent=2) + "\n")
    return max((int(result["status"]) for result in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
