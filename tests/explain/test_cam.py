"""Class activation maps: every model and method, one compiled pass, the cache, targets, geometry."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from kidney_lab import cli
from kidney_lab import errors
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import pipeline
from kidney_lab.explain import cam
from kidney_lab.models import builders
from kidney_lab.models import registry
from tests.explain.conftest import lesion_phantom, non_square
from tests.helpers import encode


@pytest.mark.parametrize("method", cam.method_names())
@pytest.mark.parametrize("model", registry.MODEL_NAMES)
def test_every_model_and_method_gives_a_finite_map_of_the_scan_size(tiny_study, model, method) -> None:
    explainer = cam.load_explainer(tiny_study.runs[model], method)
    scan = non_square(lesion_phantom("Tumor"))
    result = explainer.explain(scan)
    again = explainer.explain(lesion_phantom("Cyst"), target="Normal")

    assert result.heatmap.shape == scan.shape and result.heatmap.dtype == np.float32
    assert np.isfinite(result.heatmap).all()
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.raw_max >= result.raw_min
    assert result.heatmap.max() == (1.0 if result.raw_max > result.raw_min else 0.0)
    assert list(result.probabilities) == list(classes.CLASS_NAMES)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.target == result.predicted == max(result.probabilities, key=result.probabilities.get)
    assert (result.model, result.method, result.run_id) == (model, method, tiny_study.runs[model].name)
    assert result.display_name == registry.get_spec(model).display_name
    assert again.heatmap.shape == (64, 64) and again.target == "Normal"
    assert explainer.traces == 1, "the compiled pass must be traced once per explainer"


REFERENCES = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}


def random_twins(model: str, size: int = 64) -> tuple[builders.BuiltModel, keras.Model]:
    """A model with random weights and a second copy of it for a reference implementation.

    Random weights: the comparisons are of the arithmetic, and a barely trained model can have
    no positive evidence for any class (every map ReLU'd to zero), which would prove nothing.
    """
    keras.utils.set_random_seed(0)
    built = builders.create_model(model, size, "none")
    reference_model = builders.create_model(model, size, "none").model
    reference_model.set_weights(built.model.get_weights())
    return built, reference_model


def single_layer_reference(visualizer, target: int, pixels: np.ndarray, layer: str) -> np.ndarray:
    """tf-keras-vis' map of one layer on that layer's grid, neither resized nor scaled."""
    return np.asarray(visualizer(
        CategoricalScore([target]), pixels, penultimate_layer=layer,
        seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False,
    ))[0]


@pytest.mark.parametrize("method", sorted(REFERENCES))
@pytest.mark.parametrize("model", ["mobilenetv2", "vit"])
def test_gradient_maps_equal_tf_keras_vis(model, method) -> None:
    built, reference_model = random_twins(model)
    explainer = cam.build_explainer(cam.LoadedRun(built.model, built.spec, 64, "random"), method)
    visualizer = REFERENCES[method](reference_model, model_modifier=ReplaceToLinear(), clone=True)
    pixels = pipeline.prepare_scan(lesion_phantom("Stone") / 255.0, 64)
    compared = 0
    for target in range(len(classes.CLASS_NAMES)):
        ours = explainer.cam(pixels, target).grid
        if method == "layercam" and built.spec.fine_cam_layers:
            reference = fused_reference(visualizer, target, pixels, built.spec, 64)
        else:
            reference = single_layer_reference(visualizer, target, pixels, built.spec.cam_layer)
        if reference.max() <= 0:
            # Every position ReLU'd away (a class with no positive evidence): ours must agree.
            assert ours.max() < 1e-6
            continue
        compared += 1
        # Grad-CAM++ leaves out the exp(score) factor that only scales the map (see cam.py).
        np.testing.assert_allclose(ours / ours.max(), reference / reference.max(), atol=1e-4)
        if method != "gradcam++":
            np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-6 * reference.max())
    assert compared > 0, "every reference map was empty; the comparison proved nothing"


def fused_reference(visualizer, target: int, pixels: np.ndarray, spec: registry.ModelSpec, size: int) -> np.ndarray:
    """LayerCAM's fusion as cam.py documents it, of tf-keras-vis' single-layer maps."""
    maps = [single_layer_reference(visualizer, target, pixels, layer)
            for layer in (spec.cam_layer, *spec.fine_cam_layers)]
    assert [m.shape[0] for m in maps] == sorted(m.shape[0] for m in maps), "layers go coarse to fine"
    assert maps[-1].shape[0] >= 4 * maps[0].shape[0], "the finest layer must be four times finer"
    fused = np.zeros((size, size), np.float32)
    for layer_map in maps:
        resized = tf.image.resize(layer_map[None, :, :, None], (size, size), method="bilinear")[0, :, :, 0].numpy()
        span = resized.max() - resized.min()
        fused = np.maximum(fused, (resized - resized.min()) / span if span > 0 else 0.0)
    return fused * maps[0].max()


def test_grad_cam_plus_plus_equals_layercam_at_one_pooled_layer(vit_run) -> None:
    # The ViT's token grid is its only spatial map, and its head pools it: there LayerCAM and
    # Grad-CAM++ are both Grad-CAM with negative channel weights clipped to zero.
    pixels = pipeline.prepare_scan(lesion_phantom("Cyst") / 255.0, 32)
    plus = cam.load_explainer(vit_run, "gradcam++").cam(pixels).grid
    layer = cam.load_explainer(vit_run, "layercam").cam(pixels).grid
    assert plus.max() > 0
    np.testing.assert_allclose(plus / plus.max(), layer / layer.max(), atol=1e-5)


@pytest.mark.parametrize("model", [name for name in registry.MODEL_NAMES if registry.get_spec(name).fine_cam_layers])
def test_layercam_fuses_finer_layers_into_a_map_of_the_input_size(tiny_study, model) -> None:
    run = tiny_study.runs[model]
    explainer = cam.load_explainer(run, "layercam")
    pixels = pipeline.prepare_scan(lesion_phantom("Tumor") / 255.0, explainer.image_size)
    grid = explainer.cam(pixels).grid
    coarse = cam.load_explainer(run, "gradcam").cam(pixels).grid
    assert grid.shape == (explainer.image_size, explainer.image_size)
    assert np.isfinite(grid).all() and grid.min() >= 0
    # The finer layers show: the fused map is not the CAM layer's map resized.
    resized = tf.image.resize(coarse[None, :, :, None], grid.shape, method="bilinear")[0, :, :, 0].numpy()
    assert coarse.shape[0] < grid.shape[0] and grid.max() > 0
    assert np.abs(grid / grid.max() - resized / max(resized.max(), 1e-12)).max() > 0.05


def test_layercam_of_a_model_without_its_finer_layers_says_so(tiny_study) -> None:
    spec = registry.get_spec("mobilenetv2")
    changed = dataclasses.replace(spec, fine_cam_layers=("no_such_layer",))
    model = builders.load_model(tiny_study.runs["mobilenetv2"] / runs.MODEL_FILE)
    loaded = cam.LoadedRun(model, changed, 80, "odd")
    with pytest.raises(registry.ModelLoadError, match="lacks the layers LayerCAM reads.*no_such_layer"):
        cam.build_explainer(loaded, "layercam")
    assert cam.build_explainer(loaded, "gradcam").cam(pixels=pipeline.prepare_scan(lesion_phantom("Cyst") / 255.0, 80)).grid.ndim == 2


class CountingGraph:
    """Wraps the explainer's graph and counts how often the compiled pass calls it."""

    def __init__(self, graph: keras.Model) -> None:
        self.graph, self.calls = graph, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.graph(*args, **kwargs)


def test_probabilities_and_map_come_from_one_forward_pass(vit_run, monkeypatch) -> None:
    cam.clear_cache()  # A fresh explainer, traced while the graph is counted.
    explainer = cam.load_explainer(vit_run, "gradcam")
    counter = CountingGraph(explainer.loaded.graph)
    monkeypatch.setattr(explainer.loaded, "graph", counter)
    scans = [lesion_phantom(label, index=3) for label in classes.CLASS_NAMES]

    def no_predict(*args, **kwargs):
        raise AssertionError("explain must not call a separate predict")

    with monkeypatch.context() as patch:
        for name in ("predict", "predict_on_batch"):
            patch.setattr(keras.Model, name, no_predict)
        results = [explainer.explain(scan) for scan in scans]
    assert counter.calls == 1, "the traced pass must run the model exactly once"
    assert explainer.traces == 1

    model = builders.load_model(vit_run / runs.MODEL_FILE)
    batch = np.concatenate([pipeline.prepare_scan(scan / 255.0, 32) for scan in scans])
    expected = model.predict(batch, verbose=0)
    got = np.array([list(result.probabilities.values()) for result in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_score_cam_runs_the_model_once_plus_once_per_channel_batch(vit_run, monkeypatch) -> None:
    cam.clear_cache()  # A fresh explainer, traced while the graph is counted.
    explainer = cam.load_explainer(vit_run, "scorecam")
    counter = CountingGraph(explainer.loaded.graph)
    monkeypatch.setattr(explainer.loaded, "graph", counter)
    explainer.explain(lesion_phantom("Cyst"))
    channels = min(cam.ScoreCam.CHANNELS, explainer.loaded.graph.graph.outputs[1].shape[-1])
    assert counter.calls == 1 + -(-channels // cam.ScoreCam.batch_size(channels, explainer.image_size))
    assert cam.ScoreCam.batch_size(32, 224) == 16 and cam.ScoreCam.batch_size(32, 299) == 8 and cam.ScoreCam.batch_size(32, 80) == 32


def test_the_cache_reuses_explainers_and_models(run_copy, monkeypatch) -> None:
    cam.clear_cache()
    run = run_copy()
    first = cam.load_explainer(run, "gradcam")
    assert cam.load_explainer(str(run), "Grad-CAM") is first
    layer = cam.load_explainer(run, "layercam")
    assert layer is not first and layer.loaded is first.loaded, "methods of one run share its model"

    model_file = run / runs.MODEL_FILE
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    reloaded = cam.load_explainer(run, "gradcam")
    assert reloaded is not first and reloaded.loaded is not first.loaded, "a changed model file is reloaded"

    monkeypatch.setattr(cam, "CACHE_SIZE", 2)
    cam.clear_cache()
    for method in ("gradcam", "layercam", "gradcam++"):
        cam.load_explainer(run, method)
    assert cam.cached_explainers() == [(run.name, "layercam"), (run.name, "gradcam++")]


def test_a_target_can_be_chosen(vit_run) -> None:
    explainer = cam.load_explainer(vit_run, "gradcam")
    scan = lesion_phantom("Stone")
    default = explainer.explain(scan)
    maps = {name: explainer.explain(scan, target=name.lower()) for name in classes.CLASS_NAMES}
    assert default.target == default.predicted
    assert all(result.target == name for name, result in maps.items())
    assert explainer.explain(scan, target=2).target == classes.CLASS_NAMES[2]
    assert maps[default.predicted].heatmap.tobytes() == default.heatmap.tobytes()
    raw = [result.raw_heatmap for result in maps.values()]
    assert any(not np.allclose(raw[0], other) for other in raw[1:]), "every target gave the same map"
    for bad in ("Kidney", 4, -1, True):
        with pytest.raises(errors.ConfigError, match="Cyst, Normal, Stone, Tumor"):
            explainer.explain(scan, target=bad)


def test_an_unknown_method_is_refused_with_the_choices(vit_run) -> None:
    with pytest.raises(errors.ConfigError, match="gradcam, gradcam\\+\\+, scorecam, layercam"):
        cam.load_explainer(vit_run, "saliency")


# A sixth method, added by one class ------------------------------------------------------------


class MeanActivation(cam.Explainer):
    """The CAM layer's channels averaged: no gradients, and the same map whatever the class."""

    name = "meanactivation"
    display_name = "Mean activation"
    help = "the CAM layer's channels averaged, whatever the class; one forward pass, no gradients."
    needs_gradients = False
    explains_a_class = False

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor | None) -> tf.Tensor:
        channels = activations.shape[-1]
        return tf.fill([channels], 1.0 / channels)


@pytest.fixture
def sixth_method():
    """MeanActivation, registered for one test and forgotten after it."""
    cam.register_method(MeanActivation)
    try:
        yield MeanActivation
    finally:
        cam.unregister_method(MeanActivation.name)
    assert MeanActivation.name not in cam.method_names()


def test_a_sixth_method_is_one_class_and_the_cli_offers_it(sixth_method, vit_run, tmp_path, capsys) -> None:
    assert cam.method_names()[-1] == "meanactivation" and cam.get_method("Mean-Activation") is sixth_method
    image = tmp_path / "scan.png"
    image.write_bytes(encode(lesion_phantom("Stone")))
    parser = cli.build_parser()
    assert parser.parse_args(["explain", str(image), "--runs", str(vit_run), "--method", "meanactivation"]).method == "meanactivation"
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "--help"])
    assert "layercam, meanactivation" in " ".join(capsys.readouterr().out.split())

    report = tmp_path / "report.json"
    status = cli.main(["explain", str(image), "--runs", str(vit_run), "--method", "MeanActivation",
                       "--out", str(tmp_path / "out"), "--json", str(report)])
    printed = capsys.readouterr().out
    assert status == 0
    result = json.loads(report.read_text())
    assert result["method"] == "meanactivation" and not result["errors"]
    assert Path(result["results"][0]["overlay"]).is_file() and "Mean activation for" in printed

    # Its map is the mean of the CAM layer's channels, and the same for every class.
    explainer = cam.load_explainer(vit_run, "meanactivation")
    pixels = pipeline.prepare_scan(lesion_phantom("Stone") / 255.0, explainer.image_size)
    _, activations, _ = explainer.loaded.graph(tf.constant(pixels, tf.float32))
    expected = np.maximum(np.asarray(activations[0], np.float32).mean(axis=-1), 0.0)
    np.testing.assert_allclose(explainer.cam(pixels, 0).grid, expected, rtol=1e-5, atol=1e-6)
    assert explainer.cam(pixels, 0).grid.tobytes() == explainer.cam(pixels, 3).grid.tobytes()


def test_a_sixth_method_is_offered_on_the_compare_page(sixth_method, vit_run, tmp_path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    workspace = tmp_path / "workspace"
    shutil.copytree(vit_run, workspace / vit_run.name)
    monkeypatch.setenv("KIDNEY_LAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("KIDNEY_LAB_DATA", raising=False)
    app = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "streamlit_app.py"), default_timeout=180).run()
    app.switch_page("pages/compare.py").run()
    assert not app.exception, [element.value for element in app.exception]
    selector = app.segmented_control(key="compare-method")
    assert selector.options[-1] == "Mean activation"
    assert f"Mean activation: {sixth_method.help}" in selector.help
    assert not app.selectbox(key="compare-target").disabled

    selector.set_value("meanactivation").run()
    app.file_uploader[0].set_value(("stone.png", encode(lesion_phantom("Stone")), "image/png")).run()
    assert not app.exception, [element.value for element in app.exception]
    assert app.selectbox(key="compare-target").disabled, "a map that is the same for every class has no class to choose"
    assert [caption.value for caption in app.caption if " · " in str(caption.value) and "%" in str(caption.value)]
    # A tiny run's detector may flag the phantom: that alert is the page telling the truth, not a failure.
    assert not [element.value for element in app.error if "Out of distribution" not in str(element.value)]
    assert (vit_run.name, "meanactivation") in cam.cached_explainers(), "the page explained with the new method"


def test_a_method_needs_a_class_of_its_own_name(sixth_method) -> None:
    with pytest.raises(ValueError, match="registered already"):
        cam.register_method(sixth_method)
    odd = type("Odd", (cam.GradCam,), {"name": "Odd-CAM"})
    with pytest.raises(ValueError, match="lower case.*'oddcam'"):
        cam.register_method(odd)
    with pytest.raises(ValueError, match="subclass of cam.Explainer"):
        cam.register_method(dict)


@pytest.mark.parametrize("shape", [(64, 64), (48, 64), (64, 48), (37, 100), (100, 37), (301, 17), (16, 999)])
@pytest.mark.parametrize("size", [32, 80, 299])
def test_content_box_is_where_prepare_scan_puts_the_scan(shape, size) -> None:
    pixels = pipeline.prepare_scan(np.ones(shape + (3,), np.float32), size)[0, :, :, 0]
    rows, columns = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    top, left, height, width = cam.content_box(*shape, size)
    assert (top, left, height, width) == (rows[0], columns[0], len(rows), len(columns))


def test_a_map_of_the_model_input_maps_back_onto_a_non_square_scan() -> None:
    scan = np.zeros((60, 150), np.uint8)
    scan[40:52, 110:124] = 255  # A bright square low on the right.
    size = 32
    pixels = pipeline.prepare_scan(scan / 255.0, size)[0, :, :, 0]
    back = cam.grid_to_scan(pixels, size, *scan.shape)
    assert back.shape == scan.shape
    row, column = np.unravel_index(np.argmax(back), back.shape)
    assert 40 - 3 <= row < 52 + 3 and 110 - 3 <= column < 124 + 3
    assert np.corrcoef(back.ravel(), scan.ravel().astype(float))[0, 1] > 0.8
    # Without cropping the padding the square would land about 13 rows too low (or be lost).
    uncropped = np.asarray(cam.grid_to_input(pixels, size))
    assert np.argmax(uncropped.max(axis=1)) != row


def test_a_flat_map_normalises_to_zeros() -> None:
    heat, low, high = cam.normalise(np.full((5, 7), 0.25, np.float32))
    assert not heat.any() and low == high == 0.25
    heat, low, high = cam.normalise(np.array([[1.0, 3.0]], np.float32))
    assert heat.tolist() == [[0.0, 1.0]] and (low, high) == (1.0, 3.0)


def test_images_are_accepted_as_paths_bytes_scans_and_arrays(tmp_path: Path) -> None:
    pixels = lesion_phantom("Cyst")
    path = tmp_path / "slice.png"
    path.write_bytes(encode(pixels))
    from_path = cam.load_image(path)
    for image in (str(path), encode(pixels), from_path, pixels, pixels / 255.0, np.dstack([pixels] * 3)):
        np.testing.assert_allclose(cam.load_image(image).image, from_path.image, atol=1e-6)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8), np.uint8), "at least 16 px"),
        (np.zeros((32, 32, 2), np.uint8), "must be \\(H, W\\)"),
        (np.full((32, 32), 2.0), "finite values in \\[0, 1\\]"),
        (np.full((32, 32), np.nan), "finite values in \\[0, 1\\]"),
        (np.zeros((32, 32), np.int64), "uint8"),
        (b"not an image at all", "."),
        (12, "give a path, file bytes"),
    ],
)
def test_bad_images_are_refused_with_a_reason(image, message) -> None:
    with pytest.raises(errors.ScanReadError, match=message):
        cam.load_image(image)
