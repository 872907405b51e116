"""Tests of kidney_lab/models/ood.py: synthetic Gaussian features, and a tiny registry model on phantoms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.special

from kidney_lab.data import classes, phantom
from kidney_lab.models import ood

FEATURES = 200


def gaussian_features(count: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Four classes with means two units apart per axis and correlated unit-scale noise."""
    centres = np.random.default_rng(100).normal(scale=2.0, size=(len(classes.CLASS_NAMES), FEATURES))
    mixing = np.eye(FEATURES) + np.random.default_rng(101).normal(scale=0.3 / np.sqrt(FEATURES), size=(FEATURES, FEATURES))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(classes.CLASS_NAMES), count)
    return centres[labels] + rng.normal(size=(count, FEATURES)) @ mixing + shift, labels


@pytest.fixture(scope="module")
def detector() -> ood.Detector:
    features, labels = gaussian_features(120, seed=1)
    validation, _ = gaussian_features(200, seed=2)
    return ood.fit(features, [classes.CLASS_NAMES[index] for index in labels], validation)


def test_in_distribution_features_are_mostly_under_the_threshold(detector: ood.Detector) -> None:
    test, _ = gaussian_features(1000, seed=3)
    flagged = (detector.score(test) > detector.threshold).mean()
    # The threshold is the validation images' 95th percentile: about 5% of new ones are above it.
    assert flagged < 0.12
    assert detector.threshold_from == "validation" and detector.percentile == 95.0
    assert detector.images == {"training": 120, "validation": 200}


def test_far_points_are_flagged(detector: ood.Detector) -> None:
    shifted, _ = gaussian_features(200, seed=4, shift=6.0)
    assert (detector.score(shifted) > detector.threshold).all()
    noise = np.random.default_rng(5).normal(scale=5.0, size=(100, FEATURES))
    assert (detector.score(noise) > detector.threshold).all()


def test_the_score_is_the_distance_to_the_nearest_class(detector: ood.Detector) -> None:
    test, _ = gaussian_features(50, seed=6)
    distances = detector.distances(test)
    assert distances.shape == (50, len(classes.CLASS_NAMES))
    assert np.array_equal(detector.score(test), distances.min(axis=1))
    # A class mean is at distance 0 from itself.
    assert detector.distances(detector.means).diagonal() == pytest.approx(0.0, abs=1e-9)


def test_with_all_components_the_distance_is_the_exact_shrunk_mahalanobis_distance() -> None:
    features, labels = gaussian_features(60, seed=7)
    small = features[:, :10]
    fitted = ood.fit(small, labels, components=10)
    covariance = np.zeros((10, 10))
    for index, name in enumerate(fitted.class_names):
        centred = small[labels == classes.class_index(name)] - fitted.means[index]
        covariance += centred.T @ centred
    covariance /= len(small)
    shrunk = (1 - fitted.shrinkage) * covariance + fitted.shrinkage * np.trace(covariance) / 10 * np.eye(10)
    point = small[:3] + 1.0
    centred = point - fitted.means[0]
    expected = np.sqrt(np.einsum("ij,jk,ik->i", centred, np.linalg.inv(shrunk), centred))
    assert fitted.distances(point)[:, 0] == pytest.approx(expected, rel=1e-6)


def test_few_images_in_many_dimensions_still_fit() -> None:
    features, labels = gaussian_features(8, seed=8)
    fitted = ood.fit(features, labels)
    assert fitted.threshold_from == "training"
    assert 0 < fitted.shrinkage <= 1 and np.isfinite(fitted.threshold)
    assert fitted.basis.shape[0] == FEATURES and fitted.basis.shape[1] <= 8
    far, _ = gaussian_features(20, seed=9, shift=10.0)
    assert (fitted.score(far) > fitted.threshold).all()


def test_result_says_score_threshold_and_flag(detector: ood.Detector) -> None:
    assert detector.result(detector.threshold + 1) == {
        "score": detector.threshold + 1, "threshold": detector.threshold, "flagged": True,
    }
    assert detector.result(detector.threshold)["flagged"] is False
    results = detector.results(gaussian_features(3, seed=10)[0])
    assert len(results) == 3 and json.dumps(results)


