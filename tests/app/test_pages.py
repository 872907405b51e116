"""Every page with AppTest: an empty workspace, the tiny study, bad input, and unexpected errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.explain import preload
from pages import common
from tests.app.helpers import texts

# The pages this file knows in detail; every page of the app gets the empty-workspace check.
PAGE_PATHS = ["pages/home.py", "pages/dataset.py", "pages/train.py"]


def _no_exception(app) -> None:
    assert not app.exception, [element.value for element in app.exception]


@pytest.mark.parametrize("page", [info.path for info in common.PAGES])
def test_every_page_renders_an_empty_workspace(open_app, tmp_path, page):
    app = open_app(tmp_path / "workspace", page=page)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    assert app.title[0].value == ("kidney_lab" if page == "pages/home.py" else common.page_info(page).title)


@pytest.mark.parametrize("page", ["pages/home.py", "pages/dataset.py"])
def test_the_app_starts_loading_the_compare_models_after_the_page(open_app, tmp_path, monkeypatch, page):
    started = []
    monkeypatch.setattr(preload, "start_warm_up", lambda workspace: started.append(workspace))
    app = open_app(tmp_path / "workspace", page=page)
    _no_exception(app)
    # Every run of the app script asks (the library starts it once per process and runs).
    assert started and set(started) == {workspace_module.default_workspace()}


@pytest.mark.parametrize("page", PAGE_PATHS)
def test_each_page_explains_an_empty_workspace(open_app, tmp_path, page):
    app = open_app(tmp_path / "workspace", page=page)
    shown = texts(app)
    # Each page says what to do next instead of showing nothing.
    expected = {
        "pages/home.py": "There is no trained model in this workspace yet",
        "pages/dataset.py": "No dataset chosen yet",
        "pages/train.py": "Choose a dataset first",
        "pages/leaderboard.py": "No trained model in this workspace yet",
        "pages/evaluation.py": "No evaluated run in this workspace yet",
    }
    assert expected[page] in shown
    assert "not a medical device" in shown or page != "pages/home.py"
    buttons = {"pages/home.py": ["Build the demo study"], "pages/dataset.py": ["Use this folder"], "pages/train.py": [],
               "pages/leaderboard.py": [], "pages/evaluation.py": []}
    assert [button.label for button in app.button] == buttons[page]
    # Looking is not writing: an empty workspace stays uncreated.
    assert not (tmp_path / "workspace").exists()


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGE_PATHS)
def test_every_page_renders_the_tiny_study(open_app, tiny_study, page):
    app = open_app(tiny_study.workspace, page=page, data=tiny_study.data)
    _no_exception(app)
    assert not app.error, [element.value for element in app.error]
    shown = texts(app)
    if page == "pages/home.py":
        metrics = {metric.label: metric.value for metric in app.metric}
        assert metrics["Trained models"] == "5"
        assert metrics["Studies"] == "1"
        table = app.dataframe[0].value
        assert sorted(table["state"]) == ["completed"] * 5
        # The accuracy shown is the one stored in each run's metrics.json.
        for run_dir in tiny_study.runs.values():
            stored = json.loads((run_dir / runs.METRICS_FILE).read_text())
            row = table[table["run"] == run_dir.name].iloc[0]
            assert (row["test accuracy"], row["test images"]) == (stored["accuracy"], stored["images"])
        assert "Build the demo study" not in [button.label for button in app.button]
    elif page == "pages/dataset.py":
        metrics = {metric.label: metric.value for metric in app.metric}
        assert metrics["Usable images"] == str(12 * len(CLASS_NAMES))
        assert "Split preview: random vs grouped" in shown
        splits = app.dataframe[-1].value
        assert list(splits["split"]) == ["random", "grouped"]
        assert (splits[["train", "validation", "test"]].sum(axis=1) == 12 * len(CLASS_NAMES)).all()
        assert splits.loc[splits["split"] == "grouped", "test images with a duplicate in train"].iloc[0].startswith("0 of")
    elif page == "pages/train.py":  # Later pages check the tiny study in their own test files.
        assert "Start training" in [button.label for button in app.button]
        assert "No training job has been started from the app" in shown and "5 run(s) were trained outside the app" in shown


def test_dataset_page_rejects_a_folder_that_is_not_a_dataset(open_app, tmp_path):
    workspace = tmp_path / "workspace"
    app = open_app(workspace, page="pages/dataset.py")
    app.text_input[0].input(str(tmp_path / "nowhere"))
    app.button[0].click().run()
    _no_exception(app)
    assert any("does not exist" in element.value for element in app.error)
    (tmp_path / "empty").mkdir()
    app.text_input[0].input(str(tmp_path / "empty"))
    app.button[0].click().run()
    assert any("No class folders" in element.value for element in app.error)
    assert workspace_module.last_data_folder(workspace) is None


def test_dataset_page_remembers_the_folder_and_shows_a_label_conflict(open_app, tmp_path, make_dataset_folder):
    root = make_dataset_folder(per_class=4)
    # The same file under two classes: an exact duplicate that is also a label conflict.
    shutil.copy(root / "Cyst" / "Cyst- (1).png", root / "Tumor" / "copy.png")
    workspace = tmp_path / "workspace"
    app = open_app(workspace, page="pages/dataset.py")
    app.text_input[0].input(str(tmp_path))  # A folder above the dataset is fine.
    app.button[0].click().run()
    _no_exception(app)
    assert workspace_module.last_data_folder(workspace) == root
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Usable images"] == "17"
    assert metrics["Label conflicts"] == "1"
    assert any("filed under two or more classes" in element.value for element in app.error)
    # A new session (a restarted app) finds the same folder.
    again = open_app(workspace, page="pages/dataset.py")
    assert again.text_input[0].value == str(root)


def test_dataset_page_offers_the_demo_phantoms(open_app, tmp_path):
    from kidney_lab.data import phantom

    workspace = tmp_path / "workspace"
    dataset = phantom.write_phantom_dataset(workspace / workspace_module.DEMO_DATA_FOLDER, 2, size=48, seed=1)
    app = open_app(workspace, page="pages/dataset.py")
    assert "use the demo phantoms" in texts(app)
    next(button for button in app.button if button.label == "Use the demo phantoms").click().run()
    _no_exception(app)
    assert workspace_module.last_data_folder(workspace) == dataset
    assert "Use the demo phantoms" not in [button.label for button in app.button]


def test_an_unexpected_error_shows_a_message_not_a_traceback(open_app, tmp_path, monkeypatch):
    def broken(*_arguments, **_keywords):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runs, "list_runs", broken)
    app = open_app(tmp_path / "workspace")
    _no_exception(app)
    assert any("Something unexpected went wrong while reading the workspace" in element.value for element in app.error)
    assert "RuntimeError" in "\n".join(element.value for element in app.markdown)
    assert "Traceback" not in texts(app)
    # The rest of the page still works.
    assert app.title[0].value == "kidney_lab"
    assert "Pages" in [element.value for element in app.subheader]


def test_pages_list_matches_the_files():
    for info in common.PAGES:
        assert (Path(common.__file__).parents[1] / info.path).is_file(), info.path
    assert common.PAGES[0].path == "pages/home.py"  # The default page.


def test_home_shows_a_dash_for_a_cancelled_runs_accuracy(open_app, tmp_path):
    workspace = tmp_path / "workspace"
    run = runs.create_run(workspace, runs.new_run_id("vit"), {"model": "vit", "study_id": "study-20260101-120000-ab12"})
    runs.mark_finished(run, runs.CANCELLED, error="cancelled by the user")
    app = open_app(workspace)
    _no_exception(app)
    frame = app.dataframe[0]
    assert frame.value["state"].tolist() == ["cancelled"]
    assert frame.value["test accuracy"].isna().all()
    # Missing cells are drawn as the placeholder, never as "None".
    assert frame.proto.placeholder == "— (not evaluated)"
