"""The Train page and the Home page's demo: real background jobs started, followed and cancelled."""

from __future__ import annotations

import sys

import pytest

from kidney_lab import runs
from kidney_lab.training import jobs
from tests.app.helpers import progress_texts, texts, wait_for

TRAIN_PAGE = "pages/train.py"


def _form(app, models: list[str], size: int, epochs: int = 1):
    app.multiselect[0].set_value(models)
    number_inputs = {element.label: element for element in app.number_input}
    number_inputs["Epochs (at most)"].set_value(epochs)
    number_inputs["Image size (pixels)"].set_value(size)
    number_inputs["Batch size"].set_value(8)
    return app


def _button(app, label: str):
    return next(button for button in app.button if button.label == label)


@pytest.mark.slow
def test_train_page_starts_and_cancels_a_tiny_job(open_app, tmp_path, phantom_root):
    workspace = tmp_path / "workspace"
    app = open_app(workspace, page=TRAIN_PAGE, data=phantom_root)
    _form(app, ["vit"], 32)
    app.radio[1].set_value("none")
    _button(app, "Start training").click().run()
    assert not app.exception and not app.error, [element.value for element in app.error]
    started = jobs.list_jobs(workspace)
    assert len(started) == 1 and started[0].is_active
    job = started[0]
    assert job.models == ["vit"]
    assert job.argv[3:] == ["train", "--data", str(phantom_root), "--models", "vit", "--epochs", "1",
                            "--img-size", "32", "--split", "grouped", "--weights", "none",
                            "--batch-size", "8", "--lr", "0.001",
                            "--study-id", job.study_id, "--workspace", str(workspace)]
    assert f"Started job `{job.job_id}`" in texts(app)
    # Wait until the training process has made its run, so that cancelling reaches it.
    wait_for(lambda: runs.list_runs(workspace, study_id=job.study_id), 180, "the run's creation")
    app.run()
    assert "Cancel" in [button.label for button in app.button]
    assert any("Vision Transformer" in text for text in progress_texts(app))
    _button(app, "Cancel").click().run()
    assert not app.exception
    record = jobs.read_job(job.job_id, workspace)
    assert record.state == jobs.CANCELLED
    (run,) = runs.list_runs(workspace, study_id=job.study_id)
    assert run.state == runs.CANCELLED
    # The page (as after a restart: a fresh session) shows the same job, ended.
    again = open_app(workspace, page=TRAIN_PAGE, data=phantom_root)
    shown = texts(again)
    assert job.job_id in shown and "cancelled" in shown
    assert "Cancel" not in [button.label for button in again.button]


@pytest.mark.parametrize(
    ("models", "size", "message"),
    [
        (["inceptionv3"], 64, "InceptionV3 needs an image size of at least 75 pixels"),
        (["vit", "resnet50"], 40, "Vision Transformer needs an image size that is a multiple of 16"),
        ([], 224, "Choose at least one model"),
    ],
)
def test_train_form_refuses_what_cannot_be_trained(open_app, tmp_path, phantom_root, models, size, message):
    workspace = tmp_path / "workspace"
    app = open_app(workspace, page=TRAIN_PAGE, data=phantom_root)
    _form(app, models, size)
    _button(app, "Start training").click().run()
    assert not app.exception
    assert any(message in element.value for element in app.error), [element.value for element in app.error]
    assert jobs.list_jobs(workspace) == []


def test_train_form_refuses_imagenet_for_the_vit(open_app, tmp_path, phantom_root):
    app = open_app(tmp_path / "workspace", page=TRAIN_PAGE, data=phantom_root)
    _form(app, ["vit"], 64)
    app.radio[1].set_value("imagenet")
    _button(app, "Start training").click().run()
    assert any("Vision Transformer has no ImageNet weights" in element.value for element in app.error)


def test_train_page_shows_a_failed_run_with_its_error_and_log(open_app, tmp_path, phantom_root):
    workspace = tmp_path / "workspace"
    job = jobs.start_job([], workspace, command=[sys.executable, "-c", "print('training went wrong')"])
    wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active, 30, "the dummy job's end")
    run_id = runs.new_run_id("resnet50")
    folder = runs.create_run(workspace, run_id, {"model": "resnet50", "display_name": "ResNet50",
                                                 "study_id": job.study_id})
    (folder / runs.LOG_FILE).write_text("epoch 1\nout of memory in conv5\n")
    runs.mark_finished(folder, runs.FAILED, error="out of memory; use a smaller --batch-size or --img-size")
    failed_job = jobs.start_job([], workspace, command=[sys.executable, "-c", "import sys; print('no data'); sys.exit(2)"])
    wait_for(lambda: not jobs.read_job(failed_job.job_id, workspace).is_active, 30, "the failing job's end")

    app = open_app(workspace, page=TRAIN_PAGE, data=phantom_root)
    assert not app.exception
    shown = texts(app)
    assert "out of memory; use a smaller --batch-size" in shown
    assert [element.value for element in app.code if "out of memory in conv5" in element.value]
    assert "The job ended before any model started" in shown
    assert [element.value for element in app.code if "no data" in element.value]
    assert "failed (exit code 2)" in shown


@pytest.mark.slow
def test_home_builds_the_demo_as_a_job_and_shows_it(open_app, tmp_path):
    from kidney_lab.models.registry import MODEL_NAMES

    workspace = tmp_path / "workspace"
    app = open_app(workspace)
    _button(app, "Build the demo study").click().run()
    assert not app.exception and not app.error, [element.value for element in app.error]
    (job,) = jobs.list_jobs(workspace)
    try:
        assert job.kind == "demo" and job.models == list(MODEL_NAMES)
        assert job.argv[3] == "demo" and job.argv[-4:] == ["--study-id", job.study_id, "--workspace", str(workspace)]
        assert "Building the demo study" in texts(app)
        assert "Build the demo study" not in [button.label for button in app.button]
        waiting = [text for text in progress_texts(app) if "not started (waiting for its turn)" in text]
        assert len(waiting) >= len(MODEL_NAMES) - 1
        with pytest.raises(jobs.JobError, match="already being built"):
            __import__("kidney_lab.demo").demo.start_demo_job(workspace)
    finally:
        jobs.cancel_job(job.job_id, workspace)
    assert jobs.read_job(job.job_id, workspace).state == jobs.CANCELLED
