"""Tests for kidney_lab.data.phantom: synthetic CT slices with ground-truth lesion masks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage

from kidney_lab import errors
from kidney_lab.data import classes
from kidney_lab.data import phantom

LESION_CLASSES = [name for name in classes.CLASS_NAMES if name != "Normal"]


def body_of(image: np.ndarray) -> np.ndarray:
    """The patient's body: everything brighter than air, holes (bowel gas) filled."""
    labelled, count = scipy.ndimage.label(image > 10)
    sizes = scipy.ndimage.sum_labels(np.ones_like(image), labelled, index=range(1, count + 1))
    largest = labelled == (int(np.argmax(sizes)) + 1)
    return scipy.ndimage.binary_fill_holes(largest)


@pytest.mark.parametrize("label", classes.CLASS_NAMES)
@pytest.mark.parametrize("size", [64, 256])
def test_shapes_types_and_label(label: str, size: int) -> None:
    result = phantom.make_phantom(label, size=size, seed=1, index=2)
    assert result.image.shape == (size, size) and result.image.dtype == np.uint8
    assert result.mask.shape == (size, size) and result.mask.dtype == np.bool_
    assert result.kidney_mask is not None and result.kidney_mask.shape == (size, size)
    assert result.label == label
    if label == "Normal":
        assert result.side is None
    else:
        assert result.side in ("left", "right")


def test_label_is_case_insensitive() -> None:
    assert phantom.make_phantom("tumor", size=64).label == "Tumor"


@pytest.mark.parametrize("label", classes.CLASS_NAMES)
def test_same_arguments_give_byte_identical_images(label: str) -> None:
    first = phantom.make_phantom(label, size=128, seed=7, index=3)
    second = phantom.make_phantom(label, size=128, seed=7, index=3)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.mask.tobytes() == second.mask.tobytes()
    assert first.side == second.side


def test_different_seeds_indices_and_classes_differ() -> None:
    images = [
        phantom.make_phantom("Cyst", size=64, seed=0, index=0).image,
        phantom.make_phantom("Cyst", size=64, seed=1, index=0).image,
        phantom.make_phantom("Cyst", size=64, seed=0, index=1).image,
        phantom.make_phantom("Stone", size=64, seed=0, index=0).image,
    ]
    for first, second in itertools.combinations(images, 2):
        assert not np.array_equal(first, second)


def test_normal_has_empty_mask() -> None:
    for index in range(10):
        assert not phantom.make_phantom("Normal", size=64, index=index).mask.any()


@pytest.mark.parametrize("label", LESION_CLASSES)
@pytest.mark.parametrize("size", [64, 256])
def test_lesion_is_in_the_body_and_in_the_named_kidney(label: str, size: int) -> None:
    for index in range(12):
        result = phantom.make_phantom(label, size=size, seed=3, index=index)
        mask, kidneys = result.mask, result.kidney_mask
        assert mask.any()
        assert not (mask & ~body_of(result.image)).any()
        assert (mask & kidneys).sum() >= 0.5 * mask.sum()
        centre_y, centre_x = scipy.ndimage.center_of_mass(mask)
        assert kidneys[int(round(centre_y)), int(round(centre_x))]
        # The midpoint between the kidneys separates the left one from the right one.
        midline = np.nonzero(kidneys)[1].mean()
        assert (centre_x < midline) == (result.side == "left")


def test_stone_is_small_and_very_bright() -> None:
    for index in range(12):
        result = phantom.make_phantom("Stone", size=256, seed=2, index=index)
        area = result.mask.mean()
        # At least ~3.5% of the size in radius, so it survives downscaling to 96 px.
        assert 0.003 < area < 0.01
        assert result.image[result.mask].mean() > 240


def test_cyst_is_darker_than_the_kidney_around_it() -> None:
    for index in range(12):
        result = phantom.make_phantom("Cyst", size=256, seed=2, index=index)
        near = scipy.ndimage.binary_dilation(result.mask, iterations=5)
        ring = near & ~scipy.ndimage.binary_dilation(result.mask, iterations=1)
        ring &= result.kidney_mask
        assert result.image[result.mask].mean() < result.image[ring].mean() - 25


def test_tumor_is_larger_than_stone_on_average() -> None:
    def mean_area(label: str) -> float:
        return float(
            np.mean([phantom.make_phantom(label, size=128, index=i).mask.sum() for i in range(20)])
        )

    assert mean_area("Tumor") > 2.5 * mean_area("Stone")


def test_tumor_is_heterogeneous_and_cyst_homogeneous() -> None:
    tumor = phantom.make_phantom("Tumor", size=256, seed=5, index=0)
    cyst = phantom.make_phantom("Cyst", size=256, seed=5, index=0)
    core = scipy.ndimage.binary_erosion
    tumor_spread = tumor.image[core(tumor.mask, iterations=2)].std()
    cyst_spread = cyst.image[core(cyst.mask, iterations=2)].std()
    assert tumor_spread > cyst_spread


