"""Security: safe model loading, no path escapes from names and ids, no unsafe calls in the code.

The source-code test walks the syntax tree of every module of the library and the app, so a
new ``pickle`` import or ``shell=True`` anywhere fails the suite with its file and line.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tomllib
import zipfile
from pathlib import Path

import keras
import pytest

from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.cli import main
from kidney_lab.data import split as split_module
from kidney_lab.errors import ConfigError, KidneyLabError, SplitError
from kidney_lab.models import builders
from kidney_lab.models import registry
from kidney_lab.training import jobs

REPOSITORY = Path(__file__).resolve().parents[2]
SOURCES = ("kidney_lab", "pages", "streamlit_app.py")

_PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
_CODE_RUNNERS = {"eval", "exec", "compile", "__import__"}
_SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}
# Loaders of Keras models other than kidney_lab's own builders.load_model.
_KERAS_LOADERS = ("keras.saving.load_model", "keras.models.load_model", "tf.keras.models.load_model",
                  "saving.load_model")


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name or attribute chain, ``""`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((item.value for item in call.keywords if item.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_constructs(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe construct in ``source``, as ``file:line: what``."""
    found: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in _PICKLING_MODULES:
                    report(node, f"imports {name} (unpickling runs arbitrary code)")
        elif isinstance(node, ast.Attribute) and node.attr == "enable_unsafe_deserialization":
            report(node, "turns on Keras' unsafe deserialization")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in _CODE_RUNNERS:
                report(node, f"calls {name}()")
            if tuple(name.rsplit(".", 1)) in _SHELL_CALLS:
                report(node, f"calls {name}() (a shell)")
            if _is_true(_keyword(node, "shell")):
                report(node, "passes shell=True")
            if _is_true(_keyword(node, "allow_pickle")):
                report(node, "passes allow_pickle=True")
            safe_mode = _keyword(node, "safe_mode")
            if safe_mode is not None and not _is_true(safe_mode):
                report(node, "passes safe_mode other than True")
            if name.endswith(_KERAS_LOADERS) and not _is_true(safe_mode):
                report(node, f"calls {name}() without safe_mode=True")
            if name.endswith("read_pickle") or name in ("yaml.unsafe_load", "yaml.full_load"):
                report(node, f"calls {name}()")
            if name == "yaml.load":
                loader = _dotted(_keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else ast.Constant(None)))
                if loader.rsplit(".", 1)[-1] not in _SAFE_YAML_LOADERS:
                    report(node, "calls yaml.load() without a safe Loader")
    return found


def _source_files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = REPOSITORY / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else [])
    return files


def test_the_checker_finds_every_unsafe_construct() -> None:
    planted = """
import pickle
from joblib import load
import numpy, yaml, subprocess, os, keras
numpy.load("x.npy", allow_pickle=True)
eval("1 + 1")
exec("x = 1")
subprocess.run("ls", shell=True)
os.system("ls")
yaml.load(text)
yaml.load(text, Loader=yaml.SafeLoader)
keras.saving.load_model("m.keras")
keras.models.load_model("m.keras", safe_mode=False)
keras.config.enable_unsafe_deserialization()
frame = pandas.read_pickle("x.pkl")
"""
    found = unsafe_constructs(planted)
    lines = sorted(int(item.split(":")[1]) for item in found)
    # Every planted line but the safe yaml.load (line 11) is reported.
    assert sorted(set(lines)) == [2, 3, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15], found


def test_no_unsafe_construct_in_the_library_or_the_app() -> None:
    files = _source_files()
    assert len(files) > 20 and any(path.name == "registry.py" for path in files)
    found = [item for path in files for item in unsafe_constructs(path.read_text("utf-8"), str(path.relative_to(REPOSITORY)))]
    assert found == []


def test_the_model_loader_loads_models_with_safe_mode_on() -> None:
    tree = ast.parse((REPOSITORY / "kidney_lab" / "models" / "builders.py").read_text("utf-8"))
    loads = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _dotted(node.func) == "keras.saving.load_model"]
    assert len(loads) == 1 and _is_true(_keyword(loads[0], "safe_mode"))


# Model files ----------------------------------------------------------------------------------


