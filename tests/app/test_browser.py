"""The app in a real browser: ``streamlit run`` on a free port, Debian's Chromium via Playwright.

Each page is opened by its URL, waited for until its script has finished, checked for its
heading and for the absence of any traceback, and photographed.
"""

from __future__ import annotations

import pytest

# (url path, heading, a text the page shows on an empty workspace)
PAGES = [
    ("", "kidney_lab", "There is no trained model in this workspace yet"),
    ("dataset", "Dataset", "No dataset chosen yet"),
    ("train", "Train", "Choose a dataset first"),
]
LOAD_SECONDS = 120


def open_page(browser, url: str):
    """A new page at ``url``, returned once the app's script has run to its end."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=LOAD_SECONDS * 1000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']",
                           timeout=LOAD_SECONDS * 1000)
    page.wait_for_selector("h1", timeout=LOAD_SECONDS * 1000)
    return page


def check_page(page, heading: str) -> str:
    """The page's text, after checking its heading and that it shows no traceback or exception."""
    text = page.inner_text("body")
    assert page.locator("h1").first.inner_text().strip() == heading
    assert "Traceback" not in text
    assert page.locator("[data-testid='stException']").count() == 0
    return text


@pytest.mark.slow
def test_pages_on_an_empty_workspace(browser, app_server, screenshots, tmp_path_factory):
    url = app_server(tmp_path_factory.mktemp("empty-workspace"))
    for path, heading, hint in PAGES:
        page = open_page(browser, f"{url}/{path}")
        try:
            assert hint in check_page(page, heading)
            screenshots(page, f"empty-{path or 'home'}")
        finally:
            page.close()


@pytest.mark.slow
def test_pages_on_the_tiny_study(browser, app_server, screenshots, tiny_study):
    url = app_server(tiny_study.workspace, data=tiny_study.data)
    expected = {
        "": "Trained models",
        "dataset": "Split preview: random vs grouped",
        "train": "Start training",
    }
    for path, heading, _hint in PAGES:
        page = open_page(browser, f"{url}/{path}")
        try:
            text = check_page(page, heading)
            assert expected[path] in text
            if path == "dataset":
                # Charts and images are drawn by the browser after the script has finished.
                page.wait_for_selector("[data-testid='stPlotlyChart']", timeout=LOAD_SECONDS * 1000)
                images = page.locator("[data-testid='stMain'] [data-testid='stImage'] img")
                images.nth(4 * 6 - 1).wait_for(timeout=LOAD_SECONDS * 1000)
            screenshots(page, f"tiny-study-{path or 'home'}")
        finally:
            page.close()


@pytest.mark.slow
def test_compare_page_explains_an_uploaded_scan(browser, app_server, screenshots, tiny_study):
    url = app_server(tiny_study.workspace, data=tiny_study.data)
    scan = sorted(next(folder for folder in tiny_study.data.rglob("Tumor") if folder.is_dir()).glob("*.png"))[0]
    page = open_page(browser, f"{url}/compare")
    try:
        check_page(page, "Compare")
        # The real dropzone, as a user's file dialog fills it.
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(scan))
        overlays = "[data-testid='stMain'] [data-testid='stImage'] img"
        # The scan itself, one overlay per model and the ensemble's combined map; the first explanation
        # loads the five models.
        page.wait_for_function(f"() => document.querySelectorAll(\"{overlays}\").length >= 7",
                               timeout=LOAD_SECONDS * 2000)
        # The row ends with the probability chart and the agreement, drawn after the overlays.
        page.wait_for_selector("[data-testid='stPlotlyChart']", state="attached", timeout=LOAD_SECONDS * 1000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']",
                               timeout=LOAD_SECONDS * 1000)
        text = check_page(page, "Compare")
        assert page.locator(overlays).count() == 7 and "Verdict: " in text
        assert "not a diagnosis" in text
        screenshots(page, "tiny-study-compare")
    finally:
        page.close()


@pytest.mark.slow
def test_compare_page_warns_about_a_noise_image(browser, app_server, screenshots, tiny_study, tmp_path):
    """Pure noise is not a CT slice: its content warning shows above the row, and every model
    whose run has an out-of-distribution detector says so before its class."""
    import numpy as np
    from PIL import Image

    from kidney_lab import runs

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (128, 128), dtype=np.uint8)).save(noise)
    url = app_server(tiny_study.workspace, data=tiny_study.data)
    page = open_page(browser, f"{url}/compare")
    try:
        check_page(page, "Compare")
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(noise))
        overlays = "[data-testid='stMain'] [data-testid='stImage'] img"
        page.wait_for_function(f"() => document.querySelectorAll(\"{overlays}\").length >= 6",
                               timeout=LOAD_SECONDS * 2000)
        page.wait_for_selector("[data-testid='stPlotlyChart']", state="attached", timeout=LOAD_SECONDS * 1000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']",
                               timeout=LOAD_SECONDS * 1000)
        text = check_page(page, "Compare")
        assert "Not like a kidney CT slice" in text and "pure noise" in text
        with_detector = sum(runs.detector_path(run).is_file() for run in tiny_study.runs.values())
        flagged = page.locator("[data-testid='stAlert']", has_text="Out of distribution — not a kidney CT like its "
                                                                   "training data")
        assert flagged.count() == with_detector
        screenshots(page, "tiny-study-compare-noise")
    finally:
        page.close()
