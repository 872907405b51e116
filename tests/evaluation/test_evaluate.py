"""Evaluating a tiny trained run: its test split, an external folder, input order, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import audit
from kidney_lab.data import discover
from kidney_lab.data import pipeline
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import evaluate as evaluate_module
from kidney_lab.evaluation import leaderboard as leaderboard_module
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import model_card as model_card_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.models import builders
from kidney_lab.models import registry
from tests.evaluation.conftest import SIZE
from tests.evaluation.helpers import snapshot


def test_subset(run: Path) -> pd.DataFrame:
    info = fileio.read_json(run / runs.RUN_FILE)
    return split_module.load_split(info["workspace"], info["split_id"]).subset("test")


test_subset.__test__ = False  # A helper, not a test.


def test_training_stored_the_full_evaluation(tiny_run: Path) -> None:
    """The engine's call at the end of training writes every field of the extended metrics."""
    stored = store.load_metrics(tiny_run)
    info = fileio.read_json(tiny_run / runs.RUN_FILE)
    table = store.load_predictions(tiny_run)
    assert sorted(table["path"]) == sorted(test_subset(tiny_run)["path"])
    # The split is grouped, so the stored intervals resample the test clusters.
    recomputed = stats.metrics_with_intervals(table, "grouped")
    assert stored["intervals"]["resampling"] == "cluster"
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "loss", "ece", "macro_roc_auc", "intervals"):
        assert stored[key] == pytest.approx(recomputed[key]) if key != "intervals" else stored[key] == recomputed[key]
    assert stored["evaluated_on"] == "test" and stored["split_kind"] == "grouped"
    assert stored["test_with_duplicate_in_train"] == 0
    assert stored["parameters"] == info["parameters"]
    assert stored["model_bytes"] == (tiny_run / runs.MODEL_FILE).stat().st_size
    assert stored["ms_per_image_batch_1"] > 0 and stored["ms_per_image_batch_32"] > 0
    assert stored["train_seconds"] == info["train_seconds"] and stored["epochs"] == 1
    history = runs.read_history(tiny_run / runs.HISTORY_FILE)
    assert stored["kept_epoch"]["epoch"] == 1
    assert stored["kept_epoch"]["val_loss"] == pytest.approx(history[0]["val_loss"])
    assert stored["kept_epoch"]["train_accuracy"] == pytest.approx(history[0]["accuracy"])
    assert stored["predictions"] == str((tiny_run / runs.PREDICTIONS_FILE).absolute())
    assert len(stored["calibration"]["reliability"]) == 10
    [listed] = store.list_evaluations(tiny_run)
    assert listed["source"] == "test" and listed["kind"] == "grouped" and listed["images"] == len(table)


def test_the_test_predictions_keep_each_image_s_cluster_of_the_split(tiny_run: Path) -> None:
    table = store.load_predictions(tiny_run)
    manifest = test_subset(tiny_run).set_index("path")["cluster"]
    assert table.set_index("path")["cluster"].to_dict() == manifest.loc[table["path"]].to_dict()
    stored = store.load_metrics(tiny_run)
    per_class = stats.clusters_per_class(table)
    assert stored["intervals"]["clusters"] == table["cluster"].nunique()
    assert stored["clusters_per_class"] == per_class
    assert stored["few_clusters"] == [name for name, count in per_class.items() if count < 3]


