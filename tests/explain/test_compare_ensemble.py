"""The ensemble's verdict on one scan (kidney_lab.explain.compare.ensemble_result) and the
``ensemble`` entry of ``python -m kidney_lab explain --json``."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from kidney_lab import cli
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import calibration
from kidney_lab.explain import compare
from tests.explain.test_cli_explain import upload

SHAPE = (6, 8)


def _result(name: str, probabilities: tuple[float, ...], heat: np.ndarray, target: str | None = None):
    shares = dict(zip(CLASS_NAMES, probabilities))
    predicted = max(shares, key=shares.get)
    return types.SimpleNamespace(run_id=f"run-{name}", model=name, display_name=name.upper(), method="gradcam",
                                 predicted=predicted, target=target or predicted, probabilities=shares,
                                 heatmap=heat.astype(np.float32))


def _map(row: int) -> np.ndarray:
    heat = np.zeros(SHAPE, dtype=np.float32)
    heat[row] = 1.0
    return heat


def test_the_verdict_is_the_mean_of_calibrated_probabilities_and_a_weighted_map():
    first = _result("a", (0.7, 0.1, 0.1, 0.1), _map(0))
    second = _result("b", (0.6, 0.3, 0.05, 0.05), _map(5))
    verdict = compare.ensemble_result([first, second], {"run-a": 2.0})
    softened = calibration.apply_temperature([list(first.probabilities.values())], 2.0)[0]
    expected = (softened + np.array(list(second.probabilities.values()))) / 2
    assert list(verdict.probabilities.values()) == pytest.approx(expected.tolist())
    assert verdict.predicted == "Cyst" and verdict.map_class == "Cyst" and verdict.members == ("run-a", "run-b")
    assert verdict.temperatures == {"run-a": 2.0, "run-b": 1.0}
    # Each map weighs by its member's calibrated probability of Cyst; the sum is scaled to [0, 1].
    weights = np.array([softened[0], 0.6]) / (softened[0] + 0.6)
    assert list(verdict.map_weights.values()) == pytest.approx(weights.tolist())
    assert verdict.heatmap.shape == SHAPE and verdict.heatmap.max() == 1.0
    assert verdict.heatmap[5, 0] == 1.0 and verdict.heatmap[0, 0] == pytest.approx(weights[0] / weights[1])
    assert verdict.notes == ("No calibration for B: used as they are.",)
    assert compare.ensemble_result([first]) is None


def test_a_member_that_explained_another_class_is_explained_again_or_noted():
    cyst = _result("a", (0.8, 0.1, 0.05, 0.05), _map(0))
    normal = _result("b", (0.3, 0.6, 0.05, 0.05), _map(3))
    asked = []

    def again(result, label):
        asked.append((result.run_id, label))
        return types.SimpleNamespace(heatmap=_map(2), target=label)

    verdict = compare.ensemble_result([cyst, normal], {}, explain_class=again)
    assert verdict.predicted == "Cyst" and asked == [("run-b", "Cyst")]
    assert set(verdict.map_weights) == {"run-a", "run-b"} and verdict.heatmap[2, 0] > 0
    assert verdict.heatmap[3].max() == 0.0  # B's own map (of Normal) is not used.
    left_out = compare.ensemble_result([cyst, normal], {})
    assert list(left_out.map_weights) == ["run-a"]
    assert left_out.notes == ("None of the 2 models has a calibration, so their probabilities are averaged as they are.",
                              "Left out of the map of Cyst: B (a map of Normal).")
    # A map of another class can be asked for; a failing re-explanation is a note, not an error.
    other = compare.ensemble_result([cyst, normal], {}, map_class="normal",
                                    explain_class=lambda result, label: 1 / 0)
    assert other.map_class == "Normal" and list(other.map_weights) == ["run-b"]
    assert "could not be explained for Normal: division by zero" in other.notes[-1]
    assert other.to_dict()["members"] == ["run-a", "run-b"] and "heatmap" not in other.to_dict()


def test_explain_json_gains_the_ensemble_of_two_runs(vit_run, run_copy, tmp_path, capsys):
    # Training writes each run's calibration.json; the first member here has none (T = 1).
    vit_run = run_copy("20261126-101512-vit-0f0f0f")
    runs.calibration_path(vit_run).unlink(missing_ok=True)
    second = run_copy("20261126-101512-vit-0e0e0e")
    fileio.atomic_write_text(runs.calibration_path(second), calibration.to_json({"temperature": 3.0}))
    image, out, report = upload(tmp_path), tmp_path / "out", tmp_path / "explain.json"
    status = cli.main(["explain", str(image), "--runs", f"{vit_run},{second}", "--out", str(out), "--json", str(report)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads(report.read_text())
    entry = result["ensemble"]
    assert entry["members"] == [vit_run.name, second.name]
    assert entry["temperatures"] == {vit_run.name: 1.0, second.name: 3.0}
    raw = [list(row["probabilities"].values()) for row in result["results"]]
    expected = (np.array(raw[0]) + calibration.apply_temperature([raw[1]], 3.0)[0]) / 2
    assert list(entry["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert entry["predicted"] == CLASS_NAMES[int(np.argmax(expected))]
    assert (out / f"ensemble-gradcam-{entry['map_class'].lower()}-overlay.png").is_file()
    assert entry["overlay"] == str(out / f"ensemble-gradcam-{entry['map_class'].lower()}-overlay.png")
    assert "Ensemble" in captured.out and "calibrated mean of 2 runs" in captured.out
