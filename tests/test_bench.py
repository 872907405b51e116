"""The benchmarks still run (at toy sizes) and print their verdicts; their figures come from bench/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROJECT / "bench" / script), *arguments], cwd=PROJECT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_audit_benchmark_runs(tmp_path):
    result = run_bench("bench_audit.py", "--sizes", "100,200", "--work-dir", str(tmp_path / "data"),
                       "--json", str(tmp_path / "audit.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Growth 100 -> 200 images" in result.stdout
    assert json.loads((tmp_path / "audit.json").read_text())["benchmark"] == "audit"


@pytest.mark.slow
@pytest.mark.realdata
def test_pipeline_benchmark_runs(real_sample, tmp_path):
    result = run_bench("bench_pipeline.py", "--images", "64", "--train-images", "64", "--rounds", "1",
                       "--repeats", "1", "--data", str(real_sample), "--json", str(tmp_path / "pipeline.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Training input, ours cached epoch / ImageDataGenerator" in result.stdout
    assert "Training steps/s, (i) / (ii)" in result.stdout
    assert json.loads((tmp_path / "pipeline.json").read_text())["benchmark"] == "pipeline"


@pytest.mark.slow
def test_training_benchmark_runs(tmp_path):
    result = run_bench("bench_training.py", "--models", "vit", "--img-size", "32", "--per-class", "8",
                       "--batch-size", "8", "--steps", "3", "--repeats", "1",
                       "--json", str(tmp_path / "training.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Pipeline / in-memory: median over models" in result.stdout
    written = json.loads((tmp_path / "training.json").read_text())
    assert written["benchmark"] == "training"
    assert [model["name"] for model in written["models"]] == ["vit"]
    assert written["models"][0]["pipeline_images_per_second"] > 0


@pytest.mark.slow
def test_app_benchmark_runs(tmp_path):
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("/usr/bin/chromium is absent; install it with `apt-get install -y chromium` (.ci/run does)")
    result = run_bench("bench_app.py", "--models", "vit", "--repeats", "1", "--json", str(tmp_path / "app.json"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "App process peak resident memory" in result.stdout
    written = json.loads((tmp_path / "app.json").read_text())
    assert written["benchmark"] == "app" and len(written["warm_seconds"]) == 1
    assert 0 < written["memory_after"]["peak_rss_mib"]


def test_run_all_keeps_the_committed_sections_of_benchmarks_it_did_not_run(tmp_path, monkeypatch):
    # A fresh checkout has no bench/out/: `run_all.py --only explain` must still keep the other
    # benchmarks' sections of RESULTS.md rather than drop them.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import run_all

    monkeypatch.setattr(run_all, "OUT_DIR", tmp_path / "empty-out")
    output = "== audit ==\nFull dataset: 6.2 s: met.\nsome table\n"
    info = {"date": "today", "cpu": "cpu", "cores": 2, "memory_gib": 1, "platform": "linux",
            **{name: "1" for name in ("python", "numpy", "tensorflow", "keras", "pillow")}}
    results = tmp_path / "RESULTS.md"
    results.write_text(run_all.render_results([{"name": "audit", "status": 0, "seconds": 126.0, "output": output}], info))
    kept = run_all.earlier("audit", results)
    assert kept == {"name": "audit", "status": 0, "seconds": 126.0, "output": output, "earlier": True}
    assert run_all.earlier("app", results) is None


@pytest.mark.slow
def test_cv_benchmark_runs(tmp_path):
    result = run_bench("bench_cv.py", "--model", "vit", "--folds", "2", "--size", "32", "--per-class", "6",
                       "--json", str(tmp_path / "cv.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CV of vit over 2 folds / 2 x one fold" in result.stdout
    payload = json.loads((tmp_path / "cv.json").read_text())
    assert payload["benchmark"] == "cv" and len(payload["single_seconds"]) == 2
