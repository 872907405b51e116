"""The built-in demo: phantoms in the workspace and all five models trained on them.

``python -m kidney_lab demo`` (and the app's Home page) gives a first-time user a complete study
without any download: it draws CT-like phantoms zoomed onto the kidneys (see
:data:`kidney_lab.data.phantom.FIELDS_OF_VIEW`), splits them by near-duplicate cluster, and trains
every registry model from random initialisation at a small size, in two processes that each
train one lane of models in turn (:data:`LANES`), each model then evaluated on the held-out test
phantoms. The settings below were chosen so that every model
learns the phantoms in as little time as two CPU cores allow; the README lists what they
reached and how long it took.

The app builds the demo as a background job (:func:`start_demo_job`): the same command in its own
process, so it survives the page, and its progress is read from the runs' ``status.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data import phantom
from kidney_lab.models import registry
from kidney_lab.training import engine
from kidney_lab.training import jobs


# Epochs and Adam's starting learning rate per model, decayed along a cosine. Measured on the
# demo phantoms (400 per class, 96 px, batch 16) on two CPU cores: at 1e-3 for 4 epochs
# ResNet50, InceptionV3 and the ViT reached 98-100% test accuracy, while MobileNetV2 stayed at
# 81% and EfficientNetB0 at 82%; MobileNetV2 reached 100% at 3e-3 and EfficientNetB0 94% at
# 6e-3 (83% at 3e-3 for 3 epochs). ResNet50 reached 96% in 2 epochs, InceptionV3 only 87%.
RECIPES: dict[str, tuple[int, float]] = {
    "efficientnetb0": (4, 6e-3),
    "mobilenetv2": (3, 3e-3),
    "resnet50": (2, 1e-3),
    "inceptionv3": (3, 1e-3),
    "vit": (3, 1e-3),
}

# The demo trains in two processes at once, each taking one lane of models in turn. About half
# of a CNN's time here is tracing its training step, which is Python on one core; two processes
# overlap one's tracing with the other's training. Measured on two idle cores (the command's
# "Demo finished in"): 265 s for the five models with these lanes; with InceptionV3 at 96 px,
# 253 s against 358 s one after the other, with the same test accuracies (same seeds).
# The lanes balance the models' training times of one-at-a-time runs (ResNet50 109 s,
# EfficientNetB0 86 s, InceptionV3 139 s at 139 px, MobileNetV2 48 s, ViT 10 s).
LANES: tuple[tuple[str, ...], ...] = (
    ("resnet50", "efficientnetb0"),
    ("mobilenetv2", "inceptionv3", "vit"),
)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo draws and how it trains (defaults: the shipped demo).

    Attributes:
        per_class: phantoms per class.
        image_size: phantom side and model input side, in pixels (see :meth:`input_size`).
        field_of_view: ``"kidneys"`` (lesions large enough to learn in a minute) or
            ``"abdomen"``.
        epochs: epochs of every model; None uses each model's entry in :data:`RECIPES`.
        batch_size: images per training step; small batches mean more steps per image, which
            is what a model trained from scratch in a minute needs.
        learning_rate: Adam's starting learning rate of every model, decayed along a cosine;
            None uses :data:`RECIPES`.
        seed: phantoms, split and initialisation.
        augmentation: random flips, rotations, zoom, brightness and contrast while training
            (off: with fresh phantoms there is no overfitting to fight, and it slowed learning).
        models: registry names to train.
        parallel: train the models of :data:`LANES` in two processes at once (off: one after
            the other in this process).
    """

    per_class: int = 400
    image_size: int = 96
    field_of_view: str = "kidneys"
    epochs: int | None = None
    batch_size: int = 16
    learning_rate: float | None = None
    seed: int = 0
    augmentation: bool = False
    models: tuple[str, ...] = registry.MODEL_NAMES
    parallel: bool = True

    def input_size(self, name: str) -> int:
        """Model input side of model ``name``, in pixels: the phantoms' side, or the registry's
        ``min_cam_size`` where that is larger (the pipeline resizes the phantoms up to it).

        Only InceptionV3 needs it at 96 px: its CAM layer would be 1x1 there, every map flat.
        Measured on the demo phantoms: test accuracy 0.938 at 96 px against 1.000 at 139 px,
        training alone 72 s against 139 s; the pointing game is in the README ("Heat maps").
        """
        return max(self.image_size, registry.get_spec(name).min_cam_size)

    def recipe(self, name: str) -> tuple[int, float]:
        """Epochs and learning rate of model ``name``."""
        epochs, rate = RECIPES[name]
        return (self.epochs or epochs, self.learning_rate or rate)