def test_round_trip_through_json(detector: ood.Detector) -> None:
    text = detector.to_json()
    payload = json.loads(text)
    assert payload["format"] == ood.FORMAT and payload["method"] == "mahalanobis"
    assert payload["threshold"] == detector.threshold and payload["classes"] == list(classes.CLASS_NAMES)
    back = ood.Detector.from_json(text)
    test, _ = gaussian_features(100, seed=11)
    assert back.score(test) == pytest.approx(detector.score(test), rel=1e-5)
    assert back.threshold == detector.threshold and back.images == detector.images


def test_damaged_files_are_refused(detector: ood.Detector) -> None:
    payload = json.loads(detector.to_json())
    cases = {
        "not json": "not valid JSON",
        json.dumps({"format": "other"}): "not a kidney_lab OOD detector",
        json.dumps(payload | {"version": 99}): "version 99",
        json.dumps({key: value for key, value in payload.items() if key != "threshold"}): "damaged",
        json.dumps(payload | {"threshold": None}): "damaged",
        json.dumps(payload | {"classes": ["Cyst"]}): "class means do not match",
        json.dumps(payload | {"residual_variance": -1.0}): "residual variance",
        json.dumps(payload | {"arrays": payload["arrays"] | {"variances": payload["arrays"]["means"]}}): "variances",
        json.dumps(payload | {"arrays": payload["arrays"] | {"basis": {"dtype": "object", "shape": [1], "base64": ""}}}): "dtype",
    }
    for text, message in cases.items():
        with pytest.raises(ood.OODError, match=message):
            ood.Detector.from_json(text)


def test_bad_input_is_refused(detector: ood.Detector) -> None:
    features, labels = gaussian_features(20, seed=12)
    with pytest.raises(ood.OODError, match="19 label"):
        ood.fit(features, labels[:19])
    with pytest.raises(ood.OODError, match="Unknown label 'Kidney'"):
        ood.fit(features, ["Kidney"] * 20)
    with pytest.raises(ood.OODError, match="at least two"):
        ood.fit(features[:1], labels[:1])
    with pytest.raises(ood.OODError, match="do not vary"):
        ood.fit(np.ones((6, 3)), [0, 0, 1, 1, 2, 2])
    with pytest.raises(ood.OODError, match="NaN"):
        ood.fit(np.full((4, 3), np.nan), [0, 1, 2, 3])
    with pytest.raises(ood.OODError, match="percentile"):
        ood.fit(features, labels, percentile=0)
    with pytest.raises(ood.OODError, match="components"):
        ood.fit(features, labels, components=0)
    with pytest.raises(ood.OODError, match="another model"):
        detector.score(np.zeros((2, FEATURES + 1)))
    with pytest.raises(ood.OODError, match="one row per image"):
        detector.score(np.zeros(FEATURES))


def test_energy_scores() -> None:
    logits = np.array([[10.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]])
    energy = ood.energy_scores(logits)
    assert energy == pytest.approx(-scipy.special.logsumexp(logits, axis=1))
    assert energy[0] < energy[1]  # A confident row has lower energy.
    with pytest.raises(ood.OODError, match="temperature"):
        ood.energy_scores(logits, temperature=0)


# A tiny model built through the registry, on phantoms ---------------------------------------

MODEL, SIZE = "vit", 32


