"""One scan through several runs: a broken run or a failing method is reported for that run alone."""

from __future__ import annotations

import pytest
import tensorflow as tf

from kidney_lab import errors
from kidney_lab import runs
from kidney_lab.data.scan import read_scan
from kidney_lab.explain import cam
from kidney_lab.explain import compare
from tests.explain.conftest import lesion_phantom
from tests.helpers import encode


def test_a_broken_run_is_reported_alone_and_the_others_still_return(vit_run, run_copy, tmp_path) -> None:
    broken = run_copy("20261126-101512-vit-badbad")
    (broken / runs.MODEL_FILE).write_bytes(b"this is not a keras file")
    missing = tmp_path / "no-such-run"
    report = compare.explain([vit_run, broken, missing, vit_run], lesion_phantom("Stone"), "gradcam")

    assert [result.run_id for result in report.results] == [vit_run.name, vit_run.name]
    assert report.ok and report.method == "gradcam"
    assert [error["run_id"] for error in report.errors] == [broken.name, missing.name]
    assert "Cannot load model" in report.errors[0]["message"]
    assert "No run folder" in report.errors[1]["message"]
    assert report.scan.image.shape == (64, 64, 3)


def test_a_method_failing_on_one_model_leaves_the_others(vit_run, run_copy, monkeypatch) -> None:
    doomed = run_copy("20261126-101512-vit-00d00d")
    original = cam.Explainer.explain_prepared

    def out_of_memory(self, scan, pixels, target):
        if self.run_id == doomed.name:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return original(self, scan, pixels, target)

    monkeypatch.setattr(cam.Explainer, "explain_prepared", out_of_memory)
    report = compare.explain([doomed, vit_run], lesion_phantom("Cyst"), "scorecam", target="Cyst")
    assert [result.run_id for result in report.results] == [vit_run.name]
    assert report.results[0].target == "Cyst"
    assert len(report.errors) == 1 and report.errors[0]["run_id"] == doomed.name
    assert report.errors[0]["message"].startswith("Out of memory while explaining with Score-CAM")


def test_an_unreadable_image_raises_the_scan_readers_message(vit_run) -> None:
    with pytest.raises(errors.ScanReadError) as expected:
        read_scan(b"GIF89a but truncated")
    with pytest.raises(errors.ScanReadError) as raised:
        compare.explain(vit_run, b"GIF89a but truncated")
    assert str(raised.value) == str(expected.value)


def test_a_bad_request_fails_before_any_model_is_loaded(vit_run) -> None:
    cam.clear_cache()
    image = encode(lesion_phantom("Normal"))
    with pytest.raises(errors.ConfigError, match="Unknown explanation method"):
        compare.explain([vit_run], image, method="occlusion")
    with pytest.raises(errors.ConfigError, match="Unknown target class"):
        compare.explain([vit_run], image, target="Kidney")
    with pytest.raises(errors.ConfigError, match="No run to explain"):
        compare.explain([], image)
    assert cam.cached_explainers() == []


def test_report_to_dict_has_the_design_fields(vit_run) -> None:
    report = compare.explain(str(vit_run), encode(lesion_phantom("Tumor")), "layercam")
    row = compare.report_to_dict(report)["results"][0]
    for field in ("run_id", "model", "predicted", "probabilities", "heatmap", "overlay", "seconds"):
        assert field in row
    assert row["model"] == "vit" and row["heatmap"] is None
