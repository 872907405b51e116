"""What the library gives the app: the remembered dataset folder and the demo as a background job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kidney_lab import demo
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.errors import ConfigError
from kidney_lab.models.registry import MODEL_NAMES
from kidney_lab.training import config
from kidney_lab.training import jobs
from tests.app.helpers import wait_for


def test_the_last_data_folder_is_remembered_in_the_workspace(tmp_path):
    workspace = tmp_path / "workspace"
    assert workspace_module.last_data_folder(workspace) is None
    (workspace).mkdir()
    (workspace / workspace_module.APP_STATE_FILE).write_text('{"other": 1}')
    recorded = workspace_module.remember_data_folder(tmp_path / "data" / ".." / "data", workspace)
    assert recorded == (tmp_path / "data").resolve()
    assert workspace_module.last_data_folder(workspace) == recorded
    # Other keys of app.json are kept, and no temporary file is left behind.
    assert '"other": 1' in (workspace / workspace_module.APP_STATE_FILE).read_text()
    assert sorted(path.name for path in workspace.iterdir()) == [workspace_module.APP_STATE_FILE]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"data_folder": 7}', '{"data_folder": "  "}'])
def test_a_damaged_record_counts_as_none(tmp_path, content):
    (tmp_path / workspace_module.APP_STATE_FILE).write_text(content)
    assert workspace_module.last_data_folder(tmp_path) is None


def test_an_unusable_workspace_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(workspace_module.WorkspaceError, match="not writable"):
        workspace_module.remember_data_folder(tmp_path, blocker)


def _sleeper(tmp_path: Path) -> str:
    """A stand-in for Python that runs for a while, so a job stays active."""
    script = tmp_path / "sleeper"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    return str(script)


def test_start_demo_job_runs_the_demo_command_once(tmp_path):
    workspace = tmp_path / "workspace"
    settings = config.DemoSettings(per_class=3, image_size=64, epochs=1, models=("vit", "resnet50"))
    job = demo.start_demo_job(workspace, settings, python=_sleeper(tmp_path))
    try:
        assert job.is_active and job.kind == "demo"
        assert job.models == ["vit", "resnet50"]
        assert job.info["display_names"] == {"vit": "Vision Transformer", "resnet50": "ResNet50"}
        assert runs.STUDY_ID_PATTERN.fullmatch(job.study_id)
        assert job.argv[1:] == ["-m", "kidney_lab", "demo", "--per-class", "3", "--size", "64", "--seed", "0",
                                "--models", "vit,resnet50", "--epochs", "1",
                                "--study-id", job.study_id, "--workspace", str(workspace.resolve())]
        with pytest.raises(jobs.JobError, match="already being built"):
            demo.start_demo_job(workspace, settings, python=_sleeper(tmp_path))
    finally:
        jobs.cancel_job(job.job_id, workspace, grace_seconds=2)
    assert [record.kind for record in jobs.list_jobs(workspace)] == ["demo"]


def test_demo_settings_the_command_line_cannot_express_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="background demo job"):
        demo.start_demo_job(tmp_path, config.DemoSettings(batch_size=4), python=_sleeper(tmp_path))
    assert jobs.list_jobs(tmp_path) == []


def test_demo_job_continues_an_unfinished_demo_study(tmp_path):
    workspace = tmp_path / "workspace"
    data = demo.prepare_data(config.DemoSettings(per_class=2, image_size=48), workspace)
    study_id = runs.new_study_id()
    run_id = runs.new_run_id("vit")
    folder = runs.create_run(workspace, run_id, {"model": "vit", "study_id": study_id, "data_root": str(data)})
    runs.mark_finished(folder, runs.CANCELLED, error="cancelled by the user")
    job = demo.start_demo_job(workspace, python=_sleeper(tmp_path))
    try:
        assert job.study_id == study_id
        assert job.models == list(MODEL_NAMES)
    finally:
        jobs.cancel_job(job.job_id, workspace, grace_seconds=2)


def test_the_demo_gives_inceptionv3_inputs_large_enough_for_a_3x3_cam_grid(tmp_path):
    # Why 139: test_registry checks each model's min_cam_size on the architecture.
    settings = config.DemoSettings()
    sizes = {name: demo.train_config(settings, name, tmp_path, tmp_path, runs.new_study_id()).image_size for name in MODEL_NAMES}
    assert sizes == {name: (139 if name == "inceptionv3" else 96) for name in MODEL_NAMES}
    # Larger phantoms are never shrunk for it.
    assert config.DemoSettings(image_size=224).input_size("inceptionv3") == 224


def test_run_demo_uses_the_study_id_it_is_given(tmp_path):
    study_id = runs.new_study_id()
    settings = config.DemoSettings(per_class=2, image_size=48, models=())
    result = demo.run_demo(settings, tmp_path, study_id=study_id)
    assert result.study_id == study_id and result.runs == ()


def test_job_kinds_and_details_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="Unknown job kind"):
        jobs.start_job([], tmp_path, kind="explain")
    with pytest.raises(ConfigError, match="not a study id"):
        jobs.start_job([], tmp_path, study_id="../x")
    with pytest.raises(ConfigError, match="may not set pid"):
        jobs.start_job([], tmp_path, details={"pid": 1})
    job = jobs.start_job([], tmp_path, command=[sys.executable, "-c", "pass"], details={"models": ["vit"]})
    wait_for(lambda: not jobs.read_job(job.job_id, tmp_path).is_active, 30, "the job's end")
    record = jobs.read_job(job.job_id, tmp_path)
    assert (record.kind, record.models, record.state) == ("train", ["vit"], jobs.FINISHED)


def test_the_demo_scores_each_completed_runs_heat_maps_once(tmp_path, monkeypatch):
    from kidney_lab import fileio
    from kidney_lab.explain import faithfulness

    calls = []

    def fake_scores(run_dir, data, methods, max_images, **options):
        calls.append((Path(run_dir).name, tuple(methods), max_images, options))
        if "resnet50" in Path(run_dir).name:
            raise RuntimeError("out of memory")
        path = runs.faithfulness_path(run_dir)
        fileio.atomic_write_json(path, {"methods": {method: {"pointing_game": 0.5} for method in methods}})
        return {"path": str(path)}

    monkeypatch.setattr(faithfulness, "evaluate_faithfulness", fake_scores)
    made = {}
    for name, state in (("vit", runs.COMPLETED), ("resnet50", runs.COMPLETED), ("mobilenetv2", runs.CANCELLED)):
        made[name] = runs.create_run(tmp_path, runs.new_run_id(name), {"model": name})
        runs.mark_finished(made[name], state)
    records = [runs.read_run(folder) for folder in made.values()]
    written = demo.measure_faithfulness(records, 40)
    # The cancelled run is not scored; one model's failure does not stop the others.
    assert [path.parent.name for path in written] == [made["vit"].name]
    assert [call[0] for call in calls] == [made["vit"].name, made["resnet50"].name]
    assert calls[0][1:3] == (demo.FAITHFULNESS_METHODS, 40) and calls[0][3]["curves"] is False
    # Measured once: a second call (a resumed demo) tries only what has no scores; 0 images: nothing.
    assert demo.measure_faithfulness(records, 40) == [] and [call[0] for call in calls[2:]] == [made["resnet50"].name]
    assert demo.measure_faithfulness(records, 0) == [] and len(calls) == 3
