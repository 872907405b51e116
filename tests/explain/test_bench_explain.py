"""bench/bench_explain.py still runs (quick mode, one model) and prints its verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_explanation_benchmark_runs_in_quick_mode(tmp_path) -> None:
    report = tmp_path / "explain.json"
    completed = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "bench_explain.py"), "--quick", "--models", "vit",
         "--json", str(report)],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for line in ("(c)/(a) = ", "(b)/(c) = ", "(b')/(c) = ", "(d) Compare page", "Cold start (fresh process)"):
        assert line in completed.stdout
    result = json.loads(report.read_text())
    assert result["benchmark"] == "explain" and result["models"] == ["vit"] and result["quick"]
    assert result["per_model"]["vit"]["image_size"] == 80
    for key in ("floor_seconds", "ours_seconds", "naive_seconds", "naive_cheapest_seconds", "page_seconds"):
        assert result[key] > 0
    assert result["cold_start"]["first_result_seconds"] > result["cold_start"]["second_result_seconds"]
