"""What the Compare page shows around the heat maps, decided by kidney_lab.explain.compare:
the runs it uses by default, the agreement, the predictions table and the cache key."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kidney_lab import runs
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics
from kidney_lab.explain import compare

REPO_ROOT = Path(__file__).resolve().parents[2]


def _record(model: str, study: str, run_id: str = "") -> types.SimpleNamespace:
    return types.SimpleNamespace(model=model, study_id=study, run_id=run_id or f"{model}-{study}")


def _result(name: str, predicted: str, **probabilities: float) -> types.SimpleNamespace:
    shares = {label: probabilities.get(label, 0.0) for label in CLASS_NAMES}
    return types.SimpleNamespace(run_id=f"run-{name}", model=name.lower(), display_name=name, method="gradcam",
                                 predicted=predicted, target=predicted, probabilities=shares, seconds=0.25)


def test_the_default_runs_are_the_newest_study_filled_with_each_missing_architectures_newest_run():
    newest_first = [_record("vit", "study-b", "vit-new"), _record("resnet50", "study-a", "resnet-a"),
                    _record("vit", "study-b", "vit-old"), _record("mobilenetv2", "study-b"),
                    _record("mobilenetv2", "study-a", "mobile-a"), _record("resnet50", "study-0", "resnet-0")]
    chosen = compare.default_runs(newest_first, ("resnet50", "mobilenetv2", "vit", "inceptionv3"))
    assert list(chosen) == ["resnet50", "mobilenetv2", "vit", "inceptionv3"]
    # The newest study's runs are kept, even where an older study has a newer run of them ...
    assert chosen["mobilenetv2"].study_id == "study-b" and chosen["vit"].run_id == "vit-new"
    # ... and an architecture it lacks gets its own newest run: training one model drops no other.
    assert chosen["resnet50"].run_id == "resnet-a"
    assert chosen["inceptionv3"] is None
    assert compare.default_runs([], ("vit",)) == {"vit": None}


def _faithful(folder: Path, **pointing: float) -> Path:
    from kidney_lab import fileio

    folder.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(folder / runs.FAITHFULNESS_FILE, {
        "methods": {method.replace("_", "+"): {"pointing_game": value} for method, value in pointing.items()}})
    return folder


def test_the_default_method_is_the_one_that_points_best(tmp_path):
    first = _faithful(tmp_path / "a", gradcam=0.5, layercam=0.7, gradcam__=0.6)
    second = _faithful(tmp_path / "b", gradcam=0.6, layercam=0.8)
    unmeasured = tmp_path / "c"
    unmeasured.mkdir()
    # Means over the methods both measured: gradcam 0.55, layercam 0.75 (gradcam++ only on one run).
    assert compare.default_method([first, second, unmeasured]) == "layercam"
    assert compare.default_method([unmeasured]) == compare.DEFAULT_METHOD
    assert compare.default_method([]) == compare.DEFAULT_METHOD
    # A tie keeps the default.
    tie = _faithful(tmp_path / "d", gradcam=0.7, layercam=0.7)
    assert compare.default_method([tie]) == compare.DEFAULT_METHOD


@pytest.mark.slow
def test_usable_runs_are_completed_with_a_model_newest_first(tiny_study, tmp_path):
    completed = compare.usable_runs(tiny_study.workspace)
    assert sorted(record.model for record in completed) == sorted(tiny_study.runs)
    assert [record.run_id for record in completed] == [record.run_id for record in runs.list_runs(tiny_study.workspace)]
    queued = runs.create_run(tmp_path, runs.new_run_id("vit"), {"model": "vit"})
    assert runs.read_run(queued).state == runs.QUEUED and compare.usable_runs(tmp_path) == []


@pytest.mark.parametrize(("predictions", "text", "leader", "count"), [
    ([("ResNet50", "Tumor")], "Only one model: ResNet50 predicts **Tumor**.", "Tumor", 1),
    ([("A", "Cyst"), ("B", "Cyst")], "**All 2 models agree**: Cyst.", "Cyst", 2),
    ([("A", "Cyst"), ("B", "Cyst"), ("C", "Stone")], "**2 of 3 models** predict **Cyst**; C predicts Stone.", "Cyst", 2),
    ([("A", "Cyst"), ("B", "Stone")], "**The models disagree** (Cyst: A; Stone: B).", None, 1),
])
def test_the_agreement_counts_and_says_who_predicts_what(predictions, text, leader, count):
    found = compare.agreement([_result(name, label) for name, label in predictions])
    assert (found.text, found.leader, found.count, found.total) == (text, leader, count, len(predictions))
    assert sum(found.votes.values()) == len(predictions)
    assert found.unanimous == (count == len(predictions))


def test_no_result_has_no_agreement():
    with pytest.raises(ValueError, match="no agreement"):
        compare.agreement([])


def test_the_predictions_table_names_probabilities_as_every_stored_predictions_csv():
    columns = compare.prediction_columns()
    assert [column for column in columns if column.startswith(metrics.PROBABILITY_PREFIX)] == metrics.probability_columns()
    text = compare.predictions_csv([("scan one.png", [_result("ViT", "Stone", Stone=0.75, Cyst=0.25)]),
                                    ("empty.png", [])])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == columns and len(rows) == 1
    assert rows[0]["scan"] == "scan one.png" and rows[0]["explained_class"] == "Stone"
    assert rows[0]["prob_Stone"] == "0.750000" and rows[0]["prob_Normal"] == "0.000000"
    assert not any(column.startswith("p_") for column in columns)


def test_the_model_key_changes_when_the_model_file_does(tmp_path):
    (tmp_path / runs.MODEL_FILE).write_bytes(b"one")
    first = runs.model_key(tmp_path)
    assert first[0] == str(tmp_path.resolve()) and first[2] == 3
    (tmp_path / runs.MODEL_FILE).write_bytes(b"other model")
    assert runs.model_key(tmp_path) != first
    with pytest.raises(FileNotFoundError):
        runs.model_key(tmp_path / "no-run")


def test_the_choices_load_no_tensorflow():
    code = ("import sys; from kidney_lab.explain import compare; import kidney_lab.explain as package; "
            "package.COLORMAPS; compare.prediction_columns(); "
            "print('tensorflow' in sys.modules)")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
