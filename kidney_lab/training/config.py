"""The options of ``train`` and ``demo``, declared once: the settings dataclasses and their table.

Every field of :class:`TrainConfig` that a user can set carries an :class:`Option` in its
``dataclasses.field`` metadata: its command-line flag, what it parses, its choices (each with what
it means), its bounds, its help, the Train page's label and whether the demo takes it too. So do
the demo's own fields of :class:`DemoSettings`. Everything else is generated from that one table:

- the ``train`` and ``demo`` sub-parsers (:func:`add_arguments`, with defaults taken from the
  dataclasses, so the help never restates a default),
- the settings of a parsed command line (:func:`from_arguments`),
- the command line that reproduces settings (:func:`to_arguments`: the Train page's job and the
  demo's background job and second process),
- the Train page's form (:func:`page_options`; the page draws one widget per option),
- the checks of every value, in ``__post_init__`` (:func:`check_values`).

Adding an option is adding one field here. A flag the demo takes is a ``TrainConfig`` option
with ``demo=True`` and a ``DemoSettings`` field of the same name (checked when this module loads).

This module imports no TensorFlow, so the command line builds its parser and the Train page its
form without loading a model. The registry is imported when settings are checked.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from kidney_lab import errors

OPTION = "option"  # The key of a field's Option in its dataclasses metadata.

# How an option reads its value from the command line.
KINDS = ("path", "text", "models", "int", "size", "float", "choice", "switch", "off-flag")
# A "switch" option: auto (None: decided at run time), on (True) or off (False).
SWITCH = {"auto": None, "on": True, "off": False}

# How a learning rate changes over a training phase, implemented by kidney_lab.training.engine.
LR_SCHEDULES = {
    "plateau": "halve it when validation loss stalls",
    "cosine": "decay it smoothly to a twentieth over each phase (settles short runs from scratch)",
}
# What each choice means. The sets are owned by the modules that implement them
# (split.STRATEGIES, registry.WEIGHTS_CHOICES, distribute.STRATEGIES); tests/training/test_config.py
# checks that these name exactly those.
SPLIT_NOTES = {
    "grouped": "near-duplicate clusters never straddle train, validation and test",
    "random": "image by image, as in the original study (leaks near-duplicates)",
}
WEIGHTS_NOTES = {
    "auto": "ImageNet weights when they can be downloaded, else random initialisation (run.json records which)",
    "imagenet": "ImageNet weights, or fail without them",
    "none": "random initialisation",
}
STRATEGY_NOTES = {
    "auto": "all GPUs when there are several, else one device",
    "one": "one device",
    "mirrored": "every GPU, or every CPU device without one",
    "multiworker": "several machines running the same command, named by TF_CONFIG",
}
SWITCH_NOTES = {"auto": "on only with a GPU", "on": "always", "off": "never"}


@dataclasses.dataclass(frozen=True)
class Option:
    """How one settings field is set by a user.

    Attributes:
        flag: the command-line flag (``"--epochs"``).
        help: what it does, in a few words, without its default (the dataclass gives that).
        kind: how the value is read (see :data:`KINDS`): ``"int"``, ``"size"`` (an input side in
            pixels, checked against each model too), ``"float"``, ``"choice"`` (one of
            :attr:`choices`), ``"switch"`` (auto/on/off as None/True/False), ``"off-flag"`` (a
            flag that turns a True default off), ``"models"`` (``all`` or comma-separated
            registry names), ``"path"`` or ``"text"``.
        choices: for ``"choice"`` and ``"switch"``: each choice and what it means.
        minimum, maximum: inclusive bounds of a number (None: unbounded).
        noun: how messages name it (default: the flag).
        default_note: what a default of None means, for the help.
        required: the command line must give it.
        hidden: on the command line but not in its help (set by the job runner).
        demo: ``python -m kidney_lab demo`` takes it too (into the ``DemoSettings`` field of
            the same name).
        demo_help: the demo's help, where it means something else there.
        label: the Train page's label; None keeps it off the page.
        step, number_format: the Train page's number input step and display format.
    """

    flag: str
    help: str
    kind: str
    choices: Mapping[str, str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    noun: str | None = None
    default_note: str | None = None
    required: bool = False
    hidden: bool = False
    demo: bool = False
    demo_help: str | None = None
    label: str | None = None
    step: float | None = None
    number_format: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Option {self.flag}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if (self.choices is not None) != (self.kind in ("choice", "switch")):
            raise ValueError(f"Option {self.flag}: choices go with kind 'choice' or 'switch' only.")

    @property
    def name(self) -> str:
        """How messages name the option."""
        return self.noun or self.flag


def _option(default: Any = dataclasses.MISSING, **attributes: Any) -> Any:
    """A dataclass field with default ``default`` and its :class:`Option`."""
    return dataclasses.field(default=default, metadata={OPTION: Option(**attributes)})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train and how (``python -m kidney_lab train``; each field's flag is in its Option).

    Attributes:
        data: the dataset folder (Kaggle layout, or any folder above it).
        models: registry names, trained one after the other on the same split; ``"all"`` or a
            comma-separated string is read as on the command line. Registry names afterwards.
        epochs: maximum epochs per model (early stopping may end sooner).
        image_size: input side in pixels for every model; None gives each model its default.
        split: ``"grouped"`` (near-duplicate clusters never straddle subsets) or ``"random"``.
        weights: ``"auto"``, ``"imagenet"`` or ``"none"`` (see :func:`kidney_lab.models.builders.create_model`).
        batch_size: images per batch on each replica.
        learning_rate: Adam's learning rate (of the head phase, with pretrained weights).
        lr_schedule: ``"plateau"`` or ``"cosine"`` (see :data:`LR_SCHEDULES`).
        augmentation: random flips, rotations, zoom, brightness and contrast while training.
        seed: seeds Python, NumPy and TensorFlow, the split and the augmentation.
        val_fraction, test_fraction: shares of the images for validation and test (the split is
            the one ``data split`` makes with the same fractions and seed).
        patience: epochs without a lower validation loss before early stopping.
        head_epochs: with pretrained weights, epochs of the head phase (default a third).
        batchnorm_momentum: momentum of BatchNormalization layers (it matters only from scratch).
        mixed_precision: float16 compute (head in float32); None turns it on only on a GPU.
        xla: compile training steps with XLA; None turns it on only on a GPU.
        strategy: ``auto``, ``one``, ``mirrored`` or ``multiworker`` (see
            :mod:`kidney_lab.training.distribute`).
        workspace: where runs go; None means :func:`workspace.default_workspace`.
        study_id: use this study id (the job runner passes one) instead of a new one.
        cache_images: keep decoded, resized images in memory after the first epoch.
        cv: K of a grouped K-fold cross-validation (:mod:`kidney_lab.data.folds`); None trains
            on one split.
        fold: with ``cv``, train only this fold (0-based); None trains every fold.

    Raises:
        kidney_lab.errors.ConfigError: a value out of its bounds or choices, an unknown model,
            an image size a model cannot take, or multiworker without a usable ``TF_CONFIG``.
    """

    data: Path = _option(flag="--data", kind="path", required=True,
                         help="dataset folder (Kaggle layout, or a folder above it)")
    models: tuple[str, ...] = _option(
        "all", flag="--models", kind="models", demo=True, label="Models",
        help="all, or comma-separated registry names, listed by the models command")
    epochs: int = _option(
        10, flag="--epochs", kind="int", minimum=1, maximum=1000, demo=True, label="Epochs (at most)", step=1,
        help="maximum epochs per model; early stopping ends a model sooner when validation loss stops falling",
        demo_help="epochs of every model (default: each model's demo recipe, in the registry)")
    image_size: int | None = _option(
        None, flag="--img-size", kind="size", minimum=1, maximum=2048, label="Image size (pixels)", step=16,
        help="input side in pixels of every model", default_note="each model's own, listed by the models command")
    split: str = _option("grouped", flag="--split", kind="choice", choices=SPLIT_NOTES, noun="split",
                         label="Split", help="how the images are split")
    weights: str = _option("auto", flag="--weights", kind="choice", choices=WEIGHTS_NOTES, noun="weights",
                           label="Weights", help="initial weights")
    batch_size: int = _option(32, flag="--batch-size", kind="int", minimum=1, maximum=1024, label="Batch size",
                              step=1, help="images per batch and device")
    learning_rate: float = _option(
        1e-3, flag="--lr", kind="float", minimum=1e-6, maximum=1.0, noun="The learning rate (--lr)",
        label="Learning rate", step=1e-4, number_format="%.6f",
        help="Adam's learning rate (of the head, with ImageNet weights)")
    lr_schedule: str = _option("plateau", flag="--lr-schedule", kind="choice", choices=LR_SCHEDULES,
                               noun="learning-rate schedule", help="how the learning rate changes")
    augmentation: bool = _option(
        True, flag="--no-augmentation", kind="off-flag",
        label="Augmentation: random flips, rotations, zoom, brightness and contrast",
        help="train without random flips, rotations, zoom, brightness and contrast")
    seed: int = _option(0, flag="--seed", kind="int", minimum=0, demo=True,
                        help="random seed of split, initialisation and augmentation",
                        demo_help="random seed of the phantoms, split and initialisation")
    val_fraction: float = _option(0.15, flag="--val-fraction", kind="float",
                                  help="share of the images for validation (as in data split)")
    test_fraction: float = _option(0.15, flag="--test-fraction", kind="float",
                                   help="share of the images for test (as in data split)")
    patience: int = _option(5, flag="--patience", kind="int", minimum=1, help="early-stopping patience in epochs")
    cv: int | None = _option(
        None, flag="--cv", kind="int", minimum=2, maximum=20, label="Cross-validation folds (K)", step=1,
        help="grouped K-fold cross-validation: train every model K times, each fold holding out whole "
             "near-duplicate clusters (roughly CT series), stratified by class; 5 is usual",
        default_note="no cross-validation: one grouped or random split")
    fold: int | None = _option(
        None, flag="--fold", kind="int", minimum=0, maximum=19,
        help="with --cv: train only this fold (0-based), so that folds can be spread over machines; "
             "the pooled result assembles when every fold exists",
        default_note="every fold")
    head_epochs: int | None = None
    batchnorm_momentum: float = 0.9
    mixed_precision: bool | None = _option(None, flag="--mixed-precision", kind="switch", choices=SWITCH_NOTES,
                                           help="float16 compute")
    xla: bool | None = _option(None, flag="--xla", kind="switch", choices=SWITCH_NOTES, help="XLA compilation")
    strategy: str = _option("auto", flag="--strategy", kind="choice", choices=STRATEGY_NOTES, noun="strategy",
                            help="which devices train")
    workspace: Path | None = None
    study_id: str | None = _option(None, flag="--study-id", kind="text", hidden=True, help="the job's study id")
    cache_images: bool = True

    def __post_init__(self) -> None:
        from kidney_lab import runs
        from kidney_lab.models import registry

        if isinstance(self.models, str):
            object.__setattr__(self, "models", tuple(registry.parse_model_names(self.models)))
        names = [registry.get_spec(name).name for name in self.models]
        if not names:
            raise errors.ConfigError("Name at least one model to train.")
        object.__setattr__(self, "models", tuple(dict.fromkeys(names)))
        check_values(self)
        if self.head_epochs is not None:
            _check_number(Option(flag="head_epochs", help="", kind="int", minimum=1), self.head_epochs)
        if self.image_size is not None:
            for name in self.models:
                registry.get_spec(name).check_size(self.image_size)
        if not 0 < self.batchnorm_momentum < 1:
            raise errors.ConfigError(f"batchnorm_momentum must be between 0 and 1; got {self.batchnorm_momentum}.")
        if self.strategy == "multiworker":
            # It reads TF_CONFIG; imported only here because it imports TensorFlow.
            from kidney_lab.training import distribute

            distribute.check_strategy_name(self.strategy)
        if self.fold is not None and self.cv is None:
            raise errors.ConfigError("--fold picks one fold of a cross-validation; give --cv K with it.")
        if self.fold is not None and self.fold >= self.cv:
            raise errors.ConfigError(
                f"--fold {self.fold} does not exist with --cv {self.cv}; folds are numbered 0 to {self.cv - 1}."
            )
        if self.cv is not None and self.split == "random":
            raise errors.ConfigError(
                "--cv holds out whole near-duplicate clusters, so it cannot use --split random; "
                "leave --split out (cross-validation folds are always grouped)."
            )
        if self.study_id is not None and not runs.STUDY_ID_PATTERN.fullmatch(self.study_id):
            raise errors.ConfigError(f"{self.study_id!r} is not a study id (like study-20260101-120000-ab12).")

    def size_for(self, name: str) -> int:
        """The input side used for model ``name``."""
        from kidney_lab.models import registry

        return self.image_size or registry.get_spec(name).default_size

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (paths as strings)."""
        values = dataclasses.asdict(self)
        values["data"] = str(self.data)
        values["workspace"] = None if self.workspace is None else str(self.workspace)
        values["models"] = list(self.models)
        return values


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo draws and how it trains (``python -m kidney_lab demo``; defaults: the shipped demo).

    Its flags are the Options of its own fields and the ``TrainConfig`` options with ``demo=True``
    (seed, models, epochs), in field order.

    Attributes:
        per_class: phantoms per class.
        image_size: phantom side and model input side, in pixels (see :meth:`input_size`).
        seed: phantoms, split and initialisation.
        models: registry names to train (``"all"`` or a comma-separated string is read as on
            the command line).
        epochs: epochs of every model; None uses each model's ``demo_epochs`` in the registry.
        parallel: train each demo lane of the registry (``ModelSpec.demo_lane``) in its own
            process, all at once (off: one after the other in this process).
        faithfulness_images: after training, how many of each model's test phantoms its heat maps
            are scored on (:func:`kidney_lab.demo.measure_faithfulness`: the pointing game of
            the gradient methods, as ``explain-eval --no-curves`` stores it), so every demo run
            has its faithfulness caption on the Compare page; 0 skips it.
        field_of_view: ``"kidneys"`` (lesions large enough to learn in a minute) or
            ``"abdomen"``.
        batch_size: images per training step; small batches mean more steps per image, which
            is what a model trained from scratch in a minute needs.
        learning_rate: Adam's starting learning rate of every model, decayed along a cosine;
            None uses each model's ``demo_learning_rate`` in the registry.
        augmentation: random flips, rotations, zoom, brightness and contrast while training
            (off: with fresh phantoms there is no overfitting to fight, and it slowed learning).

    Raises:
        kidney_lab.errors.ConfigError: a value out of its bounds, or an unknown model.
    """

    per_class: int = _option(400, flag="--per-class", kind="int", minimum=1, help="phantoms per class")
    image_size: int = _option(96, flag="--size", kind="int", minimum=1, help="phantom and model input side in pixels")
    seed: int = 0
    models: tuple[str, ...] = "all"  # type: ignore[assignment]  # Read in __post_init__.
    epochs: int | None = None
    parallel: bool = _option(
        True, flag="--one-process", kind="off-flag",
        help="train the models one after the other in this process (default: each demo lane in its own process, at once)")
    faithfulness_images: int = 40
    field_of_view: str = "kidneys"
    batch_size: int = 16
    learning_rate: float | None = None
    augmentation: bool = False

    def __post_init__(self) -> None:
        from kidney_lab.models import registry

        if isinstance(self.models, str):
            object.__setattr__(self, "models", tuple(registry.parse_model_names(self.models)))
        check_values(self)

    def input_size(self, name: str) -> int:
        """Model input side of model ``name``, in pixels: the phantoms' side, or the registry's
        ``min_cam_size`` where that is larger (the pipeline resizes the phantoms up to it).

        Only InceptionV3 needs it at 96 px: its CAM layer would be 1x1 there, every map flat.
        Measured on the demo phantoms: test accuracy 0.938 at 96 px against 1.000 at 139 px,
        training alone 72 s against 139 s; the pointing game is in the README ("Heat maps").
        """
        from kidney_lab.models import registry

        return max(self.image_size, registry.get_spec(name).min_cam_size)

    def recipe(self, name: str) -> tuple[int, float]:
        """Epochs and learning rate of model ``name``: these settings', else its registry recipe."""
        from kidney_lab.models import registry

        spec = registry.get_spec(name)
        return (self.epochs or spec.demo_epochs, self.learning_rate or spec.demo_learning_rate)


