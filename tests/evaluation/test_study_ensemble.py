"""Tests of kidney_lab/evaluation/study_ensemble.py: a study's ensemble folder, its leaderboard row,
weights fitted on validation predictions only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import calibration, ensemble, leaderboard, metrics, stats, study_ensemble
from tests.evaluation.helpers import STUDY, clustered_table, fake_run

SERIES = {"Cyst": 4, "Normal": 4, "Stone": 4, "Tumor": 4}


def member_table(seed: int, skill: float = 1.5, prefix: str = "/data/series") -> pd.DataFrame:
    """Predictions of the same clustered images (same labels) by a model of some skill."""
    table = clustered_table(SERIES, seed=0, prefix=prefix)
    other = clustered_table(SERIES, seed=seed, skill=skill, prefix=prefix)
    columns = metrics.probability_columns()
    table[columns] = other[columns].to_numpy()
    table["predicted_label"] = other["predicted_label"].to_numpy()
    return table


def write_validation(run: Path, seed: int, skill: float = 1.5) -> None:
    member_table(seed, skill, prefix="/data/val").to_csv(runs.validation_predictions_path(run), index=False)


def write_calibration(run: Path, temperature: float) -> None:
    fileio.atomic_write_text(runs.calibration_path(run), calibration.to_json({"temperature": temperature}))


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A workspace with three evaluated runs of one study on the same grouped test images."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    members = [fake_run(workspace, model, member_table(seed))
               for model, seed in (("resnet50", 1), ("mobilenetv2", 2), ("vit", 3))]
    return workspace, members


def test_the_ensemble_folder_holds_its_predictions_metrics_and_recipe(study):
    workspace, members = study
    write_calibration(members[0], 2.0)
    result = study_ensemble.build(workspace, STUDY)
    folder = runs.ensemble_folder(workspace, STUDY)
    assert Path(result["folder"]) == folder.absolute() and runs.list_ensembles(workspace) == [folder]
    recipe = json.loads(runs.ensemble_path(folder).read_text())
    assert recipe["members"] == [path.name for path in members]
    assert recipe["temperatures"] == [2.0, 1.0, 1.0] and recipe["weights_method"] == "equal"
    assert recipe["weights"] == pytest.approx([1 / 3] * 3) and recipe["weights_fitted_on"] == "validation"
    # The two runs without calibration.json are named: their probabilities were used as stored.
    assert [note.split()[0] for note in recipe["temperature_notes"]] == [members[1].name, members[2].name]
    assert recipe["split_kind"] == "grouped" and recipe["created"]
    table = pd.read_csv(runs.predictions_path(folder))
    expected = ensemble.combine([member_table(seed) for seed in (1, 2, 3)], [2.0, 1.0, 1.0])
    np.testing.assert_allclose(table[metrics.probability_columns()], expected[metrics.probability_columns()])
    assert metrics.CLUSTER_COLUMN in table.columns
    stored = json.loads(runs.metrics_path(folder).read_text())
    scored = stats.metrics_with_intervals(expected, "grouped")
    assert stored["macro_f1"] == pytest.approx(scored["macro_f1"])
    assert stored["intervals"]["resampling"] == "cluster" and stored["split_kind"] == "grouped"
    assert stored["model"] == "ensemble" and stored["members"] == recipe["members"]


def test_the_leaderboard_row_is_recomputed_from_the_ensemble_predictions(study):
    workspace, members = study
    study_ensemble.build(workspace, STUDY)
    board = leaderboard.leaderboard(workspace)
    row = board[board["model"] == "ensemble"].iloc[0]
    # One comparable group with its three members, compared with the best single model.
    assert board["comparable_group"].nunique() == 1 and len(board) == 4
    best_single = board[board["model"] != "ensemble"].iloc[0]
    assert row["compared_with"] == best_single["run_id"] and row["p_test"] == "cluster"
    assert pd.isna(best_single["p_vs_best"]) and row["members"] == [path.name for path in members]
    assert row["run_id"] == f"ensembles/{STUDY}" and row["split"] == "grouped"
    # Make every ensemble prediction right: the row follows the file, not metrics.json.
    path = runs.predictions_path(runs.ensemble_folder(workspace, STUDY))
    edited = pd.read_csv(path)
    columns = metrics.probability_columns()
    edited[columns] = np.eye(len(columns))[[CLASS_NAMES.index(label) for label in edited["true_label"]]]
    edited["predicted_label"] = edited["true_label"]
    edited.to_csv(path, index=False)
    changed = leaderboard.leaderboard(workspace)
    row = changed[changed["model"] == "ensemble"].iloc[0]
    assert row["macro_f1"] == 1.0 and row["accuracy"] == 1.0 and row["rank"] == 1
    # Ranked first, the ensemble is still compared with the best single model, not with itself.
    assert row["compared_with"] == changed[changed["model"] != "ensemble"].iloc[0]["run_id"]
    assert row["p_vs_best"] is not None and not pd.isna(row["p_vs_best"])


def test_a_damaged_ensemble_is_skipped_with_its_reason(study):
    workspace, _ = study
    study_ensemble.build(workspace, STUDY)
    runs.predictions_path(runs.ensemble_folder(workspace, STUDY)).write_text("not,a\ntable\n")
    board = leaderboard.leaderboard(workspace)
    assert "ensemble" not in set(board["model"]) and len(board) == 3
    assert board.attrs["skipped"][0]["run_id"] == f"ensembles/{STUDY}"
    assert board.attrs["skipped"][0]["reason"].startswith("ensemble:")


def test_fitted_weights_read_validation_predictions_only(study):
    workspace, members = study
    for number, run in enumerate(members):
        write_validation(run, seed=10 + number, skill=3.0 if number == 0 else 0.0)
    # The test predictions are garbage or absent: fitting never opens them.
    runs.predictions_path(members[0]).write_text("garbage")
    runs.predictions_path(members[1]).unlink()
    weights = study_ensemble.fit_member_weights(members, [1.0, 1.0, 1.0])
    assert weights[0] > 0.9 and sum(weights) == pytest.approx(1.0)


def test_fitted_weights_are_stored_with_how_they_were_fitted(study):
    workspace, members = study
    for number, run in enumerate(members):
        write_validation(run, seed=10 + number, skill=3.0 if number == 0 else 0.0)
    result = study_ensemble.build(workspace, STUDY, weights="fitted")
    recipe = result["ensemble"]
    assert recipe["weights_method"] == "fitted" and recipe["weights"][0] > 0.9
    assert "validation" in recipe["weights_note"] and "no test image" in recipe["weights_note"]


def test_fitted_weights_are_refused_without_validation_predictions(study):
    workspace, members = study
    write_validation(members[0], seed=10)
    with pytest.raises(ensemble.EnsembleError, match=f"{members[1].name} has no val_predictions.csv.*fit-ood"):
        study_ensemble.build(workspace, STUDY, weights="fitted")
    assert not runs.ensemble_path(runs.ensemble_folder(workspace, STUDY)).exists()


def test_cross_validation_folds_and_unfinished_runs_are_left_out(study):
    workspace, members = study
    fold = fake_run(workspace, "resnet50", member_table(4))
    runs.update_run_info(fold, cv_id="cv-aaaa1111", fold=0, folds=3)
    failed = fake_run(workspace, "vit", None)
    chosen, excluded = study_ensemble.members(workspace, STUDY)
    assert [record.path for record in chosen] == members
    reasons = {entry["run_id"]: entry["reason"] for entry in excluded}
    assert "cross-validation" in reasons[fold.name] and "out of scope" in reasons[fold.name]
    assert "no test predictions" in reasons[failed.name]


def test_too_few_members_or_other_images_are_refused_and_nothing_is_written(tmp_path):
    workspace = tmp_path / "workspace"
    fake_run(workspace, "resnet50", member_table(1))
    with pytest.raises(ensemble.EnsembleError, match="at least two completed runs .* it has 1"):
        study_ensemble.build(workspace, STUDY)
    assert not (workspace / runs.ENSEMBLES_FOLDER).exists()
    assert study_ensemble.build_after_training(workspace, STUDY) is None
    fake_run(workspace, "vit", member_table(2, prefix="/other/series"))
    with pytest.raises(ensemble.EnsembleError, match=r"lacks 96 image.*\(members: 1 = "):
        study_ensemble.build(workspace, STUDY)
    assert runs.list_ensembles(workspace) == [] and not runs.ensemble_folder(workspace, STUDY).exists()
    assert "lacks 96 image" in study_ensemble.build_after_training(workspace, STUDY)["error"]


def test_an_unknown_weights_choice_is_refused(study):
    workspace, _ = study
    with pytest.raises(ValueError, match="choose equal or fitted"):
        study_ensemble.build(workspace, STUDY, weights="best")


@pytest.mark.slow
def test_training_a_study_builds_its_ensemble(tiny_study, tmp_path):
    folder = runs.ensemble_folder(tiny_study.workspace, tiny_study.study_id)
    recipe = study_ensemble.read_recipe(folder)
    assert sorted(recipe["members"]) == sorted(path.name for path in tiny_study.runs.values())
    table = study_ensemble.predictions_table(folder)
    member = pd.read_csv(runs.predictions_path(tiny_study.runs["vit"]))
    assert sorted(table["path"]) == sorted(member["path"]) and metrics.CLUSTER_COLUMN in table.columns
    # Built again in a copy of the study, from the runs' stored files, it is the same table.
    workspace = tmp_path / "copy"
    for run in tiny_study.runs.values():
        shutil.copytree(run, workspace / run.name)
    result = study_ensemble.build(workspace, tiny_study.study_id)
    rebuilt = study_ensemble.predictions_table(Path(result["folder"]))
    pd.testing.assert_frame_equal(rebuilt, table)
    row = leaderboard.leaderboard(tiny_study.workspace).set_index("run_id").loc[f"ensembles/{tiny_study.study_id}"]
    assert row["macro_f1"] == pytest.approx(stats.metrics_with_intervals(table, row["split"])["macro_f1"])


def test_the_ensemble_command_builds_and_reports_it(study, tmp_path, capsys):
    from kidney_lab import cli

    workspace, members = study
    output = tmp_path / "ensemble.json"
    assert cli.main(["ensemble", "--study", STUDY, "--workspace", str(workspace), "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Ensemble (3 models)" in printed and "weights equal" in printed and members[0].name in printed
    payload = json.loads(output.read_text())
    assert payload["members"] == [path.name for path in members] and payload["ensemble"]["weights_method"] == "equal"
    assert Path(payload["predictions"]).is_file() and Path(payload["recipe"]).is_file()
    assert cli.main(["ensemble", "--study", STUDY, "--workspace", str(workspace), "--weights", "fitted"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: Weights can only be fitted on validation predictions") and error.count("\n") == 1