def prepare_data(settings: DemoSettings, workspace: Path) -> Path:
    """Write the demo phantoms into the workspace, or reuse them if they are already there.

    Returns:
        The dataset folder (the one holding the class folders).
    """
    out = workspace / workspace_module.DEMO_DATA_FOLDER
    wanted = {
        "generator_version": phantom.GENERATOR_VERSION,
        "per_class": settings.per_class,
        "size": settings.image_size,
        "seed": settings.seed,
        "field_of_view": settings.field_of_view,
    }
    parameters = out / phantom.PARAMETERS_FILE_NAME
    if parameters.is_file():
        try:
            stored = fileio.read_json(parameters)
        except (OSError, ValueError):
            stored = {}
        if all(stored.get(key) == value for key, value in wanted.items()):
            return out / stored["dataset_folder"]
    return phantom.write_phantom_dataset(
        out,
        settings.per_class,
        size=settings.image_size,
        seed=settings.seed,
        field_of_view=settings.field_of_view,
    )


def train_config(
    settings: DemoSettings, name: str, data: Path, workspace: Path, study_id: str
) -> engine.TrainConfig:
    """The training settings of model ``name`` in the demo study."""
    epochs, rate = settings.recipe(name)
    return engine.TrainConfig(
        data=data,
        models=(name,),
        epochs=epochs,
        image_size=settings.input_size(name),
        split="grouped",
        weights="none",
        batch_size=settings.batch_size,
        learning_rate=rate,
        lr_schedule="cosine",
        augmentation=settings.augmentation,
        seed=settings.seed,
        patience=epochs,
        workspace=workspace,
        study_id=study_id,
    )


def run_demo(
    settings: DemoSettings | None = None,
    workspace: str | Path | None = None,
    listener: engine.Listener | None = None,
    study_id: str | None = None,
    *,
    take_lock: bool = True,
) -> engine.TrainResult:
    """Build the demo study: phantoms, split, and every model trained and evaluated.

    Each model is trained with its recipe, into one study. With ``settings.parallel`` the
    models of the second lane of :data:`LANES` train in a second process (the same command,
    its output beside this one's) while this one trains the first lane; both hold the
    workspace's training lock through this process. Running it again after it was interrupted
    resumes the unfinished study (models already completed are kept); after it finished, it
    trains a new study. A given ``study_id`` is used instead: its completed demo runs are kept
    and the other models are trained into it.

    Args:
        take_lock: False only for the second process, whose parent holds the lock.

    Raises:
        kidney_lab.errors.KidneyLabError: the workspace cannot be written, or the second
            process ended without training its models (run the demo again to resume them).
    """
    settings = settings or DemoSettings()
    folder = workspace_module.prepare_workspace(workspace)
    data = prepare_data(settings, folder)
    if study_id is None:
        study_id, completed = _unfinished_study(folder, settings)
    else:
        completed = _completed_by_model(demo_studies(folder).get(study_id, []))
    todo = [name for name in settings.models if name not in completed]
    lanes = [[name for name in lane if name in todo] for lane in LANES] if settings.parallel else [todo]
    lanes = [lane for lane in lanes if lane] or [[]]
    lock = (jobs.training_lock(folder, on_wait=lambda: print(
        "Waiting for another training job in this workspace to finish ...", file=sys.stderr, flush=True))
        if take_lock else contextlib.nullcontext())
    split_id = ""
    with lock:
        helper = _start_lane(settings, lanes[1], folder, study_id) if len(lanes) > 1 else None
        try:
            for name in lanes[0]:
                result = engine.train(train_config(settings, name, data, folder, study_id),
                                      listener=listener, take_lock=False)
                split_id = result.split_id
                if any(outcome.status == runs.CANCELLED for outcome in result.runs):
                    break
        finally:
            if helper is not None:
                helper.wait()
    studies = demo_studies(folder).get(study_id, [])
    newest = {}
    for record in studies:  # Newest first: keep each model's newest run.
        newest.setdefault(record.model, record)
    # A model completed before this call keeps that run; the others report their newest run.
    chosen = {**newest, **completed}
    outcomes = [_outcome(chosen[name]) for name in settings.models if name in chosen]
    lost = [name for name in todo if name not in chosen]
    cancelled = any(outcome.status == runs.CANCELLED for outcome in outcomes)
    if helper is not None and lost and not cancelled:
        raise errors.KidneyLabError(
            f"The second demo process ended (exit status {helper.returncode}) before training "
            f"{', '.join(lost)}; run the demo again to train them into the same study."
        )
    split_id = split_id or next((str(record.info.get("split_id", "")) for record in studies), "")
    return engine.TrainResult(study_id=study_id, split_id=split_id, runs=tuple(outcomes))


def _outcome(record: runs.RunRecord) -> engine.RunOutcome:
    """A run of the study as :func:`kidney_lab.training.engine.train` reports it."""
    metrics = None
    if record.state == runs.COMPLETED:
        with contextlib.suppress(OSError, ValueError):
            metrics = fileio.read_json(record.path / runs.METRICS_FILE)
    return engine.RunOutcome(record.run_id, str(record.model), record.path, record.state,
                             error=record.status.get("error"), metrics=metrics)