def test_first_images_do_not_depend_on_how_many_are_written(tmp_path: Path) -> None:
    small = phantom.write_phantom_dataset(tmp_path / "small", per_class=2, size=64, seed=4)
    large = phantom.write_phantom_dataset(tmp_path / "large", per_class=3, size=64, seed=4)
    for name in classes.CLASS_NAMES:
        for number in (1, 2):
            file_name = f"{name}- ({number}).png"
            small_bytes = (small / name / file_name).read_bytes()
            assert small_bytes == (large / name / file_name).read_bytes()


def test_dataset_layout(tmp_path: Path) -> None:
    dataset = phantom.write_phantom_dataset(tmp_path, per_class=3, size=64, seed=9)
    assert dataset == tmp_path / classes.KAGGLE_FOLDER_NAME
    assert sorted(entry.name for entry in dataset.iterdir()) == sorted(classes.CLASS_NAMES)
    for name in classes.CLASS_NAMES:
        files = sorted(entry.name for entry in (dataset / name).iterdir())
        assert files == [f"{name}- ({number}).png" for number in (1, 2, 3)]
        for number in (1, 2, 3):
            image_path = dataset / name / f"{name}- ({number}).png"
            with PIL.Image.open(image_path) as image:
                assert image.mode == "L" and image.size == (64, 64)
                pixels = np.asarray(image)
            expected = phantom.make_phantom(name, size=64, seed=9, index=number - 1)
            assert np.array_equal(pixels, expected.image)
            mask_path = phantom.mask_path_for(image_path)
            assert mask_path == tmp_path / "masks" / name / image_path.name
            with PIL.Image.open(mask_path) as mask:
                mask_pixels = np.asarray(mask)
            assert set(np.unique(mask_pixels)) <= {0, 255}
            assert np.array_equal(mask_pixels == 255, expected.mask)
    assert not list(tmp_path.rglob("*.tmp"))
    parameters = json.loads((tmp_path / "phantoms.json").read_text(encoding="utf-8"))
    assert parameters["per_class"] == 3
    assert parameters["size"] == 64
    assert parameters["seed"] == 9
    assert parameters["generator_version"] == phantom.GENERATOR_VERSION
    assert parameters["classes"] == list(classes.CLASS_NAMES)


def test_rewriting_a_smaller_set_removes_the_extra_images(tmp_path: Path) -> None:
    phantom.write_phantom_dataset(tmp_path, per_class=3, size=32)
    dataset = phantom.write_phantom_dataset(tmp_path, per_class=1, size=32)
    for name in classes.CLASS_NAMES:
        assert [entry.name for entry in (dataset / name).iterdir()] == [f"{name}- (1).png"]
        assert [entry.name for entry in (tmp_path / "masks" / name).iterdir()] == [
            f"{name}- (1).png"
        ]


def test_refuses_a_folder_with_foreign_images(tmp_path: Path) -> None:
    foreign = tmp_path / classes.KAGGLE_FOLDER_NAME / "Cyst" / "Cyst- (1).jpg"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not a phantom")
    with pytest.raises(errors.DatasetError, match="empty folder"):
        phantom.write_phantom_dataset(tmp_path, per_class=1, size=32)
    assert foreign.read_bytes() == b"not a phantom"