def options(settings_class: type) -> list[tuple[str, Option]]:
    """``(field name, option)`` of every option of ``settings_class``, in field order.

    For :class:`DemoSettings`: its own options and the ``TrainConfig`` options with ``demo=True``.
    """
    shared = {}
    if issubclass(settings_class, DemoSettings):
        shared = {name: option for name, option in options(TrainConfig) if option.demo}
    found = []
    for field in dataclasses.fields(settings_class):
        option = field.metadata.get(OPTION) or shared.get(field.name)
        if option is not None:
            found.append((field.name, option))
    return found


def page_options(settings_class: type = TrainConfig) -> list[tuple[str, Option]]:
    """The options the Train page draws (those with a label), in field order."""
    return [(name, option) for name, option in options(settings_class) if option.label is not None]


def default(settings_class: type, name: str) -> Any:
    """The default of field ``name`` of ``settings_class``."""
    return next(field.default for field in dataclasses.fields(settings_class) if field.name == name)


def help_text(option: Option, default_value: Any, demo: bool = False) -> str:
    """The command-line help of ``option`` whose default is ``default_value``."""
    text = option.demo_help if demo and option.demo_help else option.help
    if option.choices is not None:
        shown = {value: key for key, value in SWITCH.items()}.get(default_value) if option.kind == "switch" else default_value
        text += "; " + "; ".join(f"{choice}: {note}" + (" (default)" if choice == shown else "")
                                 for choice, note in option.choices.items())
    elif option.kind != "off-flag" and default_value is not dataclasses.MISSING:
        if default_value is not None:
            text += f" (default: {default_value})"
        elif option.default_note and not demo:
            text += f" (default: {option.default_note})"
    return text.replace("%", "%%")  # argparse formats help with %.


