"""Faithfulness: pointing game, energy in mask, deletion/insertion, the file, the sanity check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import phantom
from kidney_lab.data.scan import read_scan
from kidney_lab.explain import cam
from kidney_lab.explain import faithfulness
from kidney_lab.models import builders
from kidney_lab.models import registry
from tests.explain.conftest import lesion_phantom

METHOD_FIELDS = {
    "pointing_game", "energy_in_mask", "deletion_auc", "insertion_auc", "random_deletion_auc",
    "random_insertion_auc", "randomization_spearman", "random_weights_pointing_game",
    "random_weights_energy_in_mask", "accuracy", "images", "seconds", "per_class",
}


def in_unit_range(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def test_a_tiny_phantom_run_gets_scores_in_range_and_the_documented_file(run_copy) -> None:
    run = run_copy()
    result = faithfulness.evaluate_faithfulness(run, methods=("gradcam", "LayerCAM"), max_images=8, steps=4)

    stored = fileio.read_json(run / runs.FAITHFULNESS_FILE)
    assert result["path"] == str(run / runs.FAITHFULNESS_FILE)
    assert stored == {key: value for key, value in result.items() if key != "path"}
    for key in ("run_id", "model", "data", "fingerprint", "images", "methods"):
        assert key in stored
    assert (stored["run_id"], stored["model"], stored["data"]) == (run.name, "vit", "test")
    info = runs.read_run(run).info
    assert stored["fingerprint"] == info.dataset_fingerprint
    assert 0 < stored["images"] <= 8
    assert set(stored["methods"]) == {"gradcam", "layercam"}
    lesion_images = 0
    for scores in stored["methods"].values():
        assert set(scores) == METHOD_FIELDS
        assert scores["images"] == stored["images"]
        for field in METHOD_FIELDS - {"images", "seconds", "per_class", "randomization_spearman"}:
            assert in_unit_range(scores[field]), (field, scores[field])
        assert scores["randomization_spearman"] is None or -1 <= scores["randomization_spearman"] <= 1
        for name, row in scores["per_class"].items():
            assert name in classes.CLASS_NAMES
            assert all(in_unit_range(row[field]) for field in ("pointing_game", "energy_in_mask", "deletion_auc"))
            if name == "Normal":
                assert row["pointing_game"] is None and row["energy_in_mask"] is None
            else:
                assert row["pointing_game"] is not None
                lesion_images += row["images"]
        assert sum(row["images"] for row in scores["per_class"].values()) == stored["images"]
    assert lesion_images > 0, "the test split of the tiny run has no lesion image"
    assert 0 < stored["baselines"]["pointing_game"] < 0.5


def test_an_external_folder_is_stored_beside_the_run_files(run_copy, phantom_root) -> None:
    run = run_copy()
    result = faithfulness.evaluate_faithfulness(run, data=phantom_root, max_images=4, curves=False,
                                                sanity_check=False)
    fingerprint = result["fingerprint"]
    assert result["path"] == str(run / runs.EXTERNAL_FOLDER / fingerprint / runs.FAITHFULNESS_FILE)
    assert not (run / runs.FAITHFULNESS_FILE).exists(), "the test split's file must not be written"
    assert result["data"] == str(phantom_root) and result["images"] == 4
    assert result["methods"]["gradcam"]["deletion_auc"] is None
    assert result["methods"]["gradcam"]["randomization_spearman"] is None
    assert result["methods"]["gradcam"]["random_weights_pointing_game"] is None
    assert set(result["methods"]["gradcam"]["per_class"]) == set(classes.CLASS_NAMES)


def test_bad_arguments_are_refused(vit_run) -> None:
    with pytest.raises(errors.ConfigError, match="Unknown explanation method"):
        faithfulness.evaluate_faithfulness(vit_run, methods=("occlusion",))
    with pytest.raises(errors.ConfigError, match="max_images"):
        faithfulness.evaluate_faithfulness(vit_run, max_images=0)


class LesionOnlyModel:
    """A stand-in model whose target probability is the share of a region's pixels still at
    their original, fully bright value (a blurred pixel is darker)."""

    def __init__(self, region: np.ndarray, target: int) -> None:
        self.region, self.target = region.ravel(), target

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        probabilities = np.zeros((len(pixels), len(classes.CLASS_NAMES)), np.float32)
        inside = pixels.reshape(len(pixels), -1, 3)[:, self.region, 0]
        probabilities[:, self.target] = (inside > 254.5).mean(axis=1)
        return probabilities


def make_case(mask: np.ndarray, steps: int = 0) -> faithfulness._ImageCase:
    image = np.where(mask, 255, 0).astype(np.uint8)
    scan = cam.load_image(image)
    return faithfulness._ImageCase(scan, "Stone", mask.shape[0], mask, np.random.default_rng(0), steps)


def square_mask(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[20:30, 20:30] = True
    return mask


def peak_at(row: int, column: int, size: int = 64) -> np.ndarray:
    grid = np.zeros((size, size), np.float32)
    grid[row, column] = 1.0
    return grid


@pytest.mark.parametrize(
    "grid, hit",
    [
        (peak_at(25, 25), 1.0),
        (peak_at(5, 50), 0.0),
        (peak_at(31, 25), 1.0),  # 2 px outside the mask: within the 3.2 px tolerance at 64 px.
        (peak_at(34, 25), 0.0),  # 5 px outside: beyond it.
        (np.full((64, 64), 0.5, np.float32), 0.0),  # A flat map points nowhere.
    ],
)
def test_pointing_game_known_answers(grid, hit) -> None:
    case = make_case(square_mask())
    row = case.score(None, cam.CamResult(np.eye(4)[2], 2, grid), (None, None))
    assert row["pointing_game"] == hit


def test_energy_in_mask_known_answers() -> None:
    mask = square_mask()
    case = make_case(mask)
    grid = np.zeros((64, 64), np.float32)
    grid[20:30, 20:30] = 3.0  # 100 pixels inside
    grid[0:10, 0:30] = 1.0  # 300 pixels outside: energy 300 inside of 600 in all
    row = case.score(None, cam.CamResult(np.eye(4)[2], 2, grid), (None, None))
    assert row["energy_in_mask"] == pytest.approx(0.5)
    zero = case.score(None, cam.CamResult(np.eye(4)[2], 2, np.zeros((64, 64), np.float32)), (None, None))
    assert zero["energy_in_mask"] == 0.0
    assert case.baselines()["energy_in_mask"] == pytest.approx(100 / 64**2)


def test_a_map_of_the_evidence_beats_random_order_on_deletion_and_insertion() -> None:
    mask = square_mask()
    case = make_case(mask, steps=20)
    model = LesionOnlyModel(mask, classes.class_index("Stone"))
    random_deletion, random_insertion = case.curves(model, case.random_order())
    row = case.score(model, cam.CamResult(np.eye(4)[2], 2, mask.astype(np.float32)),
                     (random_deletion, random_insertion))
    assert row["deletion_auc"] < 0.1 < random_deletion
    assert row["insertion_auc"] > 0.8 > random_insertion
    inverted = case.score(model, cam.CamResult(np.eye(4)[2], 2, (~mask).astype(np.float32)),
                          (random_deletion, random_insertion))
    assert inverted["deletion_auc"] > random_deletion and inverted["insertion_auc"] < random_insertion


def test_images_are_chosen_evenly_over_the_classes_and_reproducibly() -> None:
    frame = pd.DataFrame({"path": [f"{label}-{n}" for label in classes.CLASS_NAMES for n in range(10)],
                          "label": [label for label in classes.CLASS_NAMES for _ in range(10)]})
    chosen = faithfulness.choose_images(frame, 10, seed=1)
    assert len(chosen) == 10 and chosen["label"].value_counts().to_dict() == {
        "Cyst": 3, "Normal": 3, "Stone": 2, "Tumor": 2}
    assert chosen.equals(faithfulness.choose_images(frame, 10, seed=1))
    assert len(faithfulness.choose_images(frame, None)) == 40


# The model-randomisation sanity check (Adebayo et al., 2018): the bound on the mean Spearman
# rank correlation between the maps of the trained model and of random weights.
SANITY_BOUND = 0.5


@pytest.fixture(scope="module")
def sanity_images(phantom_root) -> list:
    test_paths = sorted((phantom_root / "Tumor").glob("*.png"))[:3] + sorted((phantom_root / "Stone").glob("*.png"))[:3]
    return [read_scan(path) for path in test_paths]


# The one-epoch ViT and ResNet50 have no positive Grad-CAM evidence for any class (every map
# ReLU'd flat), so the ViT is checked with Score-CAM, whose maps it does have. Not every pair
# passes, and that is measured, not hidden: Score-CAM of the one-epoch ResNet50 correlates at
# about 0.97 with random weights, and evaluate_faithfulness stores the check of every method
# (randomization_spearman; on the demo study Grad-CAM++ and LayerCAM of ResNet50 reach 0.64
# and 0.62, and the random-weights pointing game says how much of that is the image).
@pytest.mark.parametrize("model, method", [("efficientnetb0", "gradcam"), ("mobilenetv2", "gradcam"), ("vit", "scorecam")])
def test_maps_of_random_weights_differ_from_the_trained_models(tiny_study, sanity_images, model, method) -> None:
    check = faithfulness.randomization_check(tiny_study.runs[model], sanity_images, (method,))[method]
    assert len(check["spearman"]) + check["flat"] == len(sanity_images)
    assert len(check["spearman"]) >= 2, "too many flat maps to compare"
    assert check["mean_spearman"] < SANITY_BOUND


def test_the_sanity_check_would_catch_maps_that_ignore_the_weights(vit_run, sanity_images, monkeypatch) -> None:
    trained = builders.load_model(vit_run / runs.MODEL_FILE)
    built = builders.BuiltModel(trained, registry.get_spec("vit"), 32, "random", None)
    monkeypatch.setattr(builders, "create_model", lambda *args, **kwargs: built)
    check = faithfulness.randomization_check(vit_run, sanity_images, ("gradcam", "layercam"))
    assert check["gradcam"]["mean_spearman"] > 0.99 > SANITY_BOUND
    assert check["layercam"]["mean_spearman"] > 0.99


def test_the_random_weights_pointing_game_would_catch_maps_that_ignore_the_weights(run_copy, monkeypatch) -> None:
    run = run_copy()
    trained = builders.load_model(run / runs.MODEL_FILE)
    monkeypatch.setattr(builders, "create_model",
                        lambda *args, **kwargs: builders.BuiltModel(trained, registry.get_spec("vit"), 32, "random", None))
    result = faithfulness.evaluate_faithfulness(run, methods=("scorecam",), max_images=12, curves=False)
    scores = result["methods"]["scorecam"]
    assert scores["pointing_game"] is not None
    assert scores["random_weights_pointing_game"] == scores["pointing_game"]
    assert scores["random_weights_energy_in_mask"] == pytest.approx(scores["energy_in_mask"])


def test_phantom_masks_are_found_for_lesions_only(phantom_root) -> None:
    stone = sorted((phantom_root / "Stone").glob("*.png"))[0]
    normal = sorted((phantom_root / "Normal").glob("*.png"))[0]
    mask = faithfulness._lesion_mask(str(stone), "Stone", (64, 64))
    assert mask is not None and mask.any() and phantom.mask_path_for(stone) is not None
    assert faithfulness._lesion_mask(str(normal), "Normal", (64, 64)) is None
    assert lesion_phantom("Stone").shape == (64, 64)
