"""What comes with every explanation so that its answer can be doubted: the out-of-distribution
result and calibrated probabilities of each model, the scan's content warnings, the caveats of
compare.trust, and an agreement that never counts flagged models."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kidney_lab import cli
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import content
from kidney_lab.data import pipeline
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import store
from kidney_lab.evaluation import trust as trust_files
from kidney_lab.explain import cam
from kidney_lab.explain import compare
from kidney_lab.models import builders
from kidney_lab.models import ood
from kidney_lab.models import registry
from tests.explain.conftest import lesion_phantom


def noise_png(tmp_path: Path) -> Path:
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(path)
    return path


def test_explain_json_carries_ood_calibration_and_the_scans_warnings(vit_run, tmp_path, capsys) -> None:
    report = tmp_path / "explain.json"
    status = cli.main(["explain", str(noise_png(tmp_path)), "--runs", str(vit_run),
                       "--out", str(tmp_path / "out"), "--json", str(report)])
    printed = capsys.readouterr().out.splitlines()
    assert status == 0
    result = json.loads(report.read_text())
    assert [warning["code"] for warning in result["warnings"]] == [content.NOISE_LIKE]
    assert printed[0] == f"WARNING: {result['warnings'][0]['message']}"
    (row,) = result["results"]
    assert set(row["ood"]) == {"score", "threshold", "flagged"}
    assert row["ood"]["threshold"] == trust_files.read_detector(vit_run).threshold
    assert row["ood"]["flagged"], "uniform noise is far from every phantom the model was trained on"
    assert f"OUT OF DISTRIBUTION (score {row['ood']['score']:.2f} > threshold {row['ood']['threshold']:.2f})  predicted" in printed[1]
    assert row["temperature"] == trust_files.temperature(vit_run)
    calibrated = row["calibrated_probabilities"]
    assert sum(calibrated.values()) == pytest.approx(1.0) and max(calibrated, key=calibrated.get) == row["predicted"]
    assert row["caveats"][0].startswith("OUT OF DISTRIBUTION") and result["scan_is_phantom"] is False
    assert "flags the scan as out of distribution" in result["agreement"]


def test_the_ood_score_comes_from_the_features_of_the_same_pass(vit_run) -> None:
    explainer = cam.load_explainer(vit_run, "gradcam")
    pixels = pipeline.prepare_scan(lesion_phantom("Cyst") / 255.0, explainer.image_size)
    layers = registry.get_spec("vit").ood_layers
    features = ood.pooled_features(builders.load_model(vit_run / runs.MODEL_FILE), pixels, layers=layers)
    np.testing.assert_allclose(explainer.cam(pixels).features, features[0], rtol=1e-4, atol=1e-5)
    result = explainer.explain(lesion_phantom("Cyst"))
    detector = trust_files.read_detector(vit_run)
    assert result.ood["score"] == pytest.approx(float(detector.score(features)[0]), rel=1e-4)
    assert result.ood["threshold"] == detector.threshold


def test_the_detector_is_read_once_per_run_and_again_when_it_changes(run_copy, monkeypatch) -> None:
    cam.clear_cache()
    run = run_copy()
    reads = []
    original = trust_files.read_detector
    monkeypatch.setattr(cam.trust_files, "read_detector", lambda folder: reads.append(folder) or original(folder))
    scan = lesion_phantom("Stone")
    for method in ("gradcam", "layercam", "gradcam"):
        cam.load_explainer(run, method).explain(scan)
    assert len(reads) == 1, "the explainers of one run share its detector, read once"
    path = runs.detector_path(run)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cam.load_explainer(run, "gradcam").explain(scan)
    assert len(reads) == 2, "a detector fitted again (fit-ood) is read again"
    path.unlink()
    assert cam.load_explainer(run, "gradcam").explain(scan).ood is None


def _result(name: str, predicted: str, flagged: bool | None = None, run_dir: str | None = None):
    found = None if flagged is None else {"score": 9.0 if flagged else 1.0, "threshold": 5.0, "flagged": flagged}
    return types.SimpleNamespace(run_id=f"run-{name}", display_name=name, predicted=predicted, ood=found,
                                 run_dir=run_dir)


@pytest.mark.parametrize(("answers", "text", "leader", "count"), [
    ([("A", "Cyst", True), ("B", "Cyst", False), ("C", "Stone", False)],
     "**The 2 unflagged models disagree** (Cyst: B; Stone: C). 1 of 3 models (A) flag the scan as out of "
     "distribution and are not counted.", None, 1),
    ([("A", "Cyst", True), ("B", "Tumor", False), ("C", "Tumor", False)],
     "**2 of 2 unflagged models** predict **Tumor**. 1 of 3 models (A) flag the scan as out of distribution and "
     "are not counted.", "Tumor", 2),
    ([("A", "Cyst", True), ("B", "Cyst", True)],
     "**Every model flags the scan as out of distribution** (A, B): no answer counts.", None, 0),
])
def test_flagged_models_are_never_counted_as_agreeing(answers, text, leader, count) -> None:
    found = compare.agreement([_result(*answer) for answer in answers])
    flagged = sum(1 for answer in answers if answer[2])
    assert (found.text, found.count, found.flagged, found.total) == (text, count, flagged, len(answers))
    assert found.leader == leader
    assert sum(found.votes.values()) == len(answers) - flagged and not found.unanimous


def test_trust_names_a_flag_a_phantom_trained_model_on_a_real_scan_and_a_habitual_model(vit_run, run_copy, tmp_path) -> None:
    habits = trust_files.metrics_caveats(store.load_metrics(vit_run))
    flagged = _result("ViT", "Cyst", True, str(vit_run))
    assert compare.trust(flagged, scan_is_phantom=True) == ["OUT OF DISTRIBUTION (score 9.00 > threshold 5.00)", *habits]
    assert compare.trust(flagged, scan_is_phantom=False)[1] == (
        "trained on synthetic phantoms only and this scan is not one: its answer means nothing for a real CT slice")
    assert "trained on synthetic phantoms only" in compare.trust(flagged, scan_is_phantom=None)[1]
    real = run_copy("20261126-101512-vit-real00")
    runs.update_run_info(real, data_root=str(tmp_path))
    assert compare.trust(_result("ViT", "Cyst", False, str(real)), scan_is_phantom=True)[0] == (
        "trained on real CT slices, and this is a synthetic phantom")
    assert compare.trust(_result("ViT", "Cyst"), scan_is_phantom=False) == []


@pytest.mark.parametrize(("matrix", "macro_f1", "expected"), [
    ([[9, 0, 0, 0], [9, 0, 0, 0], [9, 0, 0, 0], [9, 4, 0, 0]], 0.5, "it predicts Cyst for 90% of its 40 test images"),
    ([[8, 0, 0, 0], [9, 0, 0, 0], [9, 0, 0, 0], [9, 5, 0, 0]], 0.31, None),
    ([[2, 1, 1, 1]] * 4, 0.3, "its macro F1 is 0.30, at chance level"),
])
def test_metrics_caveats_name_a_model_that_predicts_one_class_or_scores_at_chance(matrix, macro_f1, expected) -> None:
    stored = {"classes": list(classes.CLASS_NAMES), "confusion_matrix": matrix, "macro_f1": macro_f1}
    caveats = trust_files.metrics_caveats(stored)
    assert caveats == ([] if expected is None else [metrics_module.degenerate(stored)])
    assert expected is None or expected in caveats[0]
    assert trust_files.metrics_caveats(None) == []
