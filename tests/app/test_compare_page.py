"""The Compare page with AppTest: real uploads (PNG, DICOM, a bad file), runs, methods, missing models.

AppTest in Streamlit 1.67 drives ``st.file_uploader`` (``set_value`` with (name, bytes, mime)
tuples), so the uploads here go through the page's own uploader. Every prediction the page shows
is checked against :func:`kidney_lab.explain.explain` on the same bytes and runs. The models of
the tiny study are barely trained: the tests compare the page with the library, never with the
truth.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kidney_lab import explain as explain_module
from kidney_lab import runs
from kidney_lab.data import phantom
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.models import registry
from tests.app.helpers import texts

PAGE = "pages/compare.py"
# A caption under an overlay: "Tumor · 87.3%" (or ">99.9%" / "<0.1%").
RESULT_CAPTION = re.compile(r"^(?P<label>" + "|".join(CLASS_NAMES) + r") · (?P<percent>[<>]?[\d.]+)%")


def _phantom_bytes(data: Path, label: str) -> bytes:
    """The bytes of the first phantom PNG of class ``label``."""
    folder = next(folder for folder in data.rglob(label) if folder.is_dir())
    return sorted(folder.glob("*.png"))[0].read_bytes()


def _dicom_bytes(png: bytes) -> bytes:
    """A CT DICOM (MONOCHROME2, slope 1, intercept -1024, no window of its own) of a PNG slice.

    Grey 0-255 becomes -160..240 HU, so the kidney window (width 400, level 40) that the reader
    uses for CT without a window gives back the PNG's grey levels.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    hu = grey / 255.0 * 400.0 - 160.0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Rows, dataset.Columns = hu.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.PixelData = np.round(hu + 1024).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _shown_results(app) -> list[tuple[str, str]]:
    """(class, percent text) of every overlay caption, in the page's order."""
    found = []
    for caption in app.caption:
        match = RESULT_CAPTION.match(str(caption.value))
        if match:
            found.append((match["label"], match["percent"]))
    return found


def _expected(report) -> list[tuple[str, float]]:
    return [(result.predicted, 100 * result.probabilities[result.predicted]) for result in report.results]


def _assert_same(shown: list[tuple[str, str]], expected: list[tuple[str, float]]) -> None:
    assert [label for label, _ in shown] == [label for label, _ in expected]
    for (_, text), (_, value) in zip(shown, expected):
        if text.startswith(">"):
            assert value >= 99.9
        elif text.startswith("<"):
            assert value < 0.1
        else:
            assert abs(float(text) - value) <= 0.051


def _no_exception(app) -> None:
    assert not app.exception, [element.value for element in app.exception]


def test_an_empty_workspace_says_what_to_do(open_app, tmp_path):
    app = open_app(tmp_path / "workspace", page=PAGE)
    _no_exception(app)
    assert "No trained model in this workspace yet" in texts(app)
    assert not app.file_uploader, "nothing to upload to without a model"
    assert not (tmp_path / "workspace").exists()


@pytest.fixture(scope="module")
def study_runs(tiny_study) -> list[Path]:
    """The tiny study's runs in the registry's order (the order of the page's columns)."""
    return [tiny_study.runs[name] for name in registry.MODEL_NAMES]


