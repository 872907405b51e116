"""The app's warm-up: the Compare page's default runs loaded and traced before the first scan."""

from __future__ import annotations

import datetime
import logging
import shutil
import threading
from pathlib import Path

import pytest

from kidney_lab import runs
from kidney_lab.explain import cam
from kidney_lab.explain import compare
from kidney_lab.explain import preload
from tests.explain.conftest import lesion_phantom


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch):
    """Each test starts as a new app process: no explainer cached, no warm-up started."""
    cam.clear_cache()
    monkeypatch.setattr(preload, "_warmed", set())
    monkeypatch.setattr(preload, "_thread", None)
    monkeypatch.delenv(preload.WARM_UP_VARIABLE, raising=False)
    yield
    cam.clear_cache()


def placeholder_runs(workspace: Path, models: tuple[str, ...] = ("resnet50", "vit"),
                     hour: int = 10) -> list[Path]:
    """Completed runs of one study, started at ``hour`` today, whose model files are not models."""
    when = datetime.datetime.now(datetime.timezone.utc).replace(hour=hour)
    study = runs.new_study_id(when)
    folders = []
    for model in models:
        folder = runs.create_run(workspace, runs.new_run_id(model, when), {"model": model, "image_size": 64,
                                                                           "study_id": study})
        (folder / runs.MODEL_FILE).write_bytes(b"not a model")
        runs.mark_finished(folder, runs.COMPLETED)
        folders.append(folder)
    return folders


@pytest.mark.slow
def test_warm_up_loads_and_traces_the_default_runs(vit_run: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    shutil.copytree(vit_run, workspace / vit_run.name)
    result = preload.warm_up(workspace)
    assert result.run_ids == [vit_run.name] and result.errors == []
    assert cam.cached_explainers() == [(vit_run.name, compare.DEFAULT_METHOD)]
    explainer = cam.load_explainer(workspace / vit_run.name, compare.DEFAULT_METHOD)
    assert explainer.traces == 1
    # The page's first real scan finds the explainer traced: nothing is traced again.
    report = compare.explain([workspace / vit_run.name], lesion_phantom())
    assert [result.run_id for result in report.results] == [vit_run.name]
    assert explainer.traces == 1


def test_warm_up_reports_a_run_that_cannot_be_loaded(tmp_path: Path) -> None:
    folders = placeholder_runs(tmp_path)
    result = preload.warm_up(tmp_path)
    assert result.run_ids == []
    assert [failure["run_id"] for failure in result.errors] == [folder.name for folder in folders]
    assert all("Cannot load model" in failure["message"] for failure in result.errors)


def test_the_default_runs_are_the_newest_study_filled_by_older_runs_in_registry_order(tmp_path: Path) -> None:
    older = placeholder_runs(tmp_path, ("mobilenetv2",), hour=9)
    newest = placeholder_runs(tmp_path, ("vit", "resnet50"), hour=10)
    # compare.DEFAULT_RUNS_RULE: MobileNetV2, absent from the newest study, keeps its own run.
    assert preload.default_run_folders(tmp_path) == [older[0], newest[1], newest[0]]
    assert preload.default_run_folders(tmp_path / "empty") == []


def test_start_warm_up_warms_each_set_of_runs_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def recorded(workspace: Path, method: str) -> preload.WarmUp:
        calls.append((workspace, method))
        return preload.WarmUp([], [], 0.0)

    monkeypatch.setattr(preload, "warm_up", recorded)
    placeholder_runs(tmp_path)
    preload.start_warm_up(tmp_path).join(10)
    preload.start_warm_up(tmp_path).join(10)  # A rerun of the app script.
    assert calls == [(tmp_path, compare.DEFAULT_METHOD)]
    # A new study changes the default runs: they are loaded too.
    placeholder_runs(tmp_path, ("vit",), hour=11)
    preload.start_warm_up(tmp_path).join(10)
    assert len(calls) == 2


def test_start_warm_up_returns_at_once_and_starts_no_second_thread(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    release = threading.Event()

    def slow(workspace: Path, method: str) -> preload.WarmUp:
        release.wait(10)
        return preload.WarmUp([], [], 0.0)

    monkeypatch.setattr(preload, "warm_up", slow)
    placeholder_runs(tmp_path)
    thread = preload.start_warm_up(tmp_path)
    assert thread.is_alive()
    assert preload.start_warm_up(tmp_path) is None
    release.set()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("value", ["0", "off", "No"])
def test_start_warm_up_can_be_switched_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv(preload.WARM_UP_VARIABLE, value)
    placeholder_runs(tmp_path)
    assert preload.start_warm_up(tmp_path) is None


def test_start_warm_up_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    placeholder_runs(tmp_path)

    def broken(*args: object) -> None:
        raise RuntimeError("the disk went away")

    with caplog.at_level(logging.WARNING, logger=preload.__name__):
        monkeypatch.setattr(preload, "default_run_folders", broken)
        preload.start_warm_up(tmp_path).join(10)
        monkeypatch.setattr(preload, "warm_up_enabled", broken)
        assert preload.start_warm_up(tmp_path) is None
    assert [record.message for record in caplog.records] == [
        "Loading the Compare models ahead of time failed.",
        "Could not start loading the Compare models ahead of time.",
    ]
    assert all(str(record.exc_info[1]) == "the disk went away" for record in caplog.records)


def test_a_run_that_fails_to_load_ahead_of_time_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, = placeholder_runs(tmp_path, ("vit",))
    with caplog.at_level(logging.WARNING, logger=preload.__name__):
        preload.start_warm_up(tmp_path).join(120)
    assert [record.message.split(":")[0] for record in caplog.records] == [
        f"Run {folder.name} was not loaded ahead of time"]