def test_mask_path_for_an_image_without_mask(tmp_path: Path) -> None:
    image_path = tmp_path / "Cyst" / "Cyst- (1).png"
    assert phantom.mask_path_for(image_path) is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"per_class": 0}, "per_class"),
        ({"per_class": 1, "size": 16}, "size"),
        ({"per_class": 1, "size": 2048}, "size"),
        ({"per_class": 1, "seed": -1}, "seed"),
    ],
)
def test_write_rejects_bad_arguments(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        phantom.write_phantom_dataset(tmp_path, **arguments)
    assert not any(tmp_path.iterdir())


def test_make_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Cyst, Normal, Stone, Tumor"):
        phantom.make_phantom("Tumour")
    with pytest.raises(ValueError, match="from 32 to 1024"):
        phantom.make_phantom("Cyst", size=31)
    with pytest.raises(ValueError, match="index"):
        phantom.make_phantom("Cyst", index=-1)


def test_global_cues_do_not_separate_classes() -> None:
    """Mean brightness, body size and noise overlap across classes: only the lesion differs."""
    features: dict[str, list[tuple[float, float, float]]] = {}
    for name in classes.CLASS_NAMES:
        rows = []
        for index in range(30):
            image = phantom.make_phantom(name, size=64, seed=11, index=index).image
            body = body_of(image)
            # High-pass residual inside the body estimates the noise level.
            residual = image.astype(np.float32) - scipy.ndimage.median_filter(image, size=3)
            rows.append((float(image.mean()), float(body.mean()), float(residual[body].std())))
        features[name] = rows
    for feature in range(3):
        values = {name: np.array([row[feature] for row in rows]) for name, rows in features.items()}
        pooled = np.sqrt(np.mean([series.var(ddof=1) for series in values.values()]))
        means = [series.mean() for series in values.values()]
        assert max(means) - min(means) < pooled, (feature, means, pooled)


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_kidneys_view_zooms_in_and_keeps_the_mask_on_the_lesion(label: str) -> None:
    for index in range(6):
        whole = phantom.make_phantom(label, size=96, seed=1, index=index)
        zoomed = phantom.make_phantom(label, size=96, seed=1, index=index, field_of_view="kidneys")
        assert zoomed.image.shape == zoomed.mask.shape == (96, 96)
        assert zoomed.label == label and zoomed.side == whole.side
        # The kidneys cover over twice as many pixels as in the whole slice, the (larger)
        # lesions over three times as many.
        assert zoomed.mask.sum() > 3 * whole.mask.sum()
        assert zoomed.kidney_mask.sum() > 2 * whole.kidney_mask.sum()
        # Large tumors bulge out of the kidney; every lesion still sits largely in it.
        assert (zoomed.mask & zoomed.kidney_mask).sum() >= 0.25 * zoomed.mask.sum()


def test_kidneys_view_is_deterministic_and_recorded(tmp_path: Path) -> None:
    first = phantom.make_phantom("Cyst", size=64, seed=2, index=3, field_of_view="kidneys")
    second = phantom.make_phantom("Cyst", size=64, seed=2, index=3, field_of_view="kidneys")
    assert np.array_equal(first.image, second.image) and np.array_equal(first.mask, second.mask)
    phantom.write_phantom_dataset(tmp_path, per_class=1, size=64, seed=2, field_of_view="kidneys")
    assert json.loads((tmp_path / phantom.PARAMETERS_FILE_NAME).read_text())["field_of_view"] == "kidneys"


def test_kidneys_view_rejects_bad_arguments() -> None:
    with pytest.raises(errors.ConfigError, match="field of view"):
        phantom.make_phantom("Cyst", size=64, field_of_view="pelvis")
    with pytest.raises(errors.ConfigError, match="512"):
        phantom.make_phantom("Cyst", size=600, field_of_view="kidneys")


def test_phantom_root_is_the_one_answer_to_is_this_phantom_data(tmp_path: Path, make_dataset_folder) -> None:
    dataset = phantom.write_phantom_dataset(tmp_path / "set", per_class=1, size=32)
    for folder in (tmp_path / "set", dataset, str(dataset)):
        assert phantom.phantom_root(folder) == (tmp_path / "set").resolve()
        assert phantom.is_phantom_data(folder)
    # A class folder is not the set, and a plain dataset, a foreign phantoms.json, a damaged
    # one, or a run that records no folder are not phantom data.
    assert phantom.phantom_root(dataset / "Cyst") is None
    plain = make_dataset_folder(per_class=1, root=tmp_path / "plain")
    foreign = make_dataset_folder(per_class=1, root=tmp_path / "foreign")
    (foreign.parent / phantom.PARAMETERS_FILE_NAME).write_text(json.dumps({"generator": "someone else"}))
    damaged = make_dataset_folder(per_class=1, root=tmp_path / "damaged")
    (damaged.parent / phantom.PARAMETERS_FILE_NAME).write_text("{not json")
    for folder in (plain, foreign, damaged, tmp_path / "missing", None, "", 3):
        assert phantom.phantom_root(folder) is None and not phantom.is_phantom_data(folder)


def test_the_model_card_and_the_demo_ask_phantom_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kidney_lab import demo
    from kidney_lab import runs
    from kidney_lab import workspace as workspace_module
    from kidney_lab.evaluation import model_card

    dataset = phantom.write_phantom_dataset(tmp_path / workspace_module.DEMO_DATA_FOLDER, per_class=1, size=32)
    study = runs.new_study_id()
    run = runs.create_run(tmp_path, runs.new_run_id("vit"), {
        "model": "vit", "study_id": study, "data_root": str(dataset), "workspace": str(tmp_path)})
    # A folder beside the demo's whose name starts like it is not the demo's data.
    lookalike = phantom.write_phantom_dataset(tmp_path / f"{workspace_module.DEMO_DATA_FOLDER}-old", per_class=1, size=32)
    runs.create_run(tmp_path, runs.new_run_id("resnet50"), {
        "model": "resnet50", "study_id": runs.new_study_id(), "data_root": str(lookalike)})
    assert list(demo.demo_studies(tmp_path)) == [study]
    assert "synthetic phantoms" in model_card.model_card(run)

    monkeypatch.setattr(phantom, "phantom_root", lambda folder: None)
    assert demo.demo_studies(tmp_path) == {}
    assert "synthetic phantoms" not in model_card.model_card(run)
