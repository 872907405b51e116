"""The Leaderboard page with AppTest: the tiny study, filters, per-run actions, deleting a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kidney_lab import runs
from kidney_lab.evaluation.leaderboard import leaderboard
from tests.app.helpers import texts
from tests.evaluation.helpers import STUDY, clustered_table, fake_run, write_cv_result

PAGE = "pages/leaderboard.py"


def _no_exception(app) -> None:
    assert not app.exception, [element.value for element in app.exception]


def _button(app, label: str):
    return next(button for button in app.button if button.label == label)


@pytest.fixture
def two_run_workspace(tiny_study, tmp_path: Path) -> Path:
    """A workspace holding copies of two of the tiny study's runs (safe to delete from)."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for model in ("vit", "mobilenetv2"):
        shutil.copytree(tiny_study.runs[model], workspace / tiny_study.runs[model].name)
    return workspace


@pytest.mark.slow
def test_the_tiny_study_is_ranked_from_its_stored_predictions(open_app, tiny_study):
    app = open_app(tiny_study.workspace, page=PAGE, data=tiny_study.data)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    shown = texts(app)
    assert "All rows were evaluated on the same images" in shown
    # Five runs and the study's ensemble (built when training ended), in one group.
    assert "Group A**: 6 row(s) on the same" in shown
    table = app.dataframe[0].value
    assert len(table) == 6 and set(table["group"]) == {"A"}
    assert table["run"].tolist().count(f"ensembles/{tiny_study.study_id}") == 1
    assert sorted(table["rank"].tolist()) == sorted(leaderboard(tiny_study.workspace)["rank"].tolist())
    # Every number shown is the library's, recomputed from predictions.csv: score and interval.
    expected = leaderboard(tiny_study.workspace).set_index("run_id")
    for row in table.itertuples(index=False):
        truth = expected.loc[row.run]
        assert row.accuracy == (f"{truth['accuracy']:.3f} ({truth['accuracy_ci_low']:.3f}–"
                                f"{truth['accuracy_ci_high']:.3f})")
        assert row.split == "grouped" and row.images == truth["images"]
    assert len(app.get("plotly_chart")) == 1
    labels = [element.proto.label for element in app.get("download_button")]
    assert labels == ["Download CSV", "Download model card"]


@pytest.mark.slow
def test_filters_narrow_the_table(open_app, tiny_study):
    app = open_app(tiny_study.workspace, page=PAGE)
    # Five runs and the study's ensemble.
    app.toggle(key="leaderboard_external").set_value(False).run()
    assert len(app.dataframe[0].value) == 6
    app.selectbox(key="leaderboard_study").set_value(tiny_study.study_id).run()
    assert len(app.dataframe[0].value) == 6
    # The tiny study has grouped rows only, so the filter offers no other kind.
    assert app.selectbox(key="leaderboard_split").options == ["All", "grouped"]
    _no_exception(app)


@pytest.mark.slow
def test_open_in_evaluation_carries_the_run(open_app, tiny_study):
    app = open_app(tiny_study.workspace, page=PAGE)
    chosen = tiny_study.runs["resnet50"].name
    key = f"{chosen}|test"
    app.selectbox(key="leaderboard_row").set_value(key).run()
    _button(app, "Open in Evaluation").click().run()
    _no_exception(app)
    assert app.title[0].value == "Evaluation"
    assert app.selectbox(key="evaluation_run").value == chosen
    assert app.query_params["run"] == chosen


@pytest.mark.slow
def test_delete_asks_first_and_removes_the_run(open_app, two_run_workspace):
    app = open_app(two_run_workspace, page=PAGE)
    keys = app.selectbox(key="leaderboard_row").options
    doomed = app.selectbox(key="leaderboard_row").value.split("|")[0]
    assert len(keys) == 2
    _button(app, "Delete run ...").click().run()
    assert any("removed from the workspace for good" in element.value for element in app.warning)
    _button(app, "Keep it").click().run()
    assert (two_run_workspace / doomed).is_dir()
    assert "Delete for good" not in [button.label for button in app.button]
    _button(app, "Delete run ...").click().run()
    _button(app, "Delete for good").click().run()
    _no_exception(app)
    assert not (two_run_workspace / doomed).exists()
    assert any(f"Deleted run {doomed}" in element.value for element in app.success)
    assert len(app.dataframe[0].value) == 1


