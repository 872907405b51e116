"""The leaderboard on hand-made run folders: comparable groups, ranks, filters, damaged runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.evaluation import leaderboard as leaderboard_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from tests.evaluation.helpers import STUDY, clustered_table, fake_run, random_table, write_cv_result, write_evaluation

OTHER_STUDY = "study-20260101-130000-cd34"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("board")
    made = {
        "strong": fake_run(base, "resnet50", random_table(120, seed=1, skill=3.0)),
        "weak": fake_run(base, "vit", random_table(120, seed=1, skill=0.5)),
        "random": fake_run(base, "mobilenetv2", random_table(90, seed=2, prefix="/data/random"),
                           split="random", study=OTHER_STUDY, fingerprint="cccc55556666"),
    }
    write_evaluation(made["strong"], "bbbb33334444", random_table(60, seed=5, prefix="/external/x"),
                     split_kind="external", fingerprint="bbbb33334444", test_with_duplicate_in_train=0)
    fileio.atomic_write_json(
        made["strong"] / runs.FAITHFULNESS_FILE,
        {"run_id": made["strong"].name, "fingerprint": "aaaa11112222",
         "methods": {"gradcam": {"pointing_game": 0.8, "energy_in_mask": 0.4}}},
    )
    return {"base": base, **made}


def test_rows_are_ranked_only_within_groups_of_the_same_images(workspace) -> None:
    table = leaderboard_module.leaderboard(workspace["base"])
    assert len(table) == 4 and list(table.columns) == list(leaderboard_module.COLUMNS)
    assert table["comparable_group"].nunique() == 3
    assert "3 comparable groups" in table.attrs["note"]
    pair = table[table["split"] == "grouped"]
    assert pair["comparable_group"].nunique() == 1
    ranked = dict(zip(pair["run_id"], pair["rank"]))
    assert ranked[workspace["strong"].name] == 1 and ranked[workspace["weak"].name] == 2
    strong = pair[pair["run_id"] == workspace["strong"].name].iloc[0]
    assert strong["macro_f1"] > pair[pair["run_id"] == workspace["weak"].name].iloc[0]["macro_f1"]
    assert strong["accuracy_ci_low"] <= strong["accuracy"] <= strong["accuracy_ci_high"]
    assert strong["macro_f1_ci_low"] <= strong["macro_f1"] <= strong["macro_f1_ci_high"]
    assert strong["display_name"] == "ResNet50" and strong["params"] == 1234
    assert strong["ms_per_image_batch_1"] == 2.5 and strong["pointing_game"] == 0.8
    weak = pair[pair["run_id"] == workspace["weak"].name].iloc[0]
    expected = stats.mcnemar(store.load_predictions(workspace["strong"]), store.load_predictions(workspace["weak"]))
    assert pd.isna(strong["mcnemar_p_vs_best"]) and weak["mcnemar_p_vs_best"] == pytest.approx(expected["p_value"])
    for group in table[table["split"] != "grouped"]["comparable_group"]:
        assert (table[table["comparable_group"] == group]["rank"] == 1).all()
    external = table[table["split"] == "external"].iloc[0]
    assert external["evaluated_on"] == "bbbb33334444" and pd.isna(external["pointing_game"])
    random_row = table[table["split"] == "random"].iloc[0]
    assert random_row["test_with_duplicate_in_train"] == 7


def test_scores_are_recomputed_from_the_predictions(workspace) -> None:
    table = leaderboard_module.leaderboard(workspace["base"], split="grouped")
    predictions = store.load_predictions(workspace["weak"])
    row = table[table["run_id"] == workspace["weak"].name].iloc[0]
    assert row["accuracy"] == pytest.approx((predictions["true_label"] == predictions["predicted_label"]).mean())
    assert row["images"] == len(predictions)


def test_filters(workspace) -> None:
    board = leaderboard_module.leaderboard
    assert set(board(workspace["base"], study_id=OTHER_STUDY)["model"]) == {"mobilenetv2"}
    assert set(board(workspace["base"], split="external")["evaluated_on"]) == {"bbbb33334444"}
    assert len(board(workspace["base"], fingerprint="aaaa11112222")) == 2
    assert "external" not in set(board(workspace["base"], include_external=False)["split"])
    with pytest.raises(errors.ConfigError, match="Unknown split"):
        board(workspace["base"], split="kfold")


def test_equal_scores_share_a_rank(tmp_path: Path) -> None:
    table = random_table(40, seed=9)
    fake_run(tmp_path, "vit", table)
    fake_run(tmp_path, "resnet50", table)
    board = leaderboard_module.leaderboard(tmp_path)
    assert board["rank"].tolist() == [1, 1]
    assert "one comparable group" in board.attrs["note"]


def test_unevaluated_and_broken_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = fake_run(tmp_path, "vit", random_table(40, seed=3))
    running = runs.create_run(tmp_path, runs.new_run_id("resnet50"), {"model": "resnet50", "study_id": STUDY})
    broken = fake_run(tmp_path, "mobilenetv2", random_table(40, seed=4))
    (broken / runs.RUN_FILE).write_text("{ not json")
    edited = fake_run(tmp_path, "inceptionv3", random_table(40, seed=5))
    runs.predictions_path(edited).write_text("path,true_label\nx,Cyst\n")
    vanishing = fake_run(tmp_path, "efficientnetb0", random_table(40, seed=6))

    original = store.load_predictions

    def delete_then_load(run_dir, source="test"):
        if Path(run_dir).name == vanishing.name:
            shutil.rmtree(vanishing)
        return original(run_dir, source)

    monkeypatch.setattr(leaderboard_module.store, "load_predictions", delete_then_load)
    board = leaderboard_module.leaderboard(tmp_path)
    assert board["run_id"].tolist() == [good.name]
    skipped = {entry["run_id"]: entry["reason"] for entry in board.attrs["skipped"]}
    assert set(skipped) == {broken.name, edited.name, vanishing.name}
    assert "run.json" in skipped[broken.name]
    assert "lacks the column" in skipped[edited.name] and "evaluate the run again" in skipped[edited.name]

    with_running = leaderboard_module.leaderboard(tmp_path, include_unevaluated=True)
    row = with_running[with_running["run_id"] == running.name].iloc[0]
    assert row["status"] == runs.QUEUED and pd.isna(row["accuracy"]) and pd.isna(row["rank"])


def test_an_empty_workspace_gives_an_empty_table(tmp_path: Path) -> None:
    board = leaderboard_module.leaderboard(tmp_path / "nothing")
    assert board.empty and board.attrs["skipped"] == [] and "No evaluated runs" in board.attrs["note"]


def test_best_in_group_judges_each_group_alone(workspace) -> None:
    table = leaderboard_module.leaderboard(workspace["base"])
    best = leaderboard_module.best_in_group(table)
    assert list(best.index) == list(table.index)
    grouped = table["split"] == "grouped"
    strong = grouped & (table["run_id"] == workspace["strong"].name)
    # Within the grouped pair the stronger run has the higher accuracy and so is the best.
    assert best.loc[strong, "accuracy"].all() and best.loc[grouped, "accuracy"].sum() == 1
    # Lower is better for the calibration error: the best cell holds the group's minimum.
    assert table.loc[best["ece"] & grouped, "ece"].iloc[0] == table.loc[grouped, "ece"].min()
    # A group with a single row has nothing to be best against.
    assert not best.loc[~grouped].any().any()
    # A column with one value in the group (pointing game of the strong run only) has no best.
    assert not best["pointing_game"].any()


def test_best_in_group_marks_ties_and_skips_missing_columns() -> None:
    table = pd.DataFrame({"comparable_group": ["g", "g", "g"], "accuracy": [0.9, 0.9, 0.5], "ece": [0.1, None, 0.2]})
    best = leaderboard_module.best_in_group(table)
    assert list(best.columns) == ["accuracy", "ece"]
    assert best["accuracy"].tolist() == [True, True, False] and best["ece"].tolist() == [True, False, False]


def test_faithfulness_of_an_external_folder_shows_on_its_row(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "vit", random_table(30, seed=3))
    write_evaluation(run, "dddd77778888", random_table(20, seed=4, prefix="/external/y"), split_kind="external")
    fileio.atomic_write_json(
        runs.evaluation_folder(run, "dddd77778888") / runs.FAITHFULNESS_FILE,
        {"fingerprint": "dddd77778888", "methods": {"gradcam": {"pointing_game": 0.25, "energy_in_mask": 0.5}}},
    )
    board = leaderboard_module.leaderboard(tmp_path).set_index("evaluated_on")
    assert board.loc["dddd77778888", "pointing_game"] == 0.25
    assert pd.isna(board.loc["test", "pointing_game"])


CV_CLUSTERS = {"Cyst": 4, "Normal": 2, "Stone": 3, "Tumor": 3}


def test_cross_validation_rows_come_from_their_pooled_folders(tmp_path: Path) -> None:
    fold_run = fake_run(tmp_path, "vit", None)
    strong = write_cv_result(tmp_path, STUDY, "resnet50", clustered_table(CV_CLUSTERS, seed=1, skill=3.0))
    weak = write_cv_result(tmp_path, STUDY, "vit", clustered_table(CV_CLUSTERS, seed=2, skill=0.5),
                           fold_runs=[fold_run])
    # Another fold plan on the same images is not comparable with these two.
    write_cv_result(tmp_path, OTHER_STUDY, "vit", clustered_table(CV_CLUSTERS, seed=3), cv_id="cv-bbbb2222")
    write_cv_result(tmp_path, OTHER_STUDY, "resnet50", clustered_table(CV_CLUSTERS, seed=4), complete=False)

    board = leaderboard_module.leaderboard(tmp_path)
    assert set(board["split"]) == {"cv"} and len(board) == 3
    rows = board.set_index("run_id")
    strong_row, weak_row = rows.loc[f"cv/{STUDY}/resnet50"], rows.loc[f"cv/{STUDY}/vit"]
    assert strong_row["comparable_group"] == weak_row["comparable_group"] != rows.loc[f"cv/{OTHER_STUDY}/vit", "comparable_group"]
    assert strong_row["rank"] == 1 and weak_row["rank"] == 2
    assert rows.loc[f"cv/{OTHER_STUDY}/vit", "rank"] == 1

    pooled = store.read_predictions(runs.predictions_path(weak))
    stored = fileio.read_json(runs.metrics_path(weak))
    assert weak_row["images"] == len(pooled) == 72 and weak_row["path"] == str(weak)
    assert weak_row["macro_f1"] == pytest.approx(stored["macro_f1"])
    assert weak_row["interval_resampling"] == "cluster" and weak_row["clusters"] == 12
    assert [weak_row["macro_f1_ci_low"], weak_row["macro_f1_ci_high"]] == stored["intervals"]["macro_f1"]
    summary = fileio.read_json(runs.cv_path(weak))
    assert weak_row["macro_f1_fold_mean"] == pytest.approx(summary["macro_f1_mean"])
    assert weak_row["macro_f1_fold_sd"] == pytest.approx(summary["macro_f1_sd"])
    assert weak_row["cv_id"] == "cv-aaaa1111" and weak_row["folds"] == 3 and weak_row["status"] == "completed"
    assert weak_row["clusters_per_class"] == CV_CLUSTERS and weak_row["few_clusters"] == ["Normal"]
    assert "Normal rests on 2 near-duplicate clusters" in weak_row["cluster_warning"]
    assert "patients' recall" in weak_row["cluster_warning"] and weak_row["image_size"] == 32
    assert "Normal rests on 2" in strong_row["cluster_warning"]  # Normal has 2 clusters in every table here.

    expected = stats.paired_cluster_test(store.read_predictions(runs.predictions_path(strong)), pooled)
    assert weak_row["p_test"] == "cluster" and weak_row["p_vs_best"] == pytest.approx(expected["p_value"])
    assert pd.isna(weak_row["mcnemar_p_vs_best"])

    assert set(leaderboard_module.leaderboard(tmp_path, split="cv")["run_id"]) == set(rows.index)
    assert set(leaderboard_module.leaderboard(tmp_path, study_id=OTHER_STUDY)["run_id"]) == {f"cv/{OTHER_STUDY}/vit"}
    unfinished = leaderboard_module.leaderboard(tmp_path, include_unevaluated=True).set_index("run_id")
    assert unfinished.loc[f"cv/{OTHER_STUDY}/resnet50", "status"] == "2 of 3 folds done"
    assert pd.isna(unfinished.loc[f"cv/{OTHER_STUDY}/resnet50", "rank"])


def test_grouped_rows_with_clusters_are_compared_by_the_cluster_test(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "resnet50", clustered_table(CV_CLUSTERS, seed=1, skill=3.0))
    b = fake_run(tmp_path, "vit", clustered_table(CV_CLUSTERS, seed=2, skill=0.5))
    board = leaderboard_module.leaderboard(tmp_path).set_index("run_id")
    assert board.loc[b.name, "p_test"] == "cluster" and board.loc[a.name, "interval_resampling"] == "cluster"
    assert board.loc[b.name, "p_vs_best"] == pytest.approx(
        stats.paired_cluster_test(store.load_predictions(a), store.load_predictions(b))["p_value"]
    )
    random_a = fake_run(tmp_path / "r", "resnet50", clustered_table(CV_CLUSTERS, seed=1, skill=3.0), split="random")
    random_b = fake_run(tmp_path / "r", "vit", clustered_table(CV_CLUSTERS, seed=2, skill=0.5), split="random")
    shuffled = leaderboard_module.leaderboard(tmp_path / "r").set_index("run_id")
    assert shuffled.loc[random_b.name, "p_test"] == "mcnemar"
    assert shuffled.loc[random_a.name, "interval_resampling"] == "image"
    assert shuffled.loc[random_b.name, "mcnemar_p_vs_best"] == pytest.approx(
        stats.mcnemar(store.load_predictions(random_a), store.load_predictions(random_b))["p_value"]
    )


def test_old_rows_without_clusters_say_their_intervals_resample_images(workspace) -> None:
    table = leaderboard_module.leaderboard(workspace["base"])
    assert set(table["interval_resampling"]) == {"image"} and set(table["p_test"].dropna()) == {"mcnemar"}
    assert table["clusters_per_class"].isna().all() and table["cluster_warning"].isna().all()


def test_groups_are_named_by_dataset_and_degenerate_rows_flagged(tmp_path) -> None:
    from kidney_lab import workspace as workspace_module
    from kidney_lab.data import phantom

    demo = phantom.write_phantom_dataset(tmp_path / workspace_module.DEMO_DATA_FOLDER, 2, size=32, seed=0)
    folder = tmp_path / "ct-kidney-sample"
    always_cyst = random_table(40, seed=3)
    always_cyst[["prob_Cyst", "prob_Normal", "prob_Stone", "prob_Tumor"]] = [0.7, 0.1, 0.1, 0.1]
    always_cyst["predicted_label"] = "Cyst"
    on_demo = fake_run(tmp_path, "vit", always_cyst)
    runs.update_run_info(on_demo, data_root=str(demo))
    on_folder = fake_run(tmp_path, "resnet50", random_table(40, seed=4, skill=4.0, prefix="/data/other"),
                         fingerprint="3f9a1c998877")
    runs.update_run_info(on_folder, data_root=str(folder))
    table = leaderboard_module.leaderboard(tmp_path).set_index("run_id")
    assert table.loc[on_demo.name, "dataset"] == "phantoms (demo)"
    assert table.loc[on_folder.name, "dataset"] == "ct-kidney-sample (3f9a1c)"
    assert "Cyst for 100%" in table.loc[on_demo.name, "degenerate"]
    assert pd.isna(table.loc[on_folder.name, "degenerate"])
    names = {name for group in leaderboard_module.leaderboard(tmp_path).attrs["groups"] for name in group["datasets"]}
    assert names == {"phantoms (demo)", "ct-kidney-sample (3f9a1c)"}
    # Another phantom set is phantoms too, by its folder's name; no folder: the fingerprint's start.
    other = phantom.write_phantom_dataset(tmp_path / "mine", 1, size=32, seed=1)
    assert leaderboard_module.dataset_name(other, "abc", tmp_path) == "phantoms (mine)"
    assert leaderboard_module.dataset_name(None, "abcdef123", tmp_path) == "abcdef"
