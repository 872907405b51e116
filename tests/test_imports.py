"""Reading a fact does not load TensorFlow: the registry, the run store, the stored evaluations,
the leaderboard, Compare's choices, and every library module a page imports, each imported in a
fresh interpreter; and the app opens its pages without TensorFlow.

Only the modules that run or train a model may import TensorFlow (:data:`MODEL_MODULES`); a page
reaches them from inside the function that needs them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kidney_lab import runs

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras")

# The modules the issue names: a registry fact, a run folder, a stored evaluation, a leaderboard,
# which runs Compare opens with, and the app's warm-up.
LIGHT_MODULES = [
    "kidney_lab.models.registry",
    "kidney_lab.models.vit_presets",
    "kidney_lab.runs",
    "kidney_lab.evaluation.store",
    "kidney_lab.evaluation.leaderboard",
    "kidney_lab.explain",
    "kidney_lab.explain.compare",
    "kidney_lab.explain.preload",
]

# Library modules that run or train models, and so import TensorFlow.
MODEL_MODULES = {
    "kidney_lab.demo",
    "kidney_lab.evaluation.evaluate",
    "kidney_lab.explain.cam",
    "kidney_lab.models.builders",
}

APP_FILE = REPO_ROOT / "streamlit_app.py"
# The pages that open on a workspace with runs without TensorFlow. Compare loads it as soon as
# it has a run to offer (its method picker reads the methods from kidney_lab.explain.cam).
APP_PAGES = ["pages/home.py", "pages/train.py", "pages/leaderboard.py"]


def heavy_modules_after(code: str, environment: dict[str, str] | None = None) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it left in ``sys.modules``."""
    script = (f"{code}\nimport json, sys\n"
              f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(environment or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def page_imports() -> list[str]:
    """Every kidney_lab module that a page or the entry script imports, at the top or inside a
    function (``from kidney_lab.x import y`` counts ``kidney_lab.x.y`` when that is a module)."""
    found = set()
    for path in [APP_FILE, *sorted((REPO_ROOT / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("kidney_lab"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kidney_lab"):
                found.add(node.module)
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    if (REPO_ROOT / (name.replace(".", "/") + ".py")).is_file() or \
                            (REPO_ROOT / name.replace(".", "/") / "__init__.py").is_file():
                        found.add(name)
    return sorted(found)


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_without_tensorflow(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


@pytest.mark.parametrize("module", sorted(set(page_imports()) - MODEL_MODULES))
def test_what_a_page_imports_needs_no_tensorflow(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


def test_the_pages_imports_are_found() -> None:
    # The check above sees the imports made inside functions too (the registry and the
    # explainers are imported that way).
    found = set(page_imports())
    assert {"kidney_lab.models.registry", "kidney_lab.evaluation.leaderboard", "kidney_lab.runs",
            "kidney_lab.explain.cam"} <= found


def test_a_registry_fact_needs_no_tensorflow_but_building_does() -> None:
    code = ("from kidney_lab.models import registry\n"
            "spec = registry.get_spec('vit')\n"
            "assert registry.describe(spec)['cam_layer'] == spec.cam_layer\n")
    assert heavy_modules_after(code) == []
    assert heavy_modules_after(code + "from kidney_lab.models import builders\n") == list(HEAVY)


def test_listing_the_models_on_the_command_line_needs_no_tensorflow() -> None:
    code = "from kidney_lab import cli\nassert cli.main(['models']) == 0\n"
    assert heavy_modules_after(code) == []


@pytest.fixture
def light_workspace(tmp_path: Path) -> dict[str, str]:
    """A workspace with one completed run per architecture in one study (placeholder model
    files: nothing here loads a model), a dataset folder, and the warm-up switched off."""
    workspace = tmp_path / "workspace"
    study = runs.new_study_id()
    from kidney_lab.models import registry

    for name in registry.MODEL_NAMES:
        folder = runs.create_run(workspace, runs.new_run_id(name), {
            "model": name, "display_name": registry.get_spec(name).display_name, "image_size": 64,
            "study_id": study, "weights": "random",
        })
        (folder / runs.MODEL_FILE).write_bytes(b"placeholder")
        runs.mark_finished(folder, runs.COMPLETED)
    data = tmp_path / "data"
    for label in ("Cyst", "Normal", "Stone", "Tumor"):
        (data / label).mkdir(parents=True)
    return {"KIDNEY_LAB_WORKSPACE": str(workspace), "KIDNEY_LAB_DATA": str(data), "KIDNEY_LAB_WARM_UP": "0"}


def open_page(page: str) -> str:
    """Code that opens ``page`` of the app with AppTest and checks that it shows no error."""
    return (
        "from streamlit.testing.v1 import AppTest\n"
        f"app = AppTest.from_file({str(APP_FILE)!r}, default_timeout=120).run()\n"
        f"if {page!r} != 'pages/home.py':\n"
        f"    app.switch_page({page!r}).run()\n"
        "assert not app.exception, [element.value for element in app.exception]\n"
        "assert not app.error, [element.value for element in app.error]\n"
    )


@pytest.mark.parametrize("page", APP_PAGES)
def test_the_app_opens_a_page_without_tensorflow(light_workspace: dict[str, str], page: str) -> None:
    assert heavy_modules_after(open_page(page), light_workspace) == []


def test_the_app_opens_compare_on_an_empty_workspace_without_tensorflow(tmp_path: Path) -> None:
    environment = {"KIDNEY_LAB_WORKSPACE": str(tmp_path / "workspace"), "KIDNEY_LAB_WARM_UP": "1"}
    assert heavy_modules_after(open_page("pages/compare.py"), environment) == []


def test_the_warm_up_of_an_empty_workspace_loads_no_tensorflow(tmp_path: Path) -> None:
    code = ("from kidney_lab.explain import preload\n"
            f"preload.start_warm_up({str(tmp_path)!r}).join(60)\n"
            f"assert preload.warm_up({str(tmp_path)!r}).run_ids == []\n")
    assert heavy_modules_after(code, {"KIDNEY_LAB_WARM_UP": "1"}) == []
