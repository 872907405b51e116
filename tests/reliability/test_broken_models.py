"""Broken model files: a run whose model.keras is cut short or replaced is reported unusable.

The runs here are made with the run store and models straight from the registry (untrained:
these tests are about files, never about accuracy). Each damaged run is a copy of one intact
run, so the intact one shows that the other runs of a workspace keep working.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import keras
import pytest

from kidney_lab import runs
from kidney_lab.models import builders
from kidney_lab.models import registry

MODEL, SIZE = "vit", 32


def _save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run's own model, another architecture, another input size and a 3-class model."""
    folder = tmp_path_factory.mktemp("model-files")
    inputs = keras.Input((SIZE, SIZE, 3))
    three = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    return {
        "own": _save(builders.create_model(MODEL, SIZE).model, folder / "vit-32.keras"),
        "mobilenetv2": _save(builders.create_model("mobilenetv2", SIZE).model, folder / "mobilenetv2-32.keras"),
        "vit-48": _save(builders.create_model(MODEL, 48).model, folder / "vit-48.keras"),
        "three-classes": _save(keras.Model(inputs, three, name="three_classes"), folder / "three.keras"),
    }


@pytest.fixture
def workspace(tmp_path: Path, model_files: dict[str, Path]) -> tuple[Path, Path]:
    """A workspace holding one completed vit run with its own model; returns (workspace, run)."""
    base = tmp_path / "workspace"
    run = runs.create_run(base, runs.new_run_id(MODEL), {"model": MODEL, "image_size": SIZE})
    shutil.copyfile(model_files["own"], run / runs.MODEL_FILE)
    runs.mark_finished(run, runs.COMPLETED)
    return base, run


def _cut_to_half(path: Path, files: dict[str, Path]) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cut_the_end(path: Path, files: dict[str, Path]) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _empty(path: Path, files: dict[str, Path]) -> None:
    path.write_bytes(b"")


def _delete(path: Path, files: dict[str, Path]) -> None:
    path.unlink()


def _replace_with(name: str) -> Callable[[Path, dict[str, Path]], None]:
    def replace(path: Path, files: dict[str, Path]) -> None:
        shutil.copyfile(files[name], path)

    return replace


# (damage, what model_problem says, what load_model says with the run's model name and size)
DAMAGE = {
    "cut-to-half": (_cut_to_half, "is damaged (not a complete .keras archive", "Cannot load model"),
    "cut-at-the-end": (_cut_the_end, "is damaged (not a complete .keras archive", "Cannot load model"),
    "empty": (_empty, "is damaged (not a complete .keras archive", "Cannot load model"),
    "deleted": (_delete, "is missing", "No model file"),
    "other-architecture": (
        _replace_with("mobilenetv2"), "holds a mobilenetv2 model, not the vit this run trained",
        "holds a mobilenetv2 model, not Vision Transformer",
    ),
    "other-input-size": (
        _replace_with("vit-48"), "takes 48x48 pixel input, but this run trained at 32x32",
        "takes 48x48 pixel input, not 32x32",
    ),
    "three-classes": (
        _replace_with("three-classes"), "holds a three_classes model", "is not a 4-class image classifier"
    ),
}


@pytest.mark.parametrize(("damage", "problem", "refusal"), DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_model_file_makes_its_run_unusable_and_no_other(
    workspace, model_files, damage, problem: str, refusal: str
) -> None:
    base, intact = workspace
    broken = runs.run_path(base, runs.new_run_id(MODEL))
    shutil.copytree(intact, broken)
    runs.update_run_info(broken, run_id=broken.name)
    damage(broken / runs.MODEL_FILE, model_files)

    record = runs.read_run(broken)
    assert record.state == runs.COMPLETED  # Training did complete; its stored predictions stay valid.
    assert record.model_problem is not None and problem in record.model_problem
    with pytest.raises(registry.ModelLoadError, match=refusal):
        builders.load_model(broken / runs.MODEL_FILE, model_name=record.model, image_size=SIZE)

    listed = {record.run_id: record for record in runs.list_runs(base)}
    assert set(listed) == {intact.name, broken.name}
    assert listed[intact.name].state == runs.COMPLETED and listed[intact.name].model_problem is None
    model = builders.load_model(intact / runs.MODEL_FILE, model_name=MODEL, image_size=SIZE)
    assert model.name == MODEL and model.input_shape == (None, SIZE, SIZE, 3)


def test_a_three_class_model_is_named_by_its_output_count(tmp_path: Path, model_files) -> None:
    # Checked without a model name: the class count is then what gives it away.
    assert "has 3 outputs, not one per class" in runs.check_model_file(model_files["three-classes"])
    assert runs.check_model_file(model_files["own"], MODEL, SIZE) is None


def test_a_malformed_architecture_description_is_reported_not_raised(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"config": {"name": "vit", "layers": [1, 2]}}')
        archive.writestr("model.weights.h5", b"")
    assert "malformed" in runs.check_model_file(path, MODEL, SIZE)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("model.weights.h5", b"")
    assert "is damaged" in runs.check_model_file(path, MODEL, SIZE)