@pytest.mark.slow
def test_png_dicom_and_a_bad_file_show_the_library_s_predictions(open_app, tiny_study, study_runs, monkeypatch):
    png = _phantom_bytes(tiny_study.data, "Tumor")
    dicom = _dicom_bytes(_phantom_bytes(tiny_study.data, "Cyst"))
    app = open_app(tiny_study.workspace, page=PAGE)
    _no_exception(app)
    assert "missing" not in texts(app), "all five architectures are in the tiny study"
    app.file_uploader[0].set_value([
        ("tumor.png", png, "image/png"),
        ("notes.png", b"these are my notes, not a scan", "image/png"),
        ("slice", dicom, "application/octet-stream"),
    ]).run()
    _no_exception(app)
    # The bad file is reported by name; the PNG and the DICOM are still compared.
    assert len(app.error) == 1 and "notes.png" in app.error[0].value
    shown = _shown_results(app)
    assert len(shown) == 2 * len(study_runs)
    _assert_same(shown[:5], _expected(explain_module.explain(study_runs, png)))
    _assert_same(shown[5:], _expected(explain_module.explain(study_runs, dicom)))
    shown_text = texts(app)
    assert "CT" in shown_text and "window" in shown_text, "the DICOM's modality and window are shown"
    assert [box.label for box in app.selectbox if box.label == "DICOM window"], "DICOM shows the window picker"
    assert "not a diagnosis" in shown_text
    assert len(app.get("plotly_chart")) == 2
    assert [button.label for button in app.get("download_button")] == ["Overlays (PNG, zipped)", "Predictions (CSV)"]

    # The opacity slider re-blends cached heat maps: nothing is explained again.
    calls = []
    original = explain_module.explain
    monkeypatch.setattr(explain_module, "explain", lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    app.slider(key="compare-opacity").set_value(0.8).run()
    _no_exception(app)
    assert calls == [] and len(_shown_results(app)) == 10

    # Another method explains again, with the same predictions.
    app.segmented_control(key="compare-method").set_value("layercam").run()
    _no_exception(app)
    assert len(calls) == 2 * len(study_runs)
    assert _shown_results(app) == shown

    # Another target class: each map says which class it explains.
    app.selectbox(key="compare-target").set_value("Stone").run()
    _no_exception(app)
    stone_maps = [caption.value for caption in app.caption if "map of Stone" in str(caption.value)]
    not_stone = sum(label != "Stone" for label, _ in shown)
    assert len(stone_maps) == not_stone


@pytest.mark.slow
def test_fewer_than_five_models_and_a_broken_run(open_app, tiny_study, tmp_path):
    workspace = tmp_path / "workspace"
    for name in ("efficientnetb0", "vit"):
        shutil.copytree(tiny_study.runs[name], workspace / tiny_study.runs[name].name)
    broken = workspace / tiny_study.runs["vit"].name / runs.MODEL_FILE
    broken.write_bytes(b"not a keras file")
    app = open_app(workspace, page=PAGE)
    _no_exception(app)
    shown = texts(app)
    missing = [registry.get_spec(name).display_name for name in ("mobilenetv2", "resnet50", "inceptionv3")]
    assert f"2 of 5 architectures have a run chosen; missing: {', '.join(missing)}" in shown
    # Links to the Train page and Home (url paths "train" and ""), where the missing models are made.
    assert {link.proto.page for link in app.get("page_link")} >= {"train", ""}

    png = _phantom_bytes(tiny_study.data, "Stone")
    app.file_uploader[0].set_value(("stone.png", png, "image/png")).run()
    _no_exception(app)
    # EfficientNetB0 works; the broken ViT is reported in its own slot; the others say none chosen.
    expected = explain_module.explain([workspace / tiny_study.runs["efficientnetb0"].name], png)
    _assert_same(_shown_results(app), _expected(expected))
    assert len(app.error) == 1 and tiny_study.runs["vit"].name in app.error[0].value
    assert sum(caption.value == "no run chosen" for caption in app.caption) == 3


@pytest.mark.slow
def test_a_run_with_measured_faithfulness_says_how_often_its_maps_hit_the_lesion(open_app, tiny_study, tmp_path):
    from kidney_lab.explain import faithfulness

    workspace = tmp_path / "workspace"
    for name in ("efficientnetb0", "vit"):
        shutil.copytree(tiny_study.runs[name], workspace / tiny_study.runs[name].name)
    measured = faithfulness.evaluate_faithfulness(workspace / tiny_study.runs["vit"].name, max_images=8, curves=False)
    scores = measured["methods"]["gradcam"]
    app = open_app(workspace, page=PAGE)
    app.file_uploader[0].set_value(("stone.png", _phantom_bytes(tiny_study.data, "Stone"), "image/png")).run()
    _no_exception(app)
    trust = [str(caption.value) for caption in app.caption if "lay in the lesion" in str(caption.value)]
    # Only the ViT was measured; the figures are the stored ones.
    lesions = sum(row["images"] for name, row in scores["per_class"].items() if name != "Normal")
    assert 0 < lesions < measured["images"]
    assert trust == [
        f"On {lesions} test images with a lesion, this method's maximum lay in the lesion "
        f"{scores['pointing_game']:.0%} of the time (chance {measured['baselines']['pointing_game']:.0%}, "
        f"random weights {scores['random_weights_pointing_game']:.0%})."
    ]
    # Measured for Grad-CAM only: another method says nothing rather than borrow its figures.
    app.segmented_control(key="compare-method").set_value("scorecam").run()
    _no_exception(app)
    assert not [caption for caption in app.caption if "lay in the lesion" in str(caption.value)]


@pytest.mark.slow
def test_runs_trained_on_phantoms_are_called_so_by_the_library_s_one_answer(open_app, tiny_study, monkeypatch):
    app = open_app(tiny_study.workspace, page=PAGE)
    _no_exception(app)
    assert all("phantoms" in label for label in app.selectbox(key="compare-run-vit").options[1:])
    monkeypatch.setattr(phantom, "phantom_root", lambda folder: None)
    app = open_app(tiny_study.workspace, page=PAGE)
    _no_exception(app)
    assert not any("phantoms" in label for label in app.selectbox(key="compare-run-vit").options)


@pytest.mark.slow
def test_the_ensemble_column_shows_the_calibrated_verdict_and_a_combined_map(open_app, tiny_study, study_runs):
    from kidney_lab.explain import compare

    png = _phantom_bytes(tiny_study.data, "Stone")
    app = open_app(tiny_study.workspace, page=PAGE)
    app.file_uploader[0].set_value(("stone.png", png, "image/png")).run()
    _no_exception(app)
    assert "**Ensemble**" in [str(element.value) for element in app.markdown]
    expected = compare.ensemble_result(explain_module.explain(study_runs, png), compare.run_temperatures(study_runs))
    verdicts = [str(caption.value) for caption in app.caption if str(caption.value).startswith("Verdict: ")]
    assert len(verdicts) == 1
    label, share = re.match(r"Verdict: (\w+) · ([<>]?[\d.]+)%", verdicts[0]).groups()
    assert label == expected.predicted
    _assert_same([(label, share)], [(expected.predicted, 100 * expected.probabilities[expected.predicted])])
    combined = [str(caption.value) for caption in app.caption if "the map combines" in str(caption.value)]
    assert combined == [f"Mean of 5 models' probabilities, each after its own temperature scaling; the map combines "
                        f"{len(expected.map_weights)} models' maps for {expected.predicted}, each weighted by its "
                        "probability of it."]
    # The overlays: the scan, five models and the ensemble's combined map.
    assert len(app.get("image")) == 7
    # Asked for one class, every model's map of it is combined.
    app.selectbox(key="compare-target").set_value("Tumor").run()
    _no_exception(app)
    assert any("the map combines 5 models' maps for Tumor" in str(caption.value) for caption in app.caption)


def _noise_png(side: int = 96, seed: int = 3) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_truth_comes_first_content_warnings_and_out_of_distribution(open_app, tmp_path, monkeypatch):
    """A noise image: its content warning above the row, and a model whose detector flags it shows
    so before its class (explanations stand in for the models, as the library would return them)."""
    import types

    from kidney_lab import explain as explain_package
    from kidney_lab.explain import compare
    from tests.evaluation.helpers import clustered_table, fake_run

    workspace = tmp_path / "workspace"
    made = {}
    for model in ("resnet50", "vit"):
        made[model] = fake_run(workspace, model, clustered_table({"Cyst": 3, "Normal": 3, "Stone": 3, "Tumor": 3}))
        (made[model] / runs.MODEL_FILE).write_bytes(b"stand-in")

    def fake_explain(references, scan, method="gradcam", target=None):
        folder = Path(references[0])
        flagged = folder.name == made["vit"].name
        result = types.SimpleNamespace(
            run_id=folder.name, run_dir=folder, model=folder.name.split("-")[2],
            display_name="ViT" if flagged else "ResNet50", method=method, predicted="Tumor", target="Tumor",
            probabilities={"Cyst": 0.01, "Normal": 0.01, "Stone": 0.01, "Tumor": 0.97}, seconds=0.1,
            heatmap=np.zeros(scan.image.shape[:2], np.float32), raw_min=0.0, raw_max=1.0,
            ood={"score": 40.0 if flagged else 1.0, "threshold": 5.0, "flagged": flagged},
        )
        return types.SimpleNamespace(results=[result], errors=[])

    monkeypatch.setattr(explain_package, "explain", fake_explain)
    app = open_app(workspace, page=PAGE)
    app.file_uploader[0].set_value([("noise.png", _noise_png(), "image/png")]).run()
    _no_exception(app)
    warnings = [element.value for element in app.warning]
    assert any("Not like a kidney CT slice" in text and "noise" in text for text in warnings), warnings
    errors = [element.value for element in app.error]
    assert len(errors) == 1 and "Out of distribution — not a kidney CT like its training data" in errors[0]
    # The flagged model's alert comes before its class, in the page's order.
    order = [element.value for element in app.main if getattr(element, "type", None) in ("alert", "caption")
             or element.__class__.__name__ in ("Error", "Caption")]
    flagged_at = next(index for index, text in enumerate(order) if "Out of distribution" in str(text))
    assert any(RESULT_CAPTION.match(str(text)) for text in order[flagged_at + 1:])
    expected = compare.agreement([types.SimpleNamespace(display_name=name, predicted="Tumor",
                                                        ood={"flagged": name == "ViT", "score": 1.0, "threshold": 5.0})
                                  for name in ("ResNet50", "ViT")]).text
    assert expected in texts(app)