def test_shuffled_input_gives_the_same_metrics_and_the_original_bug_does_not(tiny_run: Path) -> None:
    model = builders.load_model(tiny_run / runs.MODEL_FILE)
    test = test_subset(tiny_run)
    in_order = evaluate_module.predict_frame(model, test, SIZE, batch_size=3)
    shuffled = evaluate_module.predict_frame(model, test.sample(frac=1, random_state=5), SIZE, batch_size=3)
    assert shuffled["path"].tolist() != in_order["path"].tolist()
    by_path = shuffled.set_index("path").loc[in_order["path"]]
    columns = metrics.probability_columns()
    assert np.allclose(by_path[columns].to_numpy(), in_order[columns].to_numpy(), atol=1e-5)
    right, reordered = metrics.compute_metrics(in_order), metrics.compute_metrics(shuffled)
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "confusion_matrix", "per_class", "intervals"):
        assert reordered[key] == right[key], key
    assert reordered["loss"] == pytest.approx(right["loss"], abs=1e-6)

    # The original study: predictions of a shuffled generator beside labels in file order.
    generator = pipeline.make_dataset(
        test, SIZE, batch_size=3, training=True, augmentation=pipeline.Augmentation.off(), seed=1, with_paths=True
    )
    order = [path.decode() for _, _, paths in generator for path in paths.numpy()]
    assert order != test["path"].tolist()
    mispaired = in_order.set_index("path").loc[order].reset_index()
    mispaired["true_label"] = test["label"].to_numpy()
    wrong = metrics.compute_metrics(mispaired)
    assert (mispaired["true_label"].to_numpy() != in_order.set_index("path").loc[order, "true_label"].to_numpy()).any()
    assert wrong["loss"] != pytest.approx(right["loss"], abs=1e-6)
    # Our stored predictions are the model's predictions of those very paths.
    stored = store.load_predictions(tiny_run).set_index("path").loc[in_order["path"]]
    assert np.allclose(stored[columns].to_numpy(), in_order[columns].to_numpy(), atol=1e-5)


def test_external_folder_is_stored_beside_the_run(run_copy: Path, external_folder: Path) -> None:
    before = snapshot(run_copy)
    result = evaluate_module.evaluate(run_copy, external_folder)
    fingerprint = discover.scan_dataset(external_folder).fingerprint
    assert result["evaluated_on"] == fingerprint == result["fingerprint"]
    assert result["split_kind"] == "external" and result["images"] == 12
    assert result["data"] == str(external_folder.resolve())
    assert result["test_with_duplicate_in_train"] == 0 and "MD5" in result["duplicate_check"]
    assert result["same_dataset_as_training"] is False
    folder = run_copy / runs.EXTERNAL_FOLDER / fingerprint
    assert Path(result["predictions"]) == (folder / runs.PREDICTIONS_FILE).absolute()
    assert json.loads((folder / runs.METRICS_FILE).read_text())["data"] == str(external_folder.resolve())
    after = snapshot(run_copy)
    assert {name: data for name, data in after.items() if not name.startswith(runs.EXTERNAL_FOLDER)} == before
    table = store.load_predictions(run_copy, fingerprint)
    assert len(table) == 12 and set(table["true_label"]) == {"Cyst", "Normal", "Stone", "Tumor"}
    assert [item["source"] for item in store.list_evaluations(run_copy)] == ["test", fingerprint]
    assert [item["kind"] for item in store.list_evaluations(run_copy)] == ["grouped", "external"]
    # Each image keeps the cluster the audit of that folder gives it, and the intervals resample them.
    report = audit.audit_dataset(discover.scan_dataset(external_folder))
    expected = report.table.set_index("path")["cluster"]
    assert table.set_index("path")["cluster"].to_dict() == expected.loc[table["path"]].to_dict()
    assert result["intervals"]["resampling"] == "cluster"
    assert result["intervals"]["clusters"] == len(set(report.clusters))
    assert result["clusters_per_class"] == stats.clusters_per_class(table)

    card = model_card_module.model_card(run_copy)
    assert f"`{fingerprint}`" in card and "## External evaluations" in card


def test_the_training_folder_counts_every_training_image_as_a_duplicate(run_copy: Path, phantom_root: Path) -> None:
    result = evaluate_module.evaluate(run_copy, phantom_root)
    info = fileio.read_json(run_copy / runs.RUN_FILE)
    train = split_module.load_split(info["workspace"], info["split_id"]).subset("train")
    assert result["same_dataset_as_training"] is True
    assert result["test_with_duplicate_in_train"] == len(train)
    assert result["images"] == 48


def test_compare_runs_on_the_same_test_images(tiny_run: Path, run_copy: Path, external_folder: Path) -> None:
    result = stats.compare_runs(tiny_run, run_copy)
    assert result["images"] == len(test_subset(tiny_run)) and result["p_value"] == 1.0
    assert result["run_a"] == result["run_b"] == tiny_run.name
    fingerprint = evaluate_module.evaluate(run_copy, external_folder)["fingerprint"]
    with pytest.raises(store.EvaluationError, match="no evaluation"):
        stats.compare_runs(tiny_run, run_copy, source=fingerprint)


