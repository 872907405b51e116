"""The Evaluation page with AppTest: one run, two runs, links, damaged files, another folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.training import jobs
from tests.app.helpers import texts, wait_for
from tests.evaluation.helpers import clustered_table, fake_run

PAGE = "pages/evaluation.py"
MISSING_RUN = "20990101-000000-vit-abcdef"


def _no_exception(app) -> None:
    assert not app.exception, [element.value for element in app.exception]


def _metrics(app) -> dict[str, str]:
    return {element.label: element.value for element in app.metric}


def _open(open_app, workspace: Path, **params: str):
    """The Evaluation page, opened by a link carrying ``params`` (as the Leaderboard does)."""
    app = open_app(workspace)
    app.query_params.update(params)
    app.switch_page(PAGE).run()
    return app


def _copy_runs(tiny_study, workspace: Path, *models: str) -> list[Path]:
    workspace.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copytree(tiny_study.runs[model], workspace / tiny_study.runs[model].name)) for model in models]


@pytest.mark.slow
def test_one_run_is_drawn_from_its_stored_predictions(open_app, tiny_study):
    run = tiny_study.runs["mobilenetv2"]
    app = _open(open_app, tiny_study.workspace, run=run.name)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    assert app.selectbox(key="evaluation_run").value == run.name
    # The tiny study's split is grouped: the interval resamples its test clusters.
    expected = stats.metrics_with_intervals(store.load_predictions(run), "grouped")
    assert expected["intervals"]["resampling"] == "cluster"
    shown = _metrics(app)
    assert shown["Images"] == str(expected["images"])
    assert shown["Accuracy"] == f"{expected['accuracy']:.3f}"
    assert shown["Macro F1"] == f"{expected['macro_f1']:.3f}"
    assert shown["ECE"] == f"{expected['ece']:.3f}"
    low, high = expected["intervals"]["accuracy"]
    assert f"95% CI {low:.3f}–{high:.3f}" in texts(app)
    headings = [element.value for element in app.subheader]
    for heading in ("Confusion matrix", "Per class", "ROC and precision-recall curves", "Calibration",
                    "Training curves", "Images of one cell", "Heat-map faithfulness"):
        assert heading in headings
    per_class = app.dataframe[0].value.set_index("class")
    for name in expected["classes"]:
        assert per_class.loc[name, "recall"] == pytest.approx(expected["per_class"][name]["recall"])
        assert per_class.loc[name, "support"] == expected["per_class"][name]["support"]
    # confusion, per-class bars, ROC, PR, reliability, loss and accuracy curves.
    assert len(app.get("plotly_chart")) == 7
    # The URL names what is shown, so the view can be shared.
    assert app.query_params["run"] == run.name and app.query_params["source"] == "test"


@pytest.mark.slow
def test_a_cell_shows_its_images_with_their_probabilities(open_app, tiny_study):
    run = tiny_study.runs["vit"]
    table = store.load_predictions(run)
    app = _open(open_app, tiny_study.workspace, run=run.name)
    true_label, predicted_label = table.iloc[0]["true_label"], table.iloc[0]["predicted_label"]
    app.selectbox(key="evaluation_cell_true").set_value(true_label).run()
    app.selectbox(key="evaluation_cell_predicted").set_value(predicted_label).run()
    _no_exception(app)
    cell = table[(table["true_label"] == true_label) & (table["predicted_label"] == predicted_label)]
    images = app.get("image")
    assert len(images) == min(len(cell), 24)
    first = cell.sort_values(f"prob_{predicted_label}", ascending=False).iloc[0]
    assert f"P({predicted_label}) {first[f'prob_{predicted_label}']:.2f}" in texts(app)


@pytest.mark.slow
def test_a_link_to_a_run_that_does_not_exist_says_so(open_app, tiny_study):
    app = _open(open_app, tiny_study.workspace, run=MISSING_RUN)
    _no_exception(app)
    assert any(f"There is no evaluated run `{MISSING_RUN}`" in element.value for element in app.error)
    # The page still shows a run that exists.
    assert app.selectbox(key="evaluation_run").value in {path.name for path in tiny_study.runs.values()}
    assert "Confusion matrix" in [element.value for element in app.subheader]


@pytest.mark.slow
def test_two_runs_get_the_paired_test_and_the_confusion_difference(open_app, tiny_study):
    run_a, run_b = tiny_study.runs["resnet50"], tiny_study.runs["vit"]
    app = _open(open_app, tiny_study.workspace, run=run_a.name, compare=run_b.name)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    assert app.segmented_control(key="evaluation_mode").value == "Compare two runs"
    # A grouped split: the paired cluster test; its image counts are McNemar's.
    expected = stats.mcnemar(store.load_predictions(run_a), store.load_predictions(run_b))
    paired = stats.compare_runs(run_a, run_b)
    assert paired["test"] == "cluster"
    assert _metrics(app)[f"p-value (permutation over {paired['clusters']} series)"] == f"{paired['p_value']:.3g}"
    counts = app.dataframe[0].value
    assert counts.loc["A right", "B wrong"] == expected["only_a_right"]
    assert counts.loc["A wrong", "B right"] == expected["only_b_right"]
    assert counts.to_numpy().sum() == expected["images"]
    assert f"resampling the {paired['clusters']} series" in texts(app)
    assert "Confusion matrix difference (B minus A)" in [element.value for element in app.subheader]


@pytest.mark.slow
def test_two_runs_on_other_images_are_refused(open_app, tiny_study, tmp_path):
    workspace = tmp_path / "workspace"
    run_a, run_b = _copy_runs(tiny_study, workspace, "resnet50", "vit")
    # B's test predictions now cover only half of the images: not the same images as A's.
    table = store.load_predictions(run_b)
    table.iloc[: len(table) // 2].to_csv(runs.predictions_path(run_b), index=False)
    app = _open(open_app, workspace, run=run_a.name, compare=run_b.name)
    _no_exception(app)
    assert any("cannot be compared" in element.value and "not evaluations of the same images" in element.value
               for element in app.error)
    assert "Confusion matrix difference (B minus A)" not in [element.value for element in app.subheader]


@pytest.mark.slow
def test_nonsense_predictions_give_a_clear_error(open_app, tiny_study, tmp_path):
    workspace = tmp_path / "workspace"
    (run,) = _copy_runs(tiny_study, workspace, "vit")
    table = pd.read_csv(runs.predictions_path(run))
    table["prob_Cyst"] = "lots"
    table.to_csv(runs.predictions_path(run), index=False)
    app = _open(open_app, workspace, run=run.name)
    _no_exception(app)
    message = next(element.value for element in app.error)
    assert "probabilities that are not numbers" in message and "evaluate the run again" in message
    assert "Something unexpected" not in texts(app)
    assert "Confusion matrix" not in [element.value for element in app.subheader]


@pytest.mark.slow
def test_evaluating_another_folder_adds_an_evaluation(open_app, tiny_study, tmp_path):
    workspace = tmp_path / "workspace"
    (run,) = _copy_runs(tiny_study, workspace, "vit")
    app = _open(open_app, workspace, run=run.name)
    app.text_input[0].input(str(tmp_path / "nowhere"))
    next(button for button in app.button if button.label == "Evaluate").click().run()
    _no_exception(app)
    assert any("does not exist" in element.value for element in app.error)
    assert [item["source"] for item in store.list_evaluations(run)] == ["test"]

    app.text_input[0].input(str(tiny_study.data))
    next(button for button in app.button if button.label == "Evaluate").click().run()
    _no_exception(app)
    # The evaluation runs in a background job; the page draws its progress, then its result.
    (job,) = jobs.evaluate_jobs(run.name, workspace)
    assert job.argv[3:6] == ["evaluate", str(run.resolve()), "--data"]
    assert any("Evaluating on" in element.value for element in app.markdown)
    wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active, 300, "the evaluate job's end")
    app.run()
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    sources = [item["source"] for item in store.list_evaluations(run)]
    assert len(sources) == 2 and sources[0] == "test"
    assert app.selectbox(key="evaluation_source").value == sources[1]
    expected = metrics.compute_metrics(store.load_predictions(run, sources[1]))
    assert _metrics(app)["Images"] == str(expected["images"])
    assert any("Evaluated on" in element.value for element in app.success)


@pytest.mark.slow
def test_faithfulness_is_shown_where_it_was_measured(open_app, tiny_study, tmp_path):
    workspace = tmp_path / "workspace"
    (run,) = _copy_runs(tiny_study, workspace, "vit")
    app = _open(open_app, workspace, run=run.name)
    assert "Not measured for this evaluation" in texts(app)
    fingerprint = runs.read_run(run).info.dataset_fingerprint
    fileio.atomic_write_json(run / runs.FAITHFULNESS_FILE, {
        "fingerprint": fingerprint, "images": 9, "baselines": {"pointing_game": 0.125, "energy_in_mask": 0.0625},
        "methods": {"gradcam": {"pointing_game": 0.75, "energy_in_mask": 0.375, "deletion_auc": None}},
    })
    app = _open(open_app, workspace, run=run.name)
    _no_exception(app)
    table = app.dataframe[-1].value
    # Scores that were not measured leave their column out; the others are the stored ones.
    assert list(table.columns) == ["method", "pointing_game", "energy_in_mask"]
    assert table.iloc[0].tolist() == ["gradcam", 0.75, 0.375]
    shown = texts(app)
    assert "Measured on 9 images" in shown and "Deletion and insertion curves were not measured" in shown
    assert "pointing game 0.125, energy in mask 0.062" in shown
    board = open_app(workspace, page="pages/leaderboard.py").dataframe[0].value
    assert board["pointing_game"].tolist() == [0.75] and board["energy_in_mask"].tolist() == [0.375]


@pytest.mark.parametrize("page, message", [
    (PAGE, "No evaluated run in this workspace yet. The workspace holds 1 run(s) without a stored evaluation"),
    ("pages/leaderboard.py", "The workspace holds 1 run(s), but none has a stored evaluation yet"),
])
def test_runs_without_an_evaluation_are_explained(open_app, tmp_path, page, message):
    workspace = tmp_path / "workspace"
    runs.create_run(workspace, runs.new_run_id("vit"), {"model": "vit"})
    app = open_app(workspace, page=page)
    _no_exception(app)
    assert not app.error and not app.dataframe
    assert message in texts(app)


@pytest.mark.parametrize("page, message", [
    (PAGE, "No evaluated run in this workspace yet"),
    ("pages/leaderboard.py", "No trained model in this workspace yet"),
])
def test_an_empty_workspace_says_where_runs_come_from(open_app, tmp_path, page, message):
    app = open_app(tmp_path / "workspace", page=page)
    _no_exception(app)
    assert not app.error and not app.dataframe and not app.button
    assert message in texts(app)
    labels = [element.proto.label for element in app.get("page_link")]
    assert labels == ["Home: build the demo study", "Train: train on your dataset"]
    # Looking is not writing: an empty workspace stays uncreated.
    assert not (tmp_path / "workspace").exists()


@pytest.mark.slow
def test_a_run_that_fell_back_to_random_weights_says_so_wherever_it_is_shown(open_app, tiny_study, tmp_path):
    workspace = tmp_path / "workspace"
    run, *_ = _copy_runs(tiny_study, workspace, "vit", "mobilenetv2")
    note = ("ImageNet weights unavailable, trained from random initialisation: ImageNet weights for "
            "Vision Transformer could not be downloaded (offline)")
    runs.update_run_info(run, weights_note=note)

    home = open_app(workspace)
    _no_exception(home)
    table = home.dataframe[0].value.set_index("run")
    assert table.loc[run.name, "note"] == "random weights: ImageNet weights were unavailable"
    assert all(note == "" for name, note in table["note"].items() if name != run.name)

    evaluation = _open(open_app, workspace, run=run.name)
    _no_exception(evaluation)
    assert f"Weights: {note}" in [element.value for element in evaluation.info]

    compare = open_app(workspace, page="pages/compare.py")
    _no_exception(compare)
    assert ("Trained from random initialisation because ImageNet weights were unavailable: Vision Transformer"
            in texts(compare))


# Hand-made runs (no training): series-level results, resampling and the paired test's choice.

SERIES = {"Cyst": 4, "Normal": 1, "Stone": 3, "Tumor": 2}


@pytest.fixture
def series_workspace(tmp_path: Path) -> dict[str, Path]:
    """Two grouped runs on the same ten series, two random-split runs, and one run whose
    predictions were stored before clusters were recorded."""
    workspace = tmp_path / "workspace"
    made = {
        "a": fake_run(workspace, "resnet50", clustered_table(SERIES, seed=1, skill=2.0)),
        "b": fake_run(workspace, "vit", clustered_table(SERIES, seed=2, skill=0.3)),
        "old": fake_run(workspace, "mobilenetv2", clustered_table(SERIES, seed=3, prefix="/old/x").drop(columns="cluster")),
    }
    random_a = fake_run(workspace, "inceptionv3", clustered_table(SERIES, seed=4, prefix="/random/x"), split="random")
    random_b = fake_run(workspace, "efficientnetb0", clustered_table(SERIES, seed=5, prefix="/random/x"), split="random")
    return {"base": workspace, "random_a": random_a, "random_b": random_b, **made}


def test_one_run_shows_its_series_and_the_few_series_warning(open_app, series_workspace):
    run = series_workspace["a"]
    app = _open(open_app, series_workspace["base"], run=run.name)
    _no_exception(app)
    table = store.load_predictions(run)
    expected = stats.metrics_with_intervals(table, "grouped")
    series = stats.series_scores(table)
    low, high = expected["intervals"]["accuracy"]
    shown = texts(app)
    assert f"95% CI {low:.3f}–{high:.3f} over 10 near-duplicate clusters (series)" in shown
    assert "clusters (series) per class: Cyst 4, Normal 1, Stone 3, Tumor 2" in shown
    warning = " ".join(element.value for element in app.warning)
    assert "Normal rests on 1 near-duplicate cluster (series): its recall is one or two patients' recall." in warning
    assert "Tumor rests on 2" in warning and "Cyst rests" not in warning
    assert "Series-level results" in [element.value for element in app.subheader]
    metric = _metrics(app)
    assert metric["Series right"] == f"{series['right']} of 10"
    for name, item in series["per_class"].items():
        assert metric[f"{name} series right"] == f"{item['right']} of {item['series']}"
    assert f"series-level accuracy {series['accuracy']:.3f}" in shown
    wrong = series["verdicts"][~series["verdicts"]["correct"]]
    frames = [element.value for element in app.dataframe]
    series_frames = [frame for frame in frames if "series (cluster)" in frame.columns]
    assert len(series_frames) == (2 if len(wrong) else 1)
    if len(wrong):
        assert series_frames[0]["series (cluster)"].tolist() == wrong["cluster"].astype(str).tolist()
        assert not series_frames[0]["right"].any()
    assert len(series_frames[-1]) == 10


def test_old_predictions_without_clusters_say_their_intervals_resample_images(open_app, series_workspace):
    app = _open(open_app, series_workspace["base"], run=series_workspace["old"].name)
    _no_exception(app)
    shown = texts(app)
    assert "over images (as if independent)" in shown and "stored without their near-duplicate clusters" in shown
    assert any("evaluate the run again to see them" in element.value for element in app.info)


def test_two_grouped_runs_get_the_paired_cluster_test(open_app, series_workspace):
    run_a, run_b = series_workspace["a"], series_workspace["b"]
    app = _open(open_app, series_workspace["base"], run=run_a.name, compare=run_b.name)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    expected = stats.compare_runs(run_a, run_b)
    assert expected["test"] == "cluster"
    assert _metrics(app)["p-value (permutation over 10 series)"] == f"{expected['p_value']:.3g}"
    assert "Is the difference more than chance? Paired test over series" in [element.value for element in app.subheader]
    assert f"**{expected['difference']['macro_f1']:+.3f}**" in texts(app)


def test_two_random_split_runs_keep_mcnemars_test(open_app, series_workspace):
    run_a, run_b = series_workspace["random_a"], series_workspace["random_b"]
    app = _open(open_app, series_workspace["base"], run=run_a.name, compare=run_b.name)
    _no_exception(app)
    expected = stats.mcnemar(store.load_predictions(run_a), store.load_predictions(run_b))
    assert _metrics(app)["p-value (exact, two-sided)"] == f"{expected['p_value']:.3g}"
    assert "McNemar's test counts images as independent: random split" in texts(app)


# Operating points, degenerate models, the pair the two-run view opens on.


def test_operating_point_threshold_comes_from_validation(open_app, series_workspace):
    from kidney_lab.evaluation import operating_points

    run = series_workspace["a"]
    clustered_table(SERIES, seed=9, skill=2.0, prefix="/val/x").to_csv(runs.validation_predictions_path(run), index=False)
    app = _open(open_app, series_workspace["base"], run=run.name)
    _no_exception(app)
    assert "Operating point" in [element.value for element in app.subheader]
    expected = operating_points.operating_point(run, "Tumor", 0.95, store.load_predictions(run)["true_label"].eq("Tumor").mean())
    assert _metrics(app)["Threshold on P(Tumor)"] == f"{expected['threshold']:.4f}"
    frame = next(element.value for element in app.dataframe if "measure" in element.value.columns).set_index("measure")
    assert frame.loc["sensitivity", "here"] == f"{expected['test']['sensitivity']:.3f}"
    assert frame.loc["specificity", "validation"] == f"{expected['validation']['specificity']:.3f}"
    low, high = expected["test"]["intervals"]["sensitivity"]
    assert frame.loc["sensitivity", "95% CI"] == f"{low:.3f}–{high:.3f}"
    # Another class and target: the threshold follows validation, the prevalence its own default.
    app.selectbox(key="evaluation_operating_class").set_value("Cyst").run()
    app.slider(key="evaluation_operating_target").set_value(0.8).run()
    app.number_input(key="evaluation_prevalence_Cyst").set_value(10.0).run()
    _no_exception(app)
    cyst = operating_points.operating_point(run, "Cyst", 0.8, 0.1)
    assert _metrics(app)["Threshold on P(Cyst)"] == f"{cyst['threshold']:.4f}"
    frame = next(element.value for element in app.dataframe if "measure" in element.value.columns).set_index("measure")
    assert frame.loc["PPV at prevalence 10.0%", "here"] == f"{cyst['test']['ppv']:.3f}"


def test_a_run_without_validation_predictions_says_how_to_fit_them(open_app, series_workspace):
    app = _open(open_app, series_workspace["base"], run=series_workspace["b"].name)
    _no_exception(app)
    assert any("python -m kidney_lab fit-ood" in element.value for element in app.info)


def test_a_degenerate_model_is_flagged(open_app, tmp_path):
    table = clustered_table(SERIES, seed=6, prefix="/flat/x")
    table[metrics.probability_columns()] = [0.1, 0.1, 0.1, 0.7]
    table["predicted_label"] = "Tumor"
    run = fake_run(tmp_path / "workspace", "vit", table)
    app = _open(open_app, tmp_path / "workspace", run=run.name)
    _no_exception(app)
    assert any("Degenerate model: it predicts Tumor for 100%" in element.value for element in app.warning)


def test_two_runs_open_on_a_comparable_pair(open_app, series_workspace):
    # The newest run (first in the picker) shares its test images with no other run.
    lonely = fake_run(series_workspace["base"], "vit", clustered_table(SERIES, seed=8, prefix="/lonely/x"))
    app = _open(open_app, series_workspace["base"])
    assert app.selectbox(key="evaluation_run").value == lonely.name
    app.segmented_control(key="evaluation_mode").set_value("Compare two runs").run()
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    pair = {app.selectbox(key="evaluation_run").value, app.selectbox(key="evaluation_other").value}
    assert lonely.name not in pair
    tables = [store.load_predictions(series_workspace["base"] / run_id) for run_id in pair]
    assert store.images_key(tables[0]) == store.images_key(tables[1])


def test_two_runs_say_when_no_pair_can_be_compared(open_app, tmp_path):
    workspace = tmp_path / "workspace"
    fake_run(workspace, "vit", clustered_table(SERIES, seed=1, prefix="/one/x"))
    fake_run(workspace, "resnet50", clustered_table(SERIES, seed=2, prefix="/two/x"))
    app = _open(open_app, workspace)
    app.segmented_control(key="evaluation_mode").set_value("Compare two runs").run()
    _no_exception(app)
    assert not app.error
    assert any("none can be compared" in element.value for element in app.info)
