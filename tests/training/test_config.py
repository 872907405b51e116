"""The options table: one declaration makes the train and demo parsers, the page's form and the demo's arguments."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kidney_lab import cli
from kidney_lab import errors
from kidney_lab.training import config

REPOSITORY = Path(__file__).resolve().parents[2]


def _visible_flags(command: str) -> set[str]:
    """The flags of a sub-command that its help shows."""
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if action.choices and command in action.choices)
    return {flag for action in commands.choices[command]._actions if action.help != "==SUPPRESS=="
            for flag in action.option_strings if flag.startswith("--") and flag != "--help"}


def _readme_flags(command: str) -> set[str]:
    """The flags of ``python -m kidney_lab COMMAND`` in the README's "Using the command line"."""
    text = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    block = text.split("## Using the command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    usage = re.search(rf"python -m kidney_lab {command} (.*?)(?=\npython -m kidney_lab |\Z)", block, re.S)
    assert usage, f"README documents no {command} command"
    return set(re.findall(r"--[a-z][a-z-]*", usage.group(1)))


@pytest.mark.parametrize("command", ["train", "demo"])
def test_the_parser_has_exactly_the_flags_the_readme_documents(command):
    assert _visible_flags(command) == _readme_flags(command)


def test_the_help_shows_the_dataclass_defaults_and_every_choice():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    flattened = " ".join(help_text.split())
    assert "maximum epochs per model; early stopping ends a model sooner when validation loss stops falling (default: 10)" in flattened
    assert "grouped: near-duplicate clusters never straddle train, validation and test (default)" in flattened
    demo_help = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split())
    assert "phantoms per class (default: 400)" in demo_help and "demo recipe" in demo_help


def test_choices_name_exactly_what_their_owners_implement():
    from kidney_lab.data import split as split_module
    from kidney_lab.models import registry
    from kidney_lab.training import distribute

    assert set(config.SPLIT_NOTES) == set(split_module.STRATEGIES)
    assert set(config.WEIGHTS_NOTES) == set(registry.WEIGHTS_CHOICES)
    assert set(config.STRATEGY_NOTES) == set(distribute.STRATEGIES)


def test_settings_survive_the_command_line_both_ways(tmp_path):
    settings = config.TrainConfig(
        data=tmp_path, models=("resnet50", "vit"), epochs=3, image_size=64, split="random", weights="none",
        batch_size=4, learning_rate=0.01, lr_schedule="cosine", augmentation=False, seed=7, val_fraction=0.2,
        test_fraction=0.1, patience=2, mixed_precision=False, xla=True, strategy="one",
    )
    values = {name: getattr(settings, name) for name, _ in config.options(config.TrainConfig)}
    arguments = cli.build_parser().parse_args(["train", *config.to_arguments(config.TrainConfig, values)])
    assert config.from_arguments(config.TrainConfig, arguments) == settings

    demo = config.DemoSettings(per_class=3, image_size=48, seed=2, models=("vit",), epochs=1, parallel=False)
    from kidney_lab import demo as demo_module

    arguments = cli.build_parser().parse_args(["demo", *demo_module.demo_arguments(demo)])
    assert config.from_arguments(config.DemoSettings, arguments) == demo


def test_flags_left_out_keep_the_dataclass_defaults(tmp_path):
    arguments = cli.build_parser().parse_args(["train", "--data", str(tmp_path)])
    assert config.from_arguments(config.TrainConfig, arguments) == config.TrainConfig(data=tmp_path)
    assert config.from_arguments(config.DemoSettings, cli.build_parser().parse_args(["demo"])) == config.DemoSettings()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "--epochs must be a whole number from 1 to 1000; got 0"),
        (["--batch-size", "5000"], "--batch-size must be a whole number from 1 to 1024"),
        (["--lr", "2"], "The learning rate (--lr) must be a number from 1e-06 to 1"),
        (["--seed", "-1"], "--seed must be a whole number of at least 0"),
    ],
)
def test_values_out_of_bounds_fail_in_one_line(tmp_path, capsys, arguments, message):
    code = cli.main(["train", "--data", str(tmp_path), *arguments])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILURE and message in err and len(err.strip().splitlines()) == 1


def test_the_demo_checks_its_own_options_too():
    with pytest.raises(errors.ConfigError, match="--per-class must be a whole number of at least 1"):
        config.DemoSettings(per_class=0)
    with pytest.raises(errors.ConfigError, match="--epochs"):
        config.DemoSettings(epochs=0)


def test_a_demo_option_without_a_demo_field_is_refused_when_the_module_loads():
    option = config.Option(flag="--cv", help="folds", kind="int", demo=True)
    with pytest.raises(TypeError, match="DemoSettings has no field for the demo options --cv"):
        config._check_demo_fields([("cv", option)])


def test_the_page_options_are_those_with_a_label_in_field_order():
    names = [name for name, _ in config.page_options()]
    assert names == ["models", "epochs", "image_size", "split", "weights", "batch_size", "learning_rate",
                     "augmentation", "cv"]


def test_an_option_is_one_field():
    """Adding a field with an Option puts it on the parser, on the page and in the arguments."""

    @dataclasses.dataclass(frozen=True)
    class Extended(config.TrainConfig):
        repeats: int | None = config._option(None, flag="--repeats", kind="int", minimum=2, label="Repeats",
                                             help="repeats of the whole study")

    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Extended)
    assert "repeats of the whole study" in parser.format_help()
    arguments = parser.parse_args(["--data", ".", "--repeats", "5"])
    assert config.from_arguments(Extended, arguments).repeats == 5
    assert config.to_arguments(Extended, {"repeats": 5}) == ["--repeats", "5"]
    assert config.page_options(Extended)[-1][0] == "repeats"
    with pytest.raises(errors.ConfigError, match="--repeats must be a whole number of at least 2"):
        Extended(data=Path("."), repeats=1)


def test_building_the_parser_imports_no_tensorflow():
    code = ("import sys; from kidney_lab import cli; cli.build_parser(); "
            "from kidney_lab.training import config; print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_split_check_says_which_fraction_to_change():
    from kidney_lab.training import engine

    def split_without(subset: str):
        counts = {name: {"Cyst": 3, "Normal": 3, "Stone": 3, "Tumor": 3} for name in ("train", "val", "test")}
        counts[subset]["Stone"] = 0
        return types.SimpleNamespace(counts_per_class=counts, val_fraction=0.15)

    with pytest.raises(errors.SplitError, match=r"The val split has no images of Stone.*larger --val-fraction than 0.15"):
        engine._check_split(split_without("val"))
    with pytest.raises(errors.SplitError, match=r"The train split .* smaller --val-fraction or --test-fraction"):
        engine._check_split(split_without("train"))
    assert "--val-fraction" in _visible_flags("train")
    split_arguments = cli.build_parser().parse_args(["data", "split", ".", "--val-fraction", "0.2"])
    assert split_arguments.val_fraction == 0.2