def test_model_card_is_generated_from_the_files(run_copy: Path) -> None:
    path = model_card_module.write_model_card(run_copy)
    card = path.read_text()
    stored = store.load_metrics(run_copy)
    assert path == (run_copy / "model_card.md").absolute()
    for heading in ("## Intended use", "## Model", "## Data", "## Split", "## Training", "## Test metrics",
                    "## External evaluations", "## Limits"):
        assert heading in card
    assert "Not for diagnosis" in card and "synthetic phantoms" in card
    low, high = stored["intervals"]["accuracy"]
    assert f"Accuracy: {stored['accuracy']:.3f} [{low:.3f}, {high:.3f}]" in card
    assert "Vision Transformer" in card and "| test |" in card
    assert "Test images with a duplicate in training: 0" in card


def test_a_run_without_a_model_file_is_refused(run_copy: Path, external_folder: Path) -> None:
    (run_copy / runs.MODEL_FILE).unlink()
    before = snapshot(run_copy)
    with pytest.raises(registry.ModelLoadError, match="no model.keras"):
        evaluate_module.evaluate(run_copy)
    with pytest.raises(registry.ModelLoadError, match="no model.keras"):
        evaluate_module.evaluate(run_copy, external_folder)
    assert snapshot(run_copy) == before


def test_a_folder_with_a_class_the_model_does_not_know_is_refused(
    run_copy: Path, external_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data" / external_folder.name
    shutil.copytree(external_folder, data)
    (data / "Polyp").mkdir()
    shutil.copy(next((data / "Cyst").iterdir()), data / "Polyp" / "polyp-1.png")
    before = snapshot(run_copy)
    with pytest.raises(errors.DatasetError, match="Polyp"):
        evaluate_module.evaluate(run_copy, data)
    assert snapshot(run_copy) == before and not (run_copy / runs.EXTERNAL_FOLDER).exists()


def test_a_folder_without_images_is_refused(run_copy: Path, tmp_path: Path) -> None:
    for name in ("Cyst", "Normal", "Stone", "Tumor"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    (tmp_path / "empty" / "Cyst" / "notes.txt").write_text("no images here")
    before = snapshot(run_copy)
    with pytest.raises(errors.DatasetError, match="No usable images"):
        evaluate_module.evaluate(run_copy, tmp_path / "empty")
    with pytest.raises(errors.DatasetError, match="does not exist"):
        evaluate_module.evaluate(run_copy, tmp_path / "nowhere")
    assert snapshot(run_copy) == before


def test_a_run_with_other_classes_is_refused(run_copy: Path) -> None:
    runs.update_run_info(run_copy, class_names=["Cyst", "Normal", "Stone", "Tumour"])
    before = snapshot(run_copy)
    with pytest.raises(store.EvaluationError, match="Tumour"):
        evaluate_module.evaluate(run_copy)
    assert snapshot(run_copy) == before
    runs.update_run_info(run_copy, class_names=None, image_size=None)
    with pytest.raises(store.EvaluationError, match="lacks image_size"):
        evaluate_module.evaluate(run_copy)


def test_missing_test_images_and_a_run_still_training_are_refused(
    run_copy: Path, external_folder: Path, tmp_path: Path
) -> None:
    runs.update_run_info(run_copy, data_root=str(tmp_path / "moved"))
    before = snapshot(run_copy)
    with pytest.raises(errors.DatasetError, match="moved or changed"):
        evaluate_module.evaluate(run_copy)
    assert snapshot(run_copy) == before
    # An external folder can still be evaluated; without the training images the duplicates
    # cannot be counted, and the result says so instead of claiming none.
    result = evaluate_module.evaluate(run_copy, external_folder)
    assert result["test_with_duplicate_in_train"] is None
    assert result["duplicate_check"].startswith("not counted") and "0 images have the MD5" in result["duplicate_check"]
    runs.write_status(run_copy, {"state": runs.RUNNING, "pid": os.getppid()})
    with pytest.raises(runs.RunBusyError, match="still running"):
        evaluate_module.evaluate(run_copy)


def test_predictions_edited_into_nonsense_give_a_clear_message(run_copy: Path) -> None:
    path = run_copy / runs.PREDICTIONS_FILE
    table = pd.read_csv(path)
    table.loc[0, "prob_Cyst"] = 7.5
    table.to_csv(path, index=False)
    with pytest.raises(metrics.PredictionsError, match=r"predictions.csv has probabilities that are not numbers"):
        store.load_predictions(run_copy)
    path.write_bytes(b"\x00\xff garbage \x00")
    with pytest.raises(metrics.PredictionsError, match="evaluate the run again"):
        store.load_predictions(run_copy)
    assert "No usable test evaluation" in model_card_module.model_card(run_copy)
    with pytest.raises(store.EvaluationError, match="not an evaluation source"):
        store.load_predictions(run_copy, "../../etc")


def test_real_slices_as_an_external_folder(run_copy: Path, real_sample: Path, tmp_path: Path) -> None:
    """A few real JPEG slices (256 px grayscale) go through the same path as any folder."""
    source = real_sample / "CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone"
    for name in ("Cyst", "Normal", "Stone", "Tumor"):
        (tmp_path / "real" / name).mkdir(parents=True)
        for number in (1, 2):
            shutil.copy(source / name / f"{name}- ({number}).jpg", tmp_path / "real" / name)
    result = evaluate_module.evaluate(run_copy, tmp_path / "real")
    assert result["images"] == 8 and result["split_kind"] == "external"
    assert result["test_with_duplicate_in_train"] == 0
    assert len(store.load_predictions(run_copy, result["fingerprint"])) == 8


def test_a_run_written_before_run_json_had_a_version_evaluates_unchanged(run_copy: Path) -> None:
    """A run.json as the code before the typed record wrote it (no schema_version, no null
    fields it never set) still evaluates, gets its model card and its leaderboard row."""
    written = fileio.read_json(run_copy / runs.RUN_FILE)
    old = {key: value for key, value in written.items() if key != "schema_version" and value is not None}
    fileio.atomic_write_json(run_copy / runs.RUN_FILE, old)
    before = store.load_metrics(run_copy)
    record = runs.read_run(run_copy)
    assert (record.state, record.info.schema_version) == (runs.COMPLETED, 0)
    result = evaluate_module.evaluate(run_copy)
    assert result["accuracy"] == before["accuracy"] and result["train_seconds"] == old["train_seconds"]
    assert result["kept_epoch"] == before["kept_epoch"]
    assert "Vision Transformer" in model_card_module.model_card(run_copy)
    table = leaderboard_module.leaderboard(run_copy.parent)
    assert list(table["run_id"]) == [run_copy.name] and not table.attrs["skipped"]



def test_a_run_written_before_run_json_had_a_version_compares_and_explains_unchanged(
    run_copy: Path, tmp_path: Path
) -> None:
    """The same pre-version run.json: the Compare page's library (its default runs and an
    explanation of a scan) and the two-run comparison read it as before."""
    from kidney_lab.explain import compare

    written = fileio.read_json(run_copy / runs.RUN_FILE)
    old = {key: value for key, value in written.items() if key != "schema_version" and value is not None}
    fileio.atomic_write_json(run_copy / runs.RUN_FILE, old)
    (record,) = compare.usable_runs(run_copy.parent)
    assert record.run_id == run_copy.name and record.info.schema_version == 0
    assert compare.default_runs([record], registry.MODEL_NAMES)[record.model] == record
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    report = compare.explain([run_copy], image, method="gradcam")
    assert not report.errors and len(report.results) == 1
    assert sum(report.results[0].probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    second = tmp_path / "workspace" / run_copy.name.replace(run_copy.name[-6:], "abcdef")
    shutil.copytree(run_copy, second)
    comparison = stats.compare_runs(run_copy, second)
    assert comparison["p_value"] == pytest.approx(1.0)