def _start_lane(settings: DemoSettings, models: list[str], workspace: Path, study_id: str) -> subprocess.Popen[bytes]:
    """Start ``python -m kidney_lab demo`` for ``models`` of the study, under this process's lock.

    It stays in this process's group, so cancelling the demo job (SIGTERM to the group) or
    Ctrl+C stops both; on Linux it is also sent SIGTERM if this process dies first.
    """
    arguments = [sys.executable, "-m", "kidney_lab", "demo", *demo_arguments(
        dataclasses.replace(settings, models=tuple(models))), "--workspace", str(workspace),
        "--study-id", study_id, "--inside-demo"]
    return subprocess.Popen(arguments, env=jobs.child_environment(),
                            preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None)


def _stop_with_parent() -> None:
    """In the child before it runs: ask Linux for SIGTERM when the parent dies (prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _unfinished_study(workspace: Path, settings: DemoSettings) -> tuple[str, dict[str, runs.RunRecord]]:
    """The newest demo study with models still to train, and its completed runs by model."""
    for study_id, records in demo_studies(workspace).items():
        done = _completed_by_model(records)
        if set(settings.models) - set(done):
            return study_id, done
        break
    return runs.new_study_id(), {}


def _completed_by_model(records: list[runs.RunRecord]) -> dict[str, runs.RunRecord]:
    """The completed runs among ``records``, by registry name."""
    return {record.model: record for record in records if record.state == runs.COMPLETED}


def demo_studies(workspace: str | Path | None = None) -> dict[str, list[runs.RunRecord]]:
    """Runs trained on the workspace's demo phantoms, by study id (newest study first)."""
    folder = Path(workspace) if workspace is not None else workspace_module.default_workspace()
    demo_root = str((folder / workspace_module.DEMO_DATA_FOLDER).resolve())
    studies: dict[str, list[runs.RunRecord]] = {}
    for record in runs.list_runs(folder):
        data_root = str(record.info.get("data_root", ""))
        if record.study_id and data_root.startswith(demo_root):
            studies.setdefault(record.study_id, []).append(record)
    return studies


def summary(result: engine.TrainResult) -> dict[str, Any]:
    """Test accuracy and training seconds per model, from the stored run files."""
    rows = {}
    for outcome in result.runs:
        info = runs.read_run(outcome.path).info
        rows[outcome.model] = {
            "status": outcome.status,
            "test_accuracy": (outcome.metrics or {}).get("accuracy"),
            "train_seconds": info.get("train_seconds"),
        }
    return rows


def demo_arguments(settings: DemoSettings) -> list[str]:
    """The ``python -m kidney_lab demo`` arguments that reproduce ``settings``.

    Raises:
        kidney_lab.errors.ConfigError: ``settings`` changes a field the command line has no
            option for (field of view, batch size, learning rate, augmentation).
    """
    arguments = [
        "--per-class", str(settings.per_class), "--size", str(settings.image_size),
        "--seed", str(settings.seed), "--models", ",".join(settings.models),
    ]
    if settings.epochs is not None:
        arguments += ["--epochs", str(settings.epochs)]
    if not settings.parallel:
        arguments.append("--one-process")
    expressible = DemoSettings(
        per_class=settings.per_class, image_size=settings.image_size, epochs=settings.epochs,
        seed=settings.seed, models=settings.models, parallel=settings.parallel,
    )
    if expressible != settings:
        raise errors.ConfigError(
            "A background demo job takes only the phantoms per class, size, epochs, seed and "
            "models; run kidney_lab.demo.run_demo directly for other settings."
        )
    return arguments


def start_demo_job(
    workspace: str | Path | None = None,
    settings: DemoSettings | None = None,
    python: str = sys.executable,
) -> jobs.JobRecord:
    """Start ``python -m kidney_lab demo`` as a background job (see :mod:`kidney_lab.training.jobs`).

    The job continues the newest unfinished demo study if there is one, else it starts a new
    study; either way its ``study_id`` is the study its runs carry, and ``job.json`` lists the
    models it trains (``models``, with their ``display_names``), so progress per model is read
    from those runs' status files. The runs of models not reached yet do not exist until their turn.

    Returns:
        The job's record.

    Raises:
        kidney_lab.training.jobs.JobError: a demo job is already running in this workspace, or
            the process cannot be started.
        kidney_lab.errors.ConfigError: ``settings`` the command line cannot express.
        kidney_lab.workspace.WorkspaceError: the workspace cannot be written.
    """
    settings = settings or DemoSettings()
    arguments = demo_arguments(settings)
    folder = workspace_module.prepare_workspace(workspace)
    running = [job for job in jobs.list_jobs(folder, active_only=True) if job.kind == "demo"]
    if running:
        raise jobs.JobError(
            f"The demo study is already being built by job {running[0].job_id}; wait for it or "
            "cancel it first."
        )
    study_id, _ = _unfinished_study(folder, settings)
    return jobs.start_job(
        arguments, folder, python, kind="demo", study_id=study_id,
        details={
            "models": list(settings.models),
            "display_names": {name: registry.get_spec(name).display_name for name in settings.models},
        },
    )
