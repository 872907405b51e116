"""``python -m kidney_lab explain`` and ``explain-eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kidney_lab import cli
from kidney_lab import runs
from tests.explain.conftest import lesion_phantom, non_square
from tests.helpers import encode

REPOSITORY = Path(__file__).resolve().parents[2]


def upload(tmp_path: Path, name: str = "patient 7 (copy).png") -> Path:
    path = tmp_path / name
    path.write_bytes(encode(non_square(lesion_phantom("Tumor"))))
    return path


def test_explain_writes_pngs_named_by_run_and_method_and_the_json(vit_run, run_copy, tmp_path, capsys) -> None:
    broken = run_copy("20261126-101512-vit-badbad")
    (broken / runs.MODEL_FILE).unlink()
    image, out, report = upload(tmp_path), tmp_path / "out", tmp_path / "explain.json"
    status = cli.main(["explain", str(image), "--runs", f"{vit_run},{broken}", "--method", "gradcam++",
                       "--target", "tumor", "--opacity", "0.6", "--out", str(out), "--json", str(report)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err.strip().splitlines() == [
        f"warning: run {broken.name}: No model file at {broken / runs.MODEL_FILE}; the run has no usable checkpoint."
    ]
    result = json.loads(report.read_text())
    assert result["image"] == str(image.resolve()) and result["method"] == "gradcam++"
    assert [error["run_id"] for error in result["errors"]] == [broken.name]
    (row,) = result["results"]
    assert {"run_id", "model", "predicted", "probabilities", "heatmap", "overlay", "seconds"} <= set(row)
    assert row["run_id"] == vit_run.name and row["model"] == "vit" and row["target"] == "Tumor"
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    stem = f"{vit_run.name}-gradcampp-tumor"
    assert row["heatmap"] == str(out / f"{stem}-heatmap.png") and row["overlay"] == str(out / f"{stem}-overlay.png")
    assert sorted(path.name for path in out.iterdir()) == [f"{stem}-heatmap.png", f"{stem}-overlay.png"]
    with Image.open(row["overlay"]) as overlay_png, Image.open(row["heatmap"]) as heatmap_png:
        assert overlay_png.mode == "RGB" and overlay_png.size == (64, 48)
        assert heatmap_png.mode == "L" and heatmap_png.size == (64, 48)
    assert vit_run.name in captured.out and "Tumor" in captured.out


def test_explain_exits_1_when_no_run_works(tmp_path, capsys) -> None:
    report = tmp_path / "explain.json"
    status = cli.main(["explain", str(upload(tmp_path)), "--runs", str(tmp_path / "nothing"),
                       "--out", str(tmp_path / "out"), "--json", str(report)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.strip().splitlines()[-1].startswith("error: none of the 1 runs could be explained")
    assert json.loads(report.read_text())["results"] == []
    assert not (tmp_path / "out").exists()


def test_explain_refuses_bad_options_before_loading_models(vit_run, tmp_path, capsys) -> None:
    image = str(upload(tmp_path))
    for options, message in ((["--method", "occlusion"], "Unknown explanation method"),
                             (["--opacity", "1.5"], "--opacity must be between 0 and 1"),
                             (["--colormap", "rainbow"], "Unknown colour map"),
                             (["--target", "Kidney"], "Unknown target class")):
        assert cli.main(["explain", image, "--runs", str(vit_run), *options]) == 1
        assert message in capsys.readouterr().err


def test_an_unreadable_image_exits_1_with_one_line(vit_run, tmp_path) -> None:
    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    completed = subprocess.run(
        [sys.executable, "-m", "kidney_lab", "explain", str(image), "--runs", str(vit_run),
         "--out", str(tmp_path / "out")],
        cwd=REPOSITORY, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "scan.png" in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr and not (tmp_path / "out").exists()


def test_explain_eval_stores_faithfulness_and_prints_a_table(run_copy, tmp_path, capsys) -> None:
    run = run_copy()
    report = tmp_path / "faithfulness.json"
    status = cli.main(["explain-eval", str(run), "--methods", "gradcam,layercam", "--max-images", "4",
                       "--steps", "2", "--json", str(report)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads(report.read_text())
    assert result["path"] == str(run / runs.FAITHFULNESS_FILE)
    assert json.loads((run / runs.FAITHFULNESS_FILE).read_text())["methods"] == result["methods"]
    assert list(result["methods"]) == ["gradcam", "layercam"] and result["images"] == 4
    assert "pointing" in captured.out and "(chance)" in captured.out and "(random weights)" in captured.out
    assert np.isfinite(result["methods"]["gradcam"]["deletion_auc"])
