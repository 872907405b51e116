"""Grouped K-fold cross-validation through the engine: `train --cv K [--fold I]`.

Each fold is an ordinary run; the pooled out-of-fold table covers every image once; no fold's
model saw a cluster of its own test fold; `--fold I` joins the study of the other folds; a
killed cross-validation resumes without training completed folds again.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import cv as cv_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.training import engine
from tests.training.test_engine import cli, tiny_config, train_arguments, wait_for

FOLDS = 3


@pytest.fixture(scope="module")
def cross_validated(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory):
    workspace = tmp_path_factory.mktemp("cv")
    result = engine.train(tiny_config(phantom_root, workspace, epochs=1, cv=FOLDS))
    return result, workspace


def test_every_fold_is_a_completed_run_marked_with_its_study_fold_and_cv_id(cross_validated) -> None:
    result, workspace = cross_validated
    assert result.ok and len(result.runs) == FOLDS
    infos = [runs.read_run(outcome.path).info for outcome in result.runs]
    assert sorted(info.fold for info in infos) == list(range(FOLDS))
    assert {info.cv_id for info in infos} == {result.split_id}
    assert {info.folds for info in infos} == {FOLDS}
    assert {info.study_id for info in infos} == {result.study_id}
    for outcome in result.runs:
        assert (outcome.path / runs.PREDICTIONS_FILE).is_file() and (outcome.path / runs.MODEL_FILE).is_file()


def test_no_fold_trained_or_validated_on_a_cluster_of_its_own_test_fold(cross_validated) -> None:
    result, workspace = cross_validated
    for outcome in result.runs:
        info = runs.read_run(outcome.path).info
        manifest = split_module.load_split(workspace, info.split_id).manifest
        test_clusters = set(manifest.loc[manifest["subset"] == "test", "cluster"])
        seen = set(manifest.loc[manifest["subset"].isin(["train", "val"]), "cluster"])
        assert test_clusters and not test_clusters & seen
        # The run's stored predictions are exactly its test fold.
        predicted = set(pd.read_csv(outcome.path / runs.PREDICTIONS_FILE)["path"])
        assert predicted == set(manifest.loc[manifest["subset"] == "test", "path"])


def test_the_pooled_out_of_fold_table_covers_every_image_exactly_once(cross_validated, phantom_root: Path) -> None:
    result, workspace = cross_validated
    (pooled,) = result.pooled
    assert pooled["complete"] and pooled["model"] == "vit"
    table = pd.read_csv(pooled["predictions"])
    images = sorted(str(path) for path in phantom_root.rglob("*.png") if "masks" not in path.parts)
    assert len(table) == len(images) == pooled["images"]
    assert not table["path"].duplicated().any()
    assert {str(Path(path).resolve()) for path in table["path"]} == {str(Path(path).resolve()) for path in images}
    assert set(table["fold"]) == set(range(FOLDS))
    stored = fileio.read_json(pooled["metrics"])
    # The pooled scores are computed from the pooled table, their interval resamples clusters.
    again = metrics_module.compute_metrics(table.drop(columns=["fold"]))
    assert stored["macro_f1"] == pytest.approx(again["macro_f1"])
    assert stored["intervals"]["resampling"] == "cluster"
    assert stored["intervals"]["clusters"] == table["cluster"].nunique()
    # Per-fold scores are each fold's own stored test macro F1.
    folds = {runs.read_run(outcome.path).info.fold: fileio.read_json(outcome.path / runs.METRICS_FILE)["macro_f1"]
             for outcome in result.runs}
    assert pooled["folds_macro_f1"] == pytest.approx([folds[index] for index in range(FOLDS)])
    assert pooled["macro_f1_mean"] == pytest.approx(sum(folds.values()) / FOLDS)


def test_train_json_gains_cv(cross_validated) -> None:
    result, _ = cross_validated
    payload = json.loads(json.dumps(result.to_dict()))
    cv = payload["cv"]
    assert cv["folds"] == FOLDS
    assert sorted(entry["fold"] for entry in cv["runs"]) == list(range(FOLDS))
    assert set(cv["runs"][0]) >= {"model", "fold", "run_id", "path", "status"}
    assert set(cv["pooled"][0]) >= {"model", "predictions", "metrics", "images", "macro_f1",
                                    "macro_f1_interval", "folds_macro_f1"}


def test_one_fold_at_a_time_joins_one_study_and_assembles_when_the_last_exists(
    phantom_root: Path, tmp_path: Path
) -> None:
    first = engine.train(tiny_config(phantom_root, tmp_path, epochs=1, cv=2, fold=1))
    assert [runs.read_run(outcome.path).info.fold for outcome in first.runs] == [1]
    (waiting,) = first.pooled
    assert not waiting["complete"] and waiting["predictions"] is None
    assert [entry["status"] for entry in waiting["runs"]] == ["missing", runs.COMPLETED]
    assert not cv_module.read_result(runs.cv_result_folder(tmp_path, first.study_id, "vit"))["complete"]

    second = engine.train(tiny_config(phantom_root, tmp_path, epochs=1, cv=2, fold=0))
    assert second.study_id == first.study_id
    (pooled,) = second.pooled
    assert pooled["complete"]
    assert {entry["run_id"] for entry in pooled["runs"]} == {
        first.runs[0].run_id, second.runs[0].run_id
    }
    assert runs.list_cv_results(tmp_path) == [runs.cv_result_folder(tmp_path, first.study_id, "vit")]


def test_fold_options_are_checked(phantom_root: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="give --cv"):
        tiny_config(phantom_root, tmp_path, fold=0)
    with pytest.raises(errors.ConfigError, match="numbered 0 to 1"):
        tiny_config(phantom_root, tmp_path, cv=2, fold=2)
    with pytest.raises(errors.ConfigError, match="--split random"):
        tiny_config(phantom_root, tmp_path, cv=2, split="random")
    with pytest.raises(errors.ConfigError):
        tiny_config(phantom_root, tmp_path, cv=1)


def test_kill_9_during_cross_validation_resumes_without_retraining_completed_folds(
    phantom_root: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    arguments = train_arguments(phantom_root, workspace, epochs=2) + ["--cv", "2"]
    process = cli(*arguments, workspace=workspace)
    try:
        def one_fold_done() -> bool:
            records = runs.list_runs(workspace) if workspace.is_dir() else []
            return any(record.state == runs.COMPLETED for record in records) and len(records) == 2

        wait_for(one_fold_done, timeout=300, what="the first fold")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    done = {record.run_id: record.path.joinpath(runs.MODEL_FILE).stat().st_mtime_ns
            for record in runs.list_runs(workspace) if record.state == runs.COMPLETED}
    assert len(done) == 1

    again = cli(*arguments, "--json", str(tmp_path / "result.json"), workspace=workspace)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    records = runs.list_runs(workspace)
    assert len(records) == 2 and all(record.state == runs.COMPLETED for record in records)
    for run_id, mtime in done.items():
        assert runs.read_run(workspace / run_id).path.joinpath(runs.MODEL_FILE).stat().st_mtime_ns == mtime
    payload = json.loads((tmp_path / "result.json").read_text())
    assert payload["cv"]["pooled"][0]["complete"] is True
    assert "out-of-fold predictions pooled" in out