@pytest.mark.slow
def test_a_run_still_training_is_not_deleted(open_app, two_run_workspace):
    app = open_app(two_run_workspace, page=PAGE)
    busy = app.selectbox(key="leaderboard_row").value.split("|")[0]
    # The run claims to be running in this (live) process.
    runs.write_status(two_run_workspace / busy, {"state": runs.RUNNING, "phase": "training"})
    _button(app, "Delete run ...").click().run()
    _button(app, "Delete for good").click().run()
    _no_exception(app)
    assert (two_run_workspace / busy).is_dir()
    assert any("still running" in element.value and "cancel its training job first" in element.value
               for element in app.error)


CV_SERIES = {"Cyst": 4, "Normal": 2, "Stone": 3, "Tumor": 3}


def test_cross_validation_rows_show_their_folds_resampling_and_few_series(open_app, tmp_path):
    workspace = tmp_path / "workspace"
    fold = fake_run(workspace, "vit", clustered_table(CV_SERIES, seed=7, prefix="/fold/x"))
    write_cv_result(workspace, STUDY, "vit", clustered_table(CV_SERIES, seed=1, skill=0.5), fold_runs=[fold])
    write_cv_result(workspace, STUDY, "resnet50", clustered_table(CV_SERIES, seed=2, skill=3.0))
    random_run = fake_run(workspace, "mobilenetv2", clustered_table(CV_SERIES, seed=3, prefix="/random/x"),
                          split="random")
    app = open_app(workspace, page=PAGE)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    expected = leaderboard(workspace).set_index("run_id")
    table = app.dataframe[0].value.set_index("run")
    cv_row = table.loc[f"cv/{STUDY}/vit"]
    truth = expected.loc[f"cv/{STUDY}/vit"]
    assert cv_row["split"] == "cv" and cv_row["evaluated on"] == "cross-validation, out-of-fold"
    assert cv_row["resampled"] == "clusters (12)" and cv_row["test"] == "cluster"
    assert cv_row["clusters per class"] == "Cyst 4 · Normal 2 · Stone 3 · Tumor 3"
    assert cv_row["folds macro F1"] == (f"{truth['macro_f1_fold_mean']:.3f} ± {truth['macro_f1_fold_sd']:.3f} "
                                        "(3 folds)")
    assert cv_row["macro_f1"] == (f"{truth['macro_f1']:.3f} ({truth['macro_f1_ci_low']:.3f}–"
                                  f"{truth['macro_f1_ci_high']:.3f})")
    assert cv_row["p vs best"] == pytest.approx(truth["p_vs_best"])
    assert table.loc[random_run.name, "resampled"] == "images"
    warning = " ".join(element.value for element in app.warning)
    assert "have a class that rests on fewer than three near-duplicate clusters (series): its recall is one or two " \
        "patients' recall" in warning
    assert "**Vision Transformer** (cross-validation, out-of-fold, group A): Normal on 2" in warning
    assert app.selectbox(key="leaderboard_split").options == ["All", "grouped", "cv", "random"]
    # The actions are for runs: the CV rows are not offered.
    assert all("cross-validation" not in option for option in app.selectbox(key="leaderboard_row").options)


def test_groups_are_named_and_degenerate_rows_flagged(open_app, tmp_path):
    workspace = tmp_path / "workspace"
    always_cyst = clustered_table(CV_SERIES, seed=4, prefix="/data/one")
    always_cyst[["prob_Cyst", "prob_Normal", "prob_Stone", "prob_Tumor"]] = [0.7, 0.1, 0.1, 0.1]
    always_cyst["predicted_label"] = "Cyst"
    flat = fake_run(workspace, "vit", always_cyst)
    runs.update_run_info(flat, data_root=str(tmp_path / "hospital-a"))
    app = open_app(workspace, page=PAGE)
    _no_exception(app)
    shown = texts(app)
    assert "images of **hospital-a (aaaa11)**" in shown
    warning = " ".join(element.value for element in app.warning)
    assert "**Vision Transformer** (test split, group A): Degenerate model: it predicts Cyst for 100%" in warning
    table = app.dataframe[0].value
    assert table["flag"].tolist() == ["degenerate"] and table["dataset"].tolist() == ["hospital-a (aaaa11)"]