def add_arguments(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """Add a flag for every option of ``settings_class`` to ``parser``.

    Every flag's argparse default is None, meaning "not given": :func:`from_arguments` then leaves
    the dataclass default, the one the help shows.
    """
    demo = issubclass(settings_class, DemoSettings)
    for name, option in options(settings_class):
        settings: dict[str, Any] = {
            "dest": name, "default": None,
            "help": argparse.SUPPRESS if option.hidden else help_text(option, default(settings_class, name), demo),
        }
        if option.kind == "off-flag":
            settings["action"] = "store_false"
        else:
            settings["metavar"] = option.flag.lstrip("-").upper().replace("-", "_")
            settings["type"] = {"path": Path, "int": int, "size": int, "float": float}.get(option.kind, str)
        if option.choices is not None:
            settings["choices"] = tuple(option.choices)
            settings["metavar"] = "|".join(option.choices)
        if option.required:
            settings["required"] = True
        parser.add_argument(option.flag, **settings)


def from_arguments(settings_class: type, arguments: argparse.Namespace, **extra: Any) -> Any:
    """The settings of a command line parsed by :func:`add_arguments`, plus ``extra`` fields.

    Raises:
        kidney_lab.errors.ConfigError: as the settings class does.
    """
    values: dict[str, Any] = {}
    for name, option in options(settings_class):
        given = getattr(arguments, name)
        if given is not None:
            values[name] = SWITCH[given] if option.kind == "switch" else given
    return settings_class(**values, **extra)


def to_arguments(settings_class: type, values: Mapping[str, Any]) -> list[str]:
    """The flags that set ``values`` (field name -> value) of ``settings_class``'s options.

    Fields absent from ``values`` or None are left out (the command's default applies), as are
    hidden flags; an off-flag appears only when its value is False.
    """
    arguments: list[str] = []
    for name, option in options(settings_class):
        value = values.get(name)
        if value is None or option.hidden:
            continue
        if option.kind == "off-flag":
            arguments += [] if value else [option.flag]
            continue
        if option.kind == "switch":
            text = next(key for key, switch in SWITCH.items() if switch is value)
        elif option.kind == "models":
            text = value if isinstance(value, str) else ",".join(value)
        elif option.kind == "float":
            text = repr(float(value))
        elif option.kind in ("int", "size"):
            text = str(int(value))
        else:
            text = str(value)
        arguments += [option.flag, text]
    return arguments


def check_values(settings: Any) -> None:
    """Check every option's value of ``settings`` against its kind, bounds and choices.

    Raises:
        kidney_lab.errors.ConfigError: the first value out of bounds or choices, naming its flag.
    """
    for name, option in options(type(settings)):
        value = getattr(settings, name)
        if value is None:
            continue
        if option.kind in ("int", "size", "float"):
            _check_number(option, value)
        elif option.kind == "choice" and value not in option.choices:
            raise errors.ConfigError(
                f"Unknown {option.name} {value!r}; use one of {', '.join(option.choices)}.")
        elif option.kind in ("switch", "off-flag") and not isinstance(value, bool):
            raise errors.ConfigError(f"{option.name} must be True or False; got {value!r}.")


def _check_number(option: Option, value: Any) -> None:
    whole = option.kind in ("int", "size")
    number_type = int if whole else (int, float)
    low = -float("inf") if option.minimum is None else option.minimum
    high = float("inf") if option.maximum is None else option.maximum
    if isinstance(value, bool) or not isinstance(value, number_type) or not low <= value <= high:
        what = "a whole number" if whole else "a number"
        if option.minimum is not None and option.maximum is not None:
            what += f" from {option.minimum:g} to {option.maximum:g}"
        elif option.minimum is not None:
            what += f" of at least {option.minimum:g}"
        raise errors.ConfigError(f"{option.name} must be {what}; got {value!r}.")


def _check_demo_fields(train_options: Sequence[tuple[str, Option]]) -> None:
    """Every ``TrainConfig`` option the demo takes has a ``DemoSettings`` field to land in."""
    fields = {field.name for field in dataclasses.fields(DemoSettings)}
    missing = [option.flag for name, option in train_options if option.demo and name not in fields]
    if missing:
        raise TypeError(f"DemoSettings has no field for the demo options {', '.join(missing)}.")


_check_demo_fields(options(TrainConfig))