def _tampered_model(tmp_path: Path, change) -> Path:
    """A valid 4-class .keras file whose config.json was edited by ``change(config)``."""
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", name=registry.OUTPUT_LAYER)(features)
    original = tmp_path / "original.keras"
    keras.Model(inputs, outputs).save(original)
    with zipfile.ZipFile(original) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config["config"]["layers"])
    members["config.json"] = json.dumps(config).encode()
    tampered = tmp_path / "model.keras"
    with zipfile.ZipFile(tampered, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return tampered


def _layer(layers: list[dict], class_name: str) -> dict:
    return next(layer for layer in layers if layer["class_name"] == class_name)


def test_a_model_naming_an_unknown_class_is_refused_without_importing_it(tmp_path: Path, monkeypatch) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "kidney_canary.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Pooling:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(canary))

    def unknown_class(layers: list[dict]) -> None:
        _layer(layers, "GlobalAveragePooling2D").update(
            module="kidney_canary", class_name="Pooling", registered_name="kidney_canary>Pooling"
        )

    with pytest.raises(registry.ModelLoadError, match="Cannot load model"):
        builders.load_model(_tampered_model(tmp_path, unknown_class))
    assert not (tmp_path / "imported").exists()
    assert "kidney_canary" not in sys.modules


def test_a_model_naming_an_arbitrary_function_is_refused(tmp_path: Path, monkeypatch) -> None:
    called = []
    monkeypatch.setattr(os, "system", lambda *args: called.append(args))

    def shell_activation(layers: list[dict]) -> None:
        _layer(layers, "Dense")["config"]["activation"] = {
            "module": "os", "class_name": "function", "config": "system", "registered_name": "function",
        }

    with pytest.raises(registry.ModelLoadError, match="Cannot load model"):
        builders.load_model(_tampered_model(tmp_path, shell_activation))
    assert called == []


# Names and ids never become paths outside the workspace ----------------------------------------

HOSTILE_IDS = [
    "../outside", "..", "/etc/passwd", "20261126-101512-vit-abcdef/../../outside",
    "20261126-101512-vit-abcdef/..", "", "20261126-101512-vit-abcdef\x00", "~/outside",
    "job-20261126-101512-abcdef/../../outside", "study-20261126-101512-ab12/../x",
]


@pytest.fixture
def guarded(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace and, next to it, a folder with a run in it that nothing may reach by name."""
    workspace, outside = tmp_path / "workspace", tmp_path / "outside"
    workspace.mkdir()
    runs.create_run(outside, runs.new_run_id("vit"), {"model": "vit"})
    return workspace, outside


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_a_hostile_run_job_or_split_id_names_no_folder(guarded, hostile: str) -> None:
    workspace, outside = guarded
    before = _snapshot(outside)
    with pytest.raises(runs.InvalidRunIdError, match="is not a run id"):
        runs.run_path(workspace, hostile)
    with pytest.raises(runs.InvalidRunIdError):
        runs.delete_run(workspace, hostile)
    with pytest.raises(jobs.JobError, match="is not a job id"):
        jobs.job_path(hostile, workspace)
    with pytest.raises(jobs.JobError):
        jobs.cancel_job(hostile, workspace=workspace)
    with pytest.raises(SplitError):
        split_module.load_split(workspace, hostile)
    assert runs.list_runs(workspace, study_id=hostile) == []
    assert _snapshot(outside) == before


@pytest.mark.parametrize("hostile", ["../outside", "/etc", "a/../../outside", "."])
def test_a_hostile_name_cannot_leave_the_workspace(guarded, hostile: str) -> None:
    workspace, _ = guarded
    if hostile == ".":
        assert workspace_module.inside(workspace, hostile) == workspace.resolve()
        return
    with pytest.raises(workspace_module.WorkspaceError, match="is not a name inside the workspace"):
        workspace_module.inside(workspace, hostile)


def test_a_run_path_outside_the_workspace_is_refused_where_it_must_stay_inside(guarded) -> None:
    workspace, outside = guarded
    (run,) = [path for path in outside.iterdir() if runs.RUN_ID_PATTERN.fullmatch(path.name)]
    for reference in (str(run), f"{workspace}/../outside/{run.name}"):
        assert runs.resolve_run(reference, workspace) == run.resolve()  # A path the user typed.
        with pytest.raises(workspace_module.WorkspaceError, match="is not inside the workspace"):
            runs.resolve_run(reference, workspace, require_inside=True)
    # A bare id is looked up in the workspace only, never next to it.
    with pytest.raises(runs.RunNotFoundError):
        runs.resolve_run(run.name, workspace)


def test_a_link_inside_the_workspace_does_not_lead_a_deletion_outside(guarded) -> None:
    workspace, outside = guarded
    (run,) = [path for path in outside.iterdir() if runs.RUN_ID_PATTERN.fullmatch(path.name)]
    runs.mark_finished(run, runs.COMPLETED)
    (workspace / run.name).symlink_to(run, target_is_directory=True)
    before = _snapshot(outside)
    with pytest.raises(workspace_module.WorkspaceError):
        runs.delete_run(workspace, run.name)
    with pytest.raises(workspace_module.WorkspaceError):
        runs.run_path(workspace, run.name)
    assert _snapshot(outside) == before


@pytest.mark.parametrize("hostile", ["../x", "/tmp/x", "a/b", "../" * 5 + "etc"])
def test_hostile_model_and_study_names_are_refused(tmp_path: Path, hostile: str) -> None:
    with pytest.raises(ConfigError):
        runs.new_run_id(hostile)
    with pytest.raises(ConfigError, match="Unknown model"):
        registry.get_spec(hostile)
    with pytest.raises(ConfigError, match="is not a study id"):
        jobs.start_job(["--data", str(tmp_path)], workspace=tmp_path / "workspace", study_id=hostile)
    assert not (tmp_path / "workspace" / jobs.JOBS_FOLDER).exists() or not any(
        (tmp_path / "workspace" / jobs.JOBS_FOLDER).glob("job-*")
    )


def test_the_command_line_refuses_a_hostile_study_id_in_one_line(tmp_path: Path, capsys) -> None:
    code = main(["train", "--data", str(tmp_path), "--models", "vit", "--study-id", "../../escaped",
                 "--workspace", str(tmp_path / "workspace")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: ") and "is not a study id" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# Limits -----------------------------------------------------------------------------------------


def test_the_app_sets_an_upload_size_limit() -> None:
    config_file = REPOSITORY / ".streamlit" / "config.toml"
    if not (REPOSITORY / "streamlit_app.py").is_file():
        pytest.skip("the Streamlit app is not in this checkout yet")
    assert config_file.is_file(), "the app needs .streamlit/config.toml with server.maxUploadSize"
    limit = tomllib.loads(config_file.read_text("utf-8"))["server"]["maxUploadSize"]
    # Megabytes; Streamlit's own default is 200. A CT slice is well under 1 MB.
    assert isinstance(limit, int) and 1 <= limit <= 100


def test_errors_for_hostile_input_are_kidney_lab_errors() -> None:
    # What the command line and the app show as one message, never a traceback.
    for error_type in (runs.InvalidRunIdError, jobs.JobError, SplitError, workspace_module.WorkspaceError):
        assert issubclass(error_type, KidneyLabError)
