"""What a run keeps so that its answers can be doubted: the validation predictions and OOD
detector that training writes, the calibration its test evaluation writes, and ``fit-ood`` for
a run trained before they existed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.cli import main
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import calibration
from kidney_lab.evaluation import evaluate as evaluate_module
from kidney_lab.evaluation import leaderboard as leaderboard_module
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import store
from kidney_lab.evaluation import trust
from kidney_lab.models import ood
from kidney_lab.models import registry
from tests.evaluation.helpers import snapshot

TRUST_FILES = (runs.VALIDATION_PREDICTIONS_FILE, runs.DETECTOR_FILE, runs.CALIBRATION_FILE)


def test_training_writes_validation_predictions_detector_and_calibration(tiny_run: Path) -> None:
    validation = trust.read_validation_predictions(tiny_run)
    data_split = split_module.load_split(runs.read_info(tiny_run).workspace, runs.read_info(tiny_run).split_id)
    assert sorted(validation["path"]) == sorted(data_split.subset("val")["path"])
    assert metrics.CLUSTER_COLUMN in validation.columns and trust.OOD_SCORE_COLUMN in validation.columns

    detector = trust.read_detector(tiny_run)
    assert detector.threshold_from == "validation" and detector.percentile == ood.DEFAULT_PERCENTILE
    assert detector.images == {"training": len(data_split.subset("train")), "validation": len(validation)}
    assert detector.threshold == pytest.approx(np.percentile(validation[trust.OOD_SCORE_COLUMN], 95), rel=1e-6)

    stored = trust.read_calibration(tiny_run)
    test = store.load_predictions(tiny_run)
    assert stored == calibration.calibration_report(validation, test)
    scored = store.load_metrics(tiny_run)
    assert trust.test_figures(scored) == {"temperature": stored["temperature"], "fitted_on": "validation",
                                          **stored["test"], "images": len(test)}
    assert len(scored["calibration"]["reliability"]) == metrics.CALIBRATION_BINS
    assert scored["ood_threshold"] == detector.threshold
    assert scored["ood_flagged_share"] == pytest.approx(
        float((test[trust.OOD_SCORE_COLUMN] > detector.threshold).mean()))
    assert test[trust.OOD_FLAGGED_COLUMN].tolist() == (test[trust.OOD_SCORE_COLUMN] > detector.threshold).tolist()
    assert runs.read_info(tiny_run).trust_seconds > 0


def test_temperature_scaling_lowers_the_validation_nll_of_a_miscalibrated_run(tiny_run: Path) -> None:
    # One epoch at 32 px leaves the ViT far from calibrated, so a temperature other than 1 fits.
    stored = trust.read_calibration(tiny_run)
    assert stored["temperature"] != 1.0
    assert stored["validation"]["nll_after"] < stored["validation"]["nll_before"] - 1e-3
    validation = trust.read_validation_predictions(tiny_run)
    assert calibration.scores(validation, stored["temperature"])["nll"] == pytest.approx(stored["validation"]["nll_after"])


def test_an_external_folder_gets_ood_scores_and_the_runs_calibration(run_copy: Path, external_folder: Path) -> None:
    result = evaluate_module.evaluate(run_copy, external_folder)
    table = store.load_predictions(run_copy, result["evaluated_on"])
    assert {trust.OOD_SCORE_COLUMN, trust.OOD_FLAGGED_COLUMN} <= set(table.columns)
    assert result["ood_flagged_share"] == pytest.approx(float(table[trust.OOD_FLAGGED_COLUMN].mean()))
    temperature = trust.temperature(run_copy)
    assert trust.test_figures(result) == trust.calibration_figures(table, temperature)
    assert result["calibration"]["images"] == len(table)

    board = leaderboard_module.leaderboard(run_copy.parent)
    shares = dict(zip(board["evaluated_on"], board["ood_flagged_share"]))
    assert shares[result["evaluated_on"]] == pytest.approx(result["ood_flagged_share"])
    assert shares["test"] == pytest.approx(store.load_metrics(run_copy)["ood_flagged_share"])


def _make_old(run: Path) -> None:
    """Make a run look trained before the trust files existed."""
    for name in TRUST_FILES:
        (run / name).unlink()
    table = pd.read_csv(run / runs.PREDICTIONS_FILE)
    table.drop(columns=[trust.OOD_SCORE_COLUMN, trust.OOD_FLAGGED_COLUMN]).to_csv(run / runs.PREDICTIONS_FILE, index=False)
    stored = fileio.read_json(run / runs.METRICS_FILE)
    for key in ("ood_flagged_share", "ood_threshold"):
        stored.pop(key)
    stored["calibration"] = {key: stored["calibration"][key] for key in ("ece", "bins", "images", "reliability")}
    fileio.atomic_write_json(run / runs.METRICS_FILE, stored)


def test_an_old_run_without_trust_files_evaluates_without_them(run_copy: Path) -> None:
    _make_old(run_copy)
    result = evaluate_module.evaluate(run_copy)
    assert result["ood_flagged_share"] is None and result["ood_threshold"] is None
    assert trust.test_figures(result) is None and "reliability" in result["calibration"]
    assert trust.OOD_SCORE_COLUMN not in store.load_predictions(run_copy).columns
    assert not runs.calibration_path(run_copy).exists()
    assert leaderboard_module.leaderboard(run_copy.parent)["ood_flagged_share"].isna().all()


def test_fit_ood_gives_an_old_run_its_detector_and_calibration(run_copy: Path, tmp_path: Path, capsys) -> None:
    _make_old(run_copy)
    assert main(["fit-ood", str(run_copy), "--json", str(tmp_path / "fit.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "fit.json").read_text())
    assert all((run_copy / name).is_file() for name in TRUST_FILES)
    detector = trust.read_detector(run_copy)
    assert result["threshold"] == detector.threshold and result["detector"] == str(runs.detector_path(run_copy).absolute())
    table = store.load_predictions(run_copy)
    assert trust.OOD_FLAGGED_COLUMN in table.columns
    stored = store.load_metrics(run_copy)
    assert stored["ood_flagged_share"] == result["ood_flagged_share"] == pytest.approx(
        float(table[trust.OOD_FLAGGED_COLUMN].mean()))
    assert trust.test_figures(stored)["temperature"] == trust.read_calibration(run_copy)["temperature"]
    assert f"of the images flagged (score > {detector.threshold:.3f})" in out and "calibration: temperature" in out


def test_fit_ood_refuses_a_busy_run_a_run_without_model_or_split_and_changes_nothing(
    run_copy: Path, capsys
) -> None:
    _make_old(run_copy)
    runs.write_status(run_copy, {"state": runs.RUNNING, "pid": os.getppid()})
    with pytest.raises(runs.RunBusyError, match="fit an OOD detector for it when training has finished"):
        evaluate_module.fit_ood(run_copy)
    runs.write_status(run_copy, {"state": runs.COMPLETED})
    assert not any((run_copy / name).exists() for name in TRUST_FILES)

    runs.update_run_info(run_copy, split_id="grouped-0000000000")
    before = snapshot(run_copy)
    assert main(["fit-ood", str(run_copy)]) == 1
    assert "grouped-0000000000" in capsys.readouterr().err
    assert snapshot(run_copy) == before

    (run_copy / runs.MODEL_FILE).unlink()
    with pytest.raises(registry.ModelLoadError, match="has no model.keras"):
        evaluate_module.fit_ood(run_copy)
    assert not any((run_copy / name).exists() for name in TRUST_FILES)


def test_a_damaged_detector_says_to_fit_it_again(run_copy: Path) -> None:
    runs.detector_path(run_copy).write_text("{not json", encoding="utf-8")
    with pytest.raises(ood.OODError, match="fit-ood"):
        evaluate_module.evaluate(run_copy)
    assert isinstance(ood.OODError("x"), errors.KidneyLabError)
