"""Run every benchmark in turn, keep what each printed, and write bench/RESULTS.md.

Each benchmark runs in its own process (so one's threads and caches cannot slow the next) with
its default arguments; ``bench/out/<name>.txt`` gets what it printed and ``bench/out/<name>.json``
its result (bench/out/ is ignored by git). ``bench/RESULTS.md`` is then written from those files:
the machine and versions, each benchmark's tables and target lines exactly as printed (every
figure a median of repeated runs, every comparison a ratio measured in the same run), and a
summary of the target lines. It is committed, so it always shows the last full run.

Run from the repository root::

    python bench/run_all.py [--only audit,pipeline,training,explain,app] [--results FILE]
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
BENCHMARKS = ("audit", "pipeline", "training", "explain", "app")
TITLES = {
    "audit": "Scan and audit scaling (bench_audit.py)",
    "pipeline": "Input pipeline and training steps (bench_pipeline.py)",
    "training": "Training throughput per model, pipeline against memory (bench_training.py)",
    "explain": "Explanations, the Compare page's hot path (bench_explain.py)",
    "app": "The app: Compare page in Chromium and the app process's memory (bench_app.py)",
}
# The lines that judge a target ("... met", "... NOT met") or sum up a comparison or a memory figure.
# TensorFlow's and absl's own log lines (CUDA probing, oneDNN notices, retracing warnings): kept
# in bench/out/<name>.txt, left out of RESULTS.md.
LOG_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|WARNING:tensorflow:)")
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


def earlier(name: str, results_file: Path = RESULTS_FILE) -> dict[str, object] | None:
    """The last output of a benchmark not run this time: kept in bench/out/, or else (a fresh
    checkout, where bench/out/ is empty) its section of the committed RESULTS.md; None if neither.

    So ``--only app`` refreshes one benchmark and RESULTS.md still shows the others, each with
    the date and machine its own header printed.
    """
    output = OUT_DIR / f"{name}.txt"
    if not output.is_file():
        return from_results(name, results_file)
    recorded: dict[str, object] = {"status": 0, "seconds": 0.0}
    summary = OUT_DIR / "run_all.json"
    if summary.is_file():
        for entry in json.loads(summary.read_text()).get("runs", []):
            if entry.get("name") == name:
                recorded = entry
    return {"name": name, "status": recorded["status"], "seconds": recorded["seconds"],
            "output": output.read_text(), "earlier": True}


def from_results(name: str, results_file: Path) -> dict[str, object] | None:
    """A benchmark's output and seconds as an earlier RESULTS.md shows them (None: not there)."""
    if not results_file.is_file():
        return None
    text = results_file.read_text()
    section = re.search(r"^## " + re.escape(TITLES[name]) + r"\n\n```\n(.*?)\n```$", text, re.S | re.M)
    if section is None:
        return None
    seconds = re.search(r"^\*\*" + re.escape(name) + r"\*\*[^\n]*?, (\d+) s:$", text, re.M)
    return {"name": name, "status": 0, "seconds": float(seconds.group(1)) if seconds else 0.0,
            "output": section.group(1) + "\n", "earlier": True}


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
        if result.get("earlier"):
            status += " (kept from an earlier run of run_all.py; its date is in its header)"
        parts.append(f"**{result['name']}**{status}, {result['seconds']:.0f} s:")
        parts.append("")
        parts.extend(f"- {line}" for line in lines or ["no target line printed"])
        parts.append("")
    for result in results:
        shown = "\n".join(line for line in str(result["output"]).splitlines() if not LOG_NOISE.match(line))
        parts += [f"## {TITLES[str(result['name'])]}", "", "```", shown.rstrip(), "```", ""]
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
    fresh = {name: run(name) for name in names}
    results = [fresh.get(name) or earlier(name, arguments.results) for name in BENCHMARKS]
    results = [result for result in results if result is not None]
    text = render_results(results, info)
    temporary = arguments.results.with_name(arguments.results.name + ".tmp")
    temporary.write_text(text + "\n")
    temporary.replace(arguments.results)
    print(f"Results written to {arguments.results.resolve()}")
    (OUT_DIR / "run_all.json").write_text(json.dumps(
        {"machine": info, "runs": [{key: value for key, value in result.items() if key not in ("output", "earlier")}
                                   for result in results]}, indent=2) + "\n")
    return max((int(result["status"]) for result in fresh.values()), default=0)


if __name__ == "__main__":
    sys.exit(main())
