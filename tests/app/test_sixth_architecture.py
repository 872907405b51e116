"""A sixth architecture is one ``ModelSpec``: the command line, Train, Compare and the demo all offer it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kidney_lab import cli
from kidney_lab import demo
from kidney_lab import runs
from kidney_lab.models import registry
from kidney_lab.training import config

SIXTH = dataclasses.replace(
    registry.get_spec("vit"), name="tinynet", display_name="TinyNet", demo_epochs=2, demo_learning_rate=2e-3,
    demo_lane=1, demo_turn=9,
)


def add_architecture(monkeypatch: pytest.MonkeyPatch, spec: registry.ModelSpec) -> None:
    """Register ``spec`` for one test: the registry's spec table (``_SPECS``, which ``get_spec``
    reads) and the two views of it every other module reads (``REGISTRY``, ``MODEL_NAMES``).
    The monkeypatch undoes it after the test."""
    specs = (*registry._SPECS, spec)
    monkeypatch.setattr(registry, "_SPECS", specs)
    monkeypatch.setattr(registry, "REGISTRY", {entry.name: entry for entry in specs})
    monkeypatch.setattr(registry, "MODEL_NAMES", tuple(entry.name for entry in specs))


@pytest.fixture
def sixth(monkeypatch: pytest.MonkeyPatch) -> registry.ModelSpec:
    add_architecture(monkeypatch, SIXTH)
    return SIXTH


def test_the_models_command_lists_it(sixth, tmp_path, capsys):
    assert cli.main(["models", "--json", str(tmp_path / "models.json")]) == 0
    assert "tinynet" in capsys.readouterr().out
    listed = json.loads((tmp_path / "models.json").read_text())["models"]
    assert [row["name"] for row in listed][-1] == "tinynet" and listed[-1]["demo_lane"] == 1


def test_train_takes_it_by_default_and_by_name(sixth, tmp_path):
    assert config.TrainConfig(data=tmp_path).models[-1] == "tinynet"
    arguments = cli.build_parser().parse_args(["train", "--data", str(tmp_path), "--models", "TinyNet,vit"])
    assert config.from_arguments(config.TrainConfig, arguments).models == ("vit", "tinynet")


def test_the_demo_trains_it_in_its_lane_with_its_recipe(sixth, tmp_path):
    assert demo.lanes()[1][-1] == "tinynet" and "tinynet" not in demo.lanes()[0]
    settings = config.DemoSettings()
    assert settings.models[-1] == "tinynet"
    assert demo.demo_arguments(settings)[demo.demo_arguments(settings).index("--models") + 1].endswith(",tinynet")
    trained = demo.train_config(settings, "tinynet", tmp_path, tmp_path, runs.new_study_id())
    assert (trained.epochs, trained.learning_rate, trained.image_size) == (2, 2e-3, 96)


def test_the_train_page_offers_it(sixth, open_app, tmp_path, phantom_root):
    app = open_app(tmp_path / "workspace", page="pages/train.py", data=phantom_root)
    assert not app.exception
    assert "TinyNet" in app.multiselect[0].options
    assert "tinynet" in app.multiselect[0].value  # Every model is chosen by default.


def test_the_compare_page_offers_it(sixth, open_app, tmp_path):
    workspace = tmp_path / "workspace"
    study_id = runs.new_study_id()
    run_id = runs.new_run_id("tinynet")
    folder = runs.create_run(workspace, run_id, {"model": "tinynet", "display_name": "TinyNet", "study_id": study_id})
    (folder / runs.MODEL_FILE).write_bytes(b"")  # Never loaded: no scan is uploaded.
    runs.mark_finished(folder, runs.COMPLETED)
    app = open_app(workspace, page="pages/compare.py")
    assert not app.exception, app.exception
    selectors = {selector.label: selector for selector in app.selectbox}
    assert "TinyNet" in selectors and selectors["TinyNet"].value == run_id
    assert len([label for label in selectors if label in
                {registry.get_spec(name).display_name for name in registry.MODEL_NAMES}]) == len(registry.MODEL_NAMES)
