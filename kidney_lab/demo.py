"""The built-in demo: phantoms in the workspace and every registry model trained on them.

``python -m kidney_lab demo`` (and the app's Home page) gives a first-time user a complete study
without any download: it draws CT-like phantoms zoomed onto the kidneys (see
:data:`kidney_lab.data.phantom.FIELDS_OF_VIEW`), splits them by near-duplicate cluster, and trains
every registry model from random initialisation at a small size, one process per demo lane
(:func:`lanes`) each training its models in turn, each model then evaluated on the held-out test
phantoms, and its heat maps scored on some of them (:func:`measure_faithfulness`, so the Compare
page can say how often each model's maps hit the lesion). Its settings (:class:`kidney_lab.training.config.DemoSettings`, whose fields also make
the command's flags) and each model's recipe and lane (``demo_*`` in the registry) were chosen so
that every model learns the phantoms in as little time as two CPU cores allow; the README lists
what they reached and how long it took.

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
from typing import Any, Sequence

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab import workspace as workspace_module
from kidney_lab.data import phantom
from kidney_lab.models import registry
from kidney_lab.training import config
from kidney_lab.training import engine
from kidney_lab.training import jobs


# The methods the demo scores after training: the gradient methods (Score-CAM needs a forward
# pass per channel, minutes per model on two cores).
FAITHFULNESS_METHODS = ("gradcam", "gradcam++", "layercam")


def lanes(models: Sequence[str] | None = None) -> tuple[tuple[str, ...], ...]:
    """The demo's lanes of ``models`` (default: every registry model), from the registry.

    Each lane is trained by its own process, all at once, its models one after the other: a
    model's ``ModelSpec.demo_lane`` says which lane, its ``demo_turn`` when. About half of a
    CNN's time here is tracing its training step, which is Python on one core; two processes
    overlap one's tracing with the other's training. Measured on two idle cores (the command's
    "Demo finished in"): 265 s for the five models in the registry's two lanes; with InceptionV3
    at 96 px, 253 s against 358 s one after the other, with the same test accuracies (same seeds).
    Lanes without any of ``models`` are left out.
    """
    specs = [registry.get_spec(name) for name in (registry.MODEL_NAMES if models is None else models)]
    found: dict[int, list[registry.ModelSpec]] = {}
    for spec in specs:
        found.setdefault(spec.demo_lane, []).append(spec)
    return tuple(
        tuple(spec.name for spec in sorted(found[lane], key=lambda spec: spec.demo_turn)) for lane in sorted(found)
    )


def prepare_data(settings: config.DemoSettings, workspace: Path) -> Path:
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
    settings: config.DemoSettings, name: str, data: Path, workspace: Path, study_id: str
) -> config.TrainConfig:
    """The training settings of model ``name`` in the demo study."""
    epochs, rate = settings.recipe(name)
    return config.TrainConfig(
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
    settings: config.DemoSettings | None = None,
    workspace: str | Path | None = None,
    listener: engine.Listener | None = None,
    study_id: str | None = None,
    *,
    take_lock: bool = True,
) -> engine.TrainResult:
    """Build the demo study: phantoms, split, and every model trained and evaluated.

    Each model is trained with its recipe, into one study. With ``settings.parallel`` the
    models of every lane but the first (:func:`lanes`) train in a process of their own (the same
    command, its output beside this one's) while this one trains the first lane; all hold the
    workspace's training lock through this process. Running it again after it was interrupted
    resumes the unfinished study (models already completed are kept); after it finished, it
    trains a new study. A given ``study_id`` is used instead: its completed demo runs are kept
    and the other models are trained into it.

    Args:
        take_lock: False only for a lane's process, whose parent holds the lock.

    Raises:
        kidney_lab.errors.KidneyLabError: the workspace cannot be written, or a lane's
            process ended without training its models (run the demo again to resume them).
    """
    settings = settings or config.DemoSettings()
    folder = workspace_module.prepare_workspace(workspace)
    data = prepare_data(settings, folder)
    if study_id is None:
        study_id, completed = _unfinished_study(folder, settings)
    else:
        completed = _completed_by_model(demo_studies(folder).get(study_id, []))
    todo = [name for name in settings.models if name not in completed]
    lanes_todo = [list(lane) for lane in lanes(todo)] if settings.parallel else [todo]
    lanes_todo = lanes_todo or [[]]
    lock = (jobs.training_lock(folder, on_wait=lambda: print(
        "Waiting for another training job in this workspace to finish ...", file=sys.stderr, flush=True))
        if take_lock else contextlib.nullcontext())
    split_id = ""
    with lock:
        helpers = [_start_lane(settings, lane, folder, study_id) for lane in lanes_todo[1:]]
        try:
            for name in lanes_todo[0]:
                result = engine.train(train_config(settings, name, data, folder, study_id),
                                      listener=listener, take_lock=False)
                split_id = result.split_id
                if any(outcome.status == runs.CANCELLED for outcome in result.runs):
                    break
        finally:
            for helper in helpers:
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
    if helpers and lost and not cancelled:
        statuses = ", ".join(str(helper.returncode) for helper in helpers)
        raise errors.KidneyLabError(
            f"A demo lane's process ended (exit status {statuses}) before training "
            f"{', '.join(lost)}; run the demo again to train them into the same study."
        )
    split_id = split_id or next((record.info.split_id or "" for record in studies), "")
    if take_lock and not cancelled:
        measure_faithfulness([chosen[name] for name in settings.models if name in chosen], settings.faithfulness_images)
    return engine.TrainResult(study_id=study_id, split_id=split_id, runs=tuple(outcomes))


def measure_faithfulness(records: Sequence[runs.RunRecord], max_images: int) -> list[Path]:
    """Score the heat maps of each completed run on up to ``max_images`` of its test phantoms,
    as ``python -m kidney_lab explain-eval RUN --methods gradcam,gradcam++,layercam --no-curves``
    does, unless the run has its ``faithfulness.json`` already.

    The pointing game of :data:`FAITHFULNESS_METHODS` (with the random-weights check) is what the
    Compare page's caption and its choice of method read; the deletion and insertion curves are
    left out (they cost most of the time). Measured on two shared cores with the 24 test phantoms
    of ``demo --per-class 40``: 13 s (ViT), 37 s (EfficientNetB0) and 57 s (ResNet50) in the
    demo's process, about 30 s (MobileNetV2) and 60 s (InceptionV3) as ``explain-eval`` with
    TensorFlow's start: two to three minutes for the five models. A run that cannot be scored is
    reported on stderr and skipped.

    Returns:
        The faithfulness files written.
    """
    if max_images < 1:
        return []
    from kidney_lab.explain import faithfulness

    written = []
    for record in records:
        if record.state != runs.COMPLETED:
            continue
        with contextlib.suppress(errors.KidneyLabError):
            if runs.read_faithfulness(record.path) is not None:
                continue
        print(f"{record.run_id}: scoring its heat maps on up to {max_images} test phantoms", file=sys.stderr, flush=True)
        try:
            result = faithfulness.evaluate_faithfulness(record.path, None, FAITHFULNESS_METHODS, max_images, curves=False)
        except Exception as error:  # noqa: BLE001 - one model's maps must not fail the trained demo.
            print(f"{record.run_id}: heat maps not scored: {errors.first_line(error, 300)}", file=sys.stderr, flush=True)
            continue
        written.append(Path(result["path"]))
    return written


def _outcome(record: runs.RunRecord) -> engine.RunOutcome:
    """A run of the study as :func:`kidney_lab.training.engine.train` reports it."""
    metrics = None
    if record.state == runs.COMPLETED:
        with contextlib.suppress(OSError, ValueError):
            metrics = fileio.read_json(record.path / runs.METRICS_FILE)
    return engine.RunOutcome(record.run_id, str(record.model), record.path, record.state,
                             error=record.status.get("error"), metrics=metrics)


def _start_lane(settings: config.DemoSettings, models: list[str], workspace: Path, study_id: str) -> subprocess.Popen[bytes]:
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


def _unfinished_study(workspace: Path, settings: config.DemoSettings) -> tuple[str, dict[str, runs.RunRecord]]:
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
    """Runs trained on the workspace's demo phantoms, by study id (newest study first).

    A run belongs to the demo when its data is the phantom set in the workspace's demo folder
    (:func:`kidney_lab.data.phantom.phantom_root`).
    """
    folder = Path(workspace) if workspace is not None else workspace_module.default_workspace()
    demo_root = (folder / workspace_module.DEMO_DATA_FOLDER).resolve()
    studies: dict[str, list[runs.RunRecord]] = {}
    for record in runs.list_runs(folder):
        if record.study_id and phantom.phantom_root(record.info.data_root) == demo_root:
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
            "train_seconds": info.train_seconds,
        }
    return rows


def demo_arguments(settings: config.DemoSettings) -> list[str]:
    """The ``python -m kidney_lab demo`` arguments that reproduce ``settings`` (from its options).

    Raises:
        kidney_lab.errors.ConfigError: ``settings`` changes a field the command line has no
            option for (field of view, batch size, learning rate, augmentation).
    """
    options = config.options(config.DemoSettings)
    values = {name: getattr(settings, name) for name, _ in options}
    if config.DemoSettings(**values) != settings:
        flags = ", ".join(option.flag for _, option in options)
        raise errors.ConfigError(
            f"A background demo job takes only {flags}; run kidney_lab.demo.run_demo directly "
            "for other settings."
        )
    return config.to_arguments(config.DemoSettings, values)


def start_demo_job(
    workspace: str | Path | None = None,
    settings: config.DemoSettings | None = None,
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
    settings = settings or config.DemoSettings()
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