def phantom_pixels(per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Phantoms as the model takes them: 0-255 RGB, and their labels."""
    images, labels = [], []
    for label in classes.CLASS_NAMES:
        for index in range(per_class):
            images.append(phantom.make_phantom(label, size=SIZE, seed=seed, index=index).image)
            labels.append(label)
    return np.repeat(np.stack(images)[..., None], 3, axis=-1).astype(np.float32), labels


@pytest.fixture(scope="module")
def tiny_model():
    from kidney_lab.models import builders

    return builders.create_model(MODEL, SIZE, weights="none").model


def test_a_registry_model_fitted_on_phantoms_flags_uniform_noise(tiny_model) -> None:
    train, labels = phantom_pixels(12, seed=0)
    validation, _ = phantom_pixels(5, seed=1)
    test, _ = phantom_pixels(5, seed=2)
    noise = np.random.default_rng(0).uniform(0, 255, (20, SIZE, SIZE, 3)).astype(np.float32)
    fitted = ood.fit(ood.pooled_features(tiny_model, train, batch_size=16), labels,
                     ood.pooled_features(tiny_model, validation))
    assert fitted.feature_count == tiny_model.get_layer("head_dropout").input.shape[-1]
    assert (fitted.score(ood.pooled_features(tiny_model, noise)) > fitted.threshold).all()
    assert (fitted.score(ood.pooled_features(tiny_model, test)) > fitted.threshold).mean() <= 0.25


def test_head_logits_give_the_models_probabilities(tiny_model) -> None:
    import keras

    pixels, _ = phantom_pixels(1, seed=3)
    logits = ood.head_logits(tiny_model, ood.pooled_features(tiny_model, pixels))
    probabilities = keras.ops.convert_to_numpy(tiny_model(pixels, training=False))
    assert scipy.special.softmax(logits, axis=1) == pytest.approx(probabilities, abs=1e-5)


def test_features_of_a_wrong_model_or_shape_are_refused(tiny_model) -> None:
    import keras

    with pytest.raises(ood.OODError, match="shape"):
        ood.pooled_features(tiny_model, np.zeros((2, SIZE + 1, SIZE + 1, 3)))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ood.OODError, match="not a kidney_lab classifier"):
        ood.pooled_features(plain, np.zeros((1, 4)))
    with pytest.raises(ood.OODError, match="not a kidney_lab classifier"):
        ood.head_logits(plain, np.zeros((1, 4)))


def test_a_layered_detector_flags_what_any_segment_finds_far_and_keeps_its_validation_share() -> None:
    features, labels = gaussian_features(120, seed=11)
    validation, _ = gaussian_features(300, seed=12)
    early = np.random.default_rng(13).normal(size=(120, 8))
    early_validation = np.random.default_rng(14).normal(size=(300, 8))
    names = [classes.CLASS_NAMES[index] for index in labels]
    layered = ood.fit_layered(np.hstack([early, features]), names, np.hstack([early_validation, validation]),
                              segments=("early", ood.HEAD_SEGMENT), sizes=(8, FEATURES))
    assert layered.feature_layers == ("early",) and layered.sizes == (8, FEATURES)
    combined = np.hstack([early_validation, validation])
    assert (layered.score(combined) > layered.threshold).mean() == pytest.approx(0.05, abs=0.01)
    # Far only in the early segment: the head's features alone would not flag it.
    test, _ = gaussian_features(50, seed=15)
    far_early = np.hstack([np.random.default_rng(16).normal(loc=8.0, size=(50, 8)), test])
    assert (layered.score(far_early) > layered.threshold).all()
    assert (layered.parts[-1].score(test) <= layered.parts[-1].threshold).mean() > 0.8

    loaded = ood.loads(layered.to_json())
    assert isinstance(loaded, ood.LayeredDetector) and loaded.segments == layered.segments
    np.testing.assert_allclose(loaded.score(far_early), layered.score(far_early), rtol=1e-5)
    assert isinstance(ood.loads(layered.parts[-1].to_json()), ood.Detector)
    with pytest.raises(ood.OODError, match="segments early, head of sizes"):
        ood.fit_layered(np.hstack([early, features]), names, segments=("early", ood.HEAD_SEGMENT), sizes=(9, FEATURES))
    with pytest.raises(ood.OODError, match="length 208"):
        layered.score(features)
    damaged = json.loads(layered.to_json())
    damaged["segments"] = ["early"]
    with pytest.raises(ood.OODError, match="segments do not fit"):
        ood.loads(json.dumps(damaged))
