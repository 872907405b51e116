"""What every page of the app shares: the page list, the sidebar, folders, caches and errors.

The pages only draw; what they show comes from kidney_lab. This module holds the little glue
they have in common, so that no page repeats it:

- :data:`PAGES`, the one list of pages; ``streamlit_app.py`` builds the navigation from it and
  the Home page its links, so adding a page is one line here;
- where the workspace and the dataset folder are (``KIDNEY_LAB_WORKSPACE``, the folder chosen
  last in the app, ``KIDNEY_LAB_DATA``);
- :func:`shown_errors`, which turns a :class:`kidney_lab.errors.KidneyLabError` into its message
  in ``st.error`` and any other exception into a short message with details in an expander,
  so that no page ever shows a stack trace;
- bounded caches of dataset scans, audits, split previews, thumbnails and training curves;
- how a training job and its runs are drawn (the Home page's demo and the Train page share it).

Imports of kidney_lab modules that pull in pandas or TensorFlow are made inside the functions
that need them, so the Home page and the sidebar start fast.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import logging
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import streamlit as st

from kidney_lab import runs as runs_module
from kidney_lab import workspace as workspace_module
from kidney_lab.errors import KidneyLabError
from kidney_lab.training import jobs as jobs_module

if TYPE_CHECKING:
    from kidney_lab.data.audit import AuditReport
    from kidney_lab.data.discover import DatasetScan

DATA_VARIABLE = "KIDNEY_LAB_DATA"
# Seconds between refreshes of live training progress.
REFRESH_SECONDS = 2.0
# How many finished jobs the Train page lists under the active ones.
RECENT_JOBS = 6
THUMBNAIL_SIDE = 128
# Source labels of the dataset folder, as the sidebar shows them.
CHOSEN_IN_APP = "chosen in the app"
# One colour per class on every chart.
CLASS_COLOURS = {"Cyst": "#4c78a8", "Normal": "#54a24b", "Stone": "#e45756", "Tumor": "#b279a2"}

_LOGGER = logging.getLogger("kidney_lab.app")
APP_FILE = Path(__file__).resolve().parents[1] / "streamlit_app.py"
# True while streamlit_app.py runs a page; see run_page.
_INSIDE_APP: contextvars.ContextVar[bool] = contextvars.ContextVar("kidney_lab_inside_app", default=False)


@dataclasses.dataclass(frozen=True)
class PageInfo:
    """One page of the app.

    Attributes:
        path: The page script, relative to the project folder.
        title: The title in the navigation and on links.
        icon: A Material icon (``:material/name:``).
        summary: One line for the Home page's link list.
    """

    path: str
    title: str
    icon: str
    summary: str


PAGES: tuple[PageInfo, ...] = (
    PageInfo("pages/home.py", "Home", ":material/home:", "What this is, and the state of the workspace."),
    PageInfo("pages/compare.py", "Compare", ":material/compare:",
             "Upload a scan: what each of the five models predicts and where it looks."),
    PageInfo("pages/dataset.py", "Dataset", ":material/folder_open:",
             "Choose a folder; class counts, samples, duplicates and what each split leaks."),
    PageInfo("pages/train.py", "Train", ":material/model_training:",
             "Train the five architectures on one split in the background; progress, curves, cancel."),
    PageInfo("pages/leaderboard.py", "Leaderboard", ":material/leaderboard:",
             "Every evaluated run with intervals, ranked only against runs tested on the same images."),
    PageInfo("pages/evaluation.py", "Evaluation", ":material/analytics:",
             "One run in depth (confusion matrix, curves, calibration, mistakes) or two runs compared."),
)


def keep_tensorflow_state() -> None:
    """Stop Streamlit from clearing Keras' session after every script run.

    After each run Streamlit calls ``keras.backend.clear_session()``
    (``script_runner._clean_problem_modules``), which empties TensorFlow's kernel cache, so every
    cached model rebuilds its kernels on its next call: measured on the demo study (2 cores),
    3.5-8 s of CPU for five explanations instead of 0.15-0.25 s. The app keeps its models in
    caches on purpose, so it keeps their kernels too; only the matplotlib part of that clean-up
    is kept. Harmless if a later Streamlit renames the function: the app is then only slower.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if getattr(script_runner, "_clean_problem_modules", None) is _close_figures_only:
        return
    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = _close_figures_only


def _close_figures_only() -> None:
    """What Streamlit's clean-up after a run still does here: close matplotlib figures."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def page_info(path: str) -> PageInfo:
    """The entry of :data:`PAGES` for the page script ``path`` (such as ``"pages/dataset.py"``)."""
    return next(info for info in PAGES if info.path == path)


def start_links() -> None:
    """Links, side by side, to where trained runs come from: the demo study and the Train page."""
    home, train = page_info("pages/home.py"), page_info("pages/train.py")
    left, right = st.columns(2)
    left.page_link(home.path, label="Home: build the demo study", icon=home.icon)
    right.page_link(train.path, label="Train: train on your dataset", icon=train.icon)


# Running a page -------------------------------------------------------------------------------


@contextlib.contextmanager
def inside_app() -> Iterator[None]:
    """Mark the ``with`` block as streamlit_app.py running a page (see :func:`run_page`)."""
    token = _INSIDE_APP.set(True)
    try:
        yield
    finally:
        _INSIDE_APP.reset(token)


def run_page(main: Callable[[], None]) -> None:
    """Run a page's ``main``, always inside the app's navigation, sidebar and error guard.

    Because a ``pages/`` folder sits next to ``streamlit_app.py``, Streamlit runs the first
    request after it starts in its legacy multipage mode: a URL naming a page (``/dataset``)
    then runs that page's script alone, without the entry script. Such a run is recognised here
    and runs the entry script instead, which shows the same page the normal way; that also
    ends the legacy mode for the server's lifetime.
    """
    if _INSIDE_APP.get():
        main()
    else:
        runpy.run_path(str(APP_FILE), run_name="__main__")


# Folders --------------------------------------------------------------------------------------


def workspace() -> Path:
    """The workspace: ``$KIDNEY_LAB_WORKSPACE`` or ``./trained_models`` (absolute)."""
    return workspace_module.default_workspace()


@dataclasses.dataclass(frozen=True)
class DataChoice:
    """The dataset folder the app works on, and where that choice came from.

    Attributes:
        folder: The folder (absolute), or ``None`` when none is chosen.
        source: :data:`CHOSEN_IN_APP`, :data:`DATA_VARIABLE`, or ``""`` without a folder.
    """

    folder: Path | None
    source: str


def data_choice(base: Path | None = None) -> DataChoice:
    """The folder chosen last in the app (kept in the workspace), else ``$KIDNEY_LAB_DATA``."""
    remembered = workspace_module.last_data_folder(base or workspace())
    if remembered is not None:
        return DataChoice(remembered, CHOSEN_IN_APP)
    configured = os.environ.get(DATA_VARIABLE, "").strip()
    if configured:
        return DataChoice(Path(configured).expanduser().resolve(), DATA_VARIABLE)
    return DataChoice(None, "")


def choose_data_folder(folder: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Check that ``folder`` holds a dataset and remember it as the app's dataset folder.

    Returns:
        The dataset root (the folder holding the class folders).

    Raises:
        kidney_lab.errors.DatasetError: no dataset there (the message says what is missing).
        kidney_lab.workspace.WorkspaceError: the workspace cannot be written.
    """
    from kidney_lab.data import discover

    text = os.fspath(folder).strip()
    if not text:
        raise KidneyLabError("Type the path of a dataset folder first.")
    root, _ = discover.find_root(text)
    workspace_module.remember_data_folder(root, base or workspace())
    return root


def demo_data_folder(base: Path | None = None) -> Path | None:
    """The workspace's demo phantoms (written by the demo), or ``None`` when there are none."""
    from kidney_lab.data import phantom

    folder = (base or workspace()) / workspace_module.DEMO_DATA_FOLDER
    return folder if (folder / phantom.PARAMETERS_FILE_NAME).is_file() else None


# Errors ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def shown_errors(doing: str) -> Iterator[None]:
    """Show what goes wrong in the block on the page instead of a stack trace.

    A :class:`~kidney_lab.errors.KidneyLabError` shows its message, which says what to do.
    Anything else is a bug: a short message, the exception and where it was raised in an
    expander, and the full traceback in the server's log. Streamlit's own control flow
    (``st.rerun``, ``st.stop``) derives from ``BaseException`` and passes through.

    Args:
        doing: What the block does, for the message (such as ``"reading the dataset"``).
    """
    try:
        yield
    except KidneyLabError as error:
        st.error(str(error), icon=":material/error:")
    except Exception as error:  # noqa: BLE001 - the app's last line of defence.
        _LOGGER.error("Unexpected error while %s\n%s", doing, traceback.format_exc())
        st.error(
            f"Something unexpected went wrong while {doing}. This is a bug in kidney_lab; "
            "the rest of the page still works.",
            icon=":material/bug_report:",
        )
        with st.expander("Details for a bug report"):
            st.write(f"`{type(error).__name__}`: {error}")
            frames = traceback.extract_tb(error.__traceback__)
            if frames:
                last = frames[-1]
                st.caption(f"Raised in {Path(last.filename).name}, line {last.lineno}, in {last.name}. "
                           "The server's log has the full details.")


# Caches ---------------------------------------------------------------------------------------


def folder_signature(root: Path, class_folders: dict[str, Path]) -> tuple[tuple[str, int], ...]:
    """Modification times of the dataset root and its class folders.

    A file added, removed or renamed changes its folder's time, so a cached scan keyed on this
    is read again; a file rewritten in place does not (the Dataset page has a rescan button).
    """
    folders = [root, *class_folders.values()]
    stamps = []
    for folder in folders:
        try:
            stamps.append((str(folder), folder.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(folder), -1))
    return tuple(stamps)


@st.cache_data(max_entries=4, ttl=3600, show_spinner=False)
def scan_folder(root: str, signature: tuple[tuple[str, int], ...], cache_folder: str | None) -> DatasetScan:
    """Scan a dataset (see :func:`kidney_lab.data.discover.scan_dataset`), with a progress bar.

    ``signature`` (see :func:`folder_signature`) is part of the cache key only.
    """
    from kidney_lab.data import discover

    bar = st.progress(0.0, text="Reading images ...")
    shown = [-1]

    def report(done: int, total: int) -> None:
        percent = int(100 * done / max(total, 1))
        if percent != shown[0]:
            shown[0] = percent
            bar.progress(percent / 100, text=f"Reading images: {done:,} of {total:,}")

    try:
        return discover.scan_dataset(root, progress=report, cache=cache_folder)
    finally:
        bar.empty()


@st.cache_data(max_entries=4, ttl=3600, show_spinner="Looking for duplicates ...")
def audit_of(_scan: DatasetScan, key: tuple[Any, ...]) -> AuditReport:
    """The audit of a scan (exact and near duplicates, label conflicts); ``key`` names the scan."""
    from kidney_lab.data import audit

    return audit.audit_dataset(_scan)


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Splitting ...")
def split_preview(_audit: AuditReport, key: tuple[Any, ...], strategy: str, seed: int) -> dict[str, Any]:
    """What a split of the audited dataset would hold (``Split.to_dict()``), without storing it."""
    from kidney_lab.data import split

    return split.make_split(_audit, strategy, seed=seed).to_dict()


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, mtime_ns: int, side: int = THUMBNAIL_SIDE) -> bytes:
    """A PNG thumbnail of a dataset image, at most ``side`` pixels on a side.

    ``mtime_ns`` is part of the cache key only. The image is read with the scan reader, so
    16-bit and TIFF files show as the models see them.

    Raises:
        kidney_lab.errors.ScanReadError: the file cannot be read.
    """
    import io

    from PIL import Image

    from kidney_lab.data.scan import read_scan

    image = Image.fromarray(read_scan(path).to_uint8())
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnails(paths: list[str]) -> list[bytes]:
    """Thumbnails of ``paths`` (see :func:`thumbnail`)."""
    return [thumbnail(path, Path(path).stat().st_mtime_ns) for path in paths]


@st.cache_data(max_entries=64, show_spinner=False)
def history_rows(path: str, mtime_ns: int) -> list[dict[str, Any]]:
    """The rows of a run's ``history.csv``; ``mtime_ns`` is part of the cache key only."""
    return runs_module.read_history(path)


def evaluation_signature(base: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of every file that evaluation writes in the workspace's run folders.

    Part of the cache key of tables built from stored evaluations (leaderboard, scores): a run
    trained, evaluated, re-evaluated on another folder or deleted changes it, so nothing shown
    is older than the files. Reading it costs a few ``stat`` calls per run.
    """
    names = (runs_module.RUN_FILE, runs_module.PREDICTIONS_FILE, runs_module.METRICS_FILE, runs_module.FAITHFULNESS_FILE)
    stamps: list[tuple[str, int]] = []
    for record_folder in sorted(_run_folders(base)):
        folders = [record_folder]
        with contextlib.suppress(OSError):
            external = Path(record_folder) / runs_module.EXTERNAL_FOLDER
            folders += sorted(entry.path for entry in os.scandir(external) if entry.is_dir())
        for folder in folders:
            for name in names:
                with contextlib.suppress(OSError):
                    stamps.append((os.path.join(folder, name), os.stat(os.path.join(folder, name)).st_mtime_ns))
    return tuple(stamps)


def _run_folders(base: Path) -> list[str]:
    """The paths of the folders in ``base`` named like runs (none when it does not exist)."""
    try:
        return [entry.path for entry in os.scandir(base)
                if runs_module.RUN_ID_PATTERN.fullmatch(entry.name) and entry.is_dir()]
    except OSError:
        return []


# Jobs and runs --------------------------------------------------------------------------------


def job_runs(job: jobs_module.JobRecord, base: Path) -> list[tuple[str, runs_module.RunRecord | None]]:
    """The runs of a job by model, in the job's order; ``None`` for a model not started yet.

    A model the job was asked to train but has no run yet (the demo creates each model's run
    when its turn comes) is listed with ``None``.
    """
    records = runs_module.list_runs(base, study_id=job.study_id) if job.study_id else []
    by_model: dict[str, runs_module.RunRecord] = {}
    for record in reversed(records):  # Oldest first, so a model's newest run wins.
        by_model[record.model or record.run_id] = record
    order = list(job.models) + [model for model in by_model if model not in job.models]
    return [(model, by_model.get(model)) for model in order]


def run_fraction(record: runs_module.RunRecord) -> float:
    """How much of a run's training is done, from 0 to 1, from its status and its epochs.

    Training counts the steps of all epochs asked for (early stopping may end sooner);
    evaluation and every finished state count as done.
    """
    status = record.status
    if record.state == runs_module.COMPLETED or str(status.get("phase", "")).startswith("evaluating"):
        return 1.0
    epoch, step, steps = status.get("epoch"), status.get("step") or 0, status.get("steps") or 0
    total = (record.info.config or {}).get("epochs") or status.get("epochs")
    if not (isinstance(epoch, int) and isinstance(total, int) and total > 0 and steps):
        return 0.0
    return min(1.0, max(0.0, ((epoch - 1) * steps + step) / (total * steps)))


def duration(seconds: float | None) -> str:
    """``seconds`` in words: ``"45 s"``, ``"3 min 20 s"``, ``"1 h 5 min"``."""
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def run_line(record: runs_module.RunRecord) -> str:
    """One line on a run's progress: phase, epoch, step, loss, accuracy, speed and time left."""
    status = record.status
    state = record.state
    if state == runs_module.COMPLETED:
        metrics = read_metrics(record.path)
        if metrics and isinstance(metrics.get("accuracy"), (int, float)):
            return (f"completed: test accuracy {metrics['accuracy']:.1%} on "
                    f"{metrics.get('images', '?')} test images")
        return "completed"
    if state in (runs_module.FAILED, runs_module.STALE, runs_module.BROKEN):
        return f"{state}: {record.problem}"
    if state == runs_module.CANCELLED:
        reason = str(status.get("error") or "")
        return reason if reason.startswith("cancelled") else f"cancelled: {reason}" if reason else "cancelled"
    phase = status.get("phase") or state
    if state == runs_module.QUEUED:
        return phase if phase != runs_module.QUEUED else "queued: waiting to start"
    parts = [str(phase)]
    if isinstance(status.get("epoch"), int) and status.get("epochs"):
        total = (record.info.config or {}).get("epochs") or status["epochs"]
        parts.append(f"epoch {status['epoch']} of {total}")
        if status.get("steps"):
            parts.append(f"step {status.get('step') or 0} of {status['steps']}")
    if isinstance(status.get("loss"), (int, float)):
        parts.append(f"loss {status['loss']:.3f}")
    if isinstance(status.get("accuracy"), (int, float)):
        parts.append(f"training accuracy {status['accuracy']:.1%}")
    if status.get("images_per_second"):
        parts.append(f"{status['images_per_second']:.0f} images/s")
    if status.get("eta_seconds") is not None and not str(phase).startswith("evaluating"):
        parts.append(f"about {duration(status['eta_seconds'])} left in this phase")
    return " · ".join(parts)


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A run's ``metrics.json`` (computed from its stored predictions), or ``None`` without one."""
    from kidney_lab.fileio import read_json

    try:
        metrics = read_json(path / runs_module.METRICS_FILE)
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def job_state(job: jobs_module.JobRecord, entries: list[tuple[str, runs_module.RunRecord | None]]) -> str:
    """A job's state in words: running, queued behind another job, preparing, or how it ended."""
    records = [record for _, record in entries if record is not None]
    if not job.is_active:
        if job.state == jobs_module.FAILED and job.returncode is not None:
            return f"failed (exit code {job.returncode})"
        if job.state == jobs_module.CANCELLED:
            return job.state
        # The exit code is known only to the app process that started the job; the runs say how it went.
        counts: dict[str, int] = {}
        for record in records:
            counts[record.state] = counts.get(record.state, 0) + 1
        return "ended" + (": " + ", ".join(f"{count} {state}" for state, count in counts.items()) if counts else "")
    if any(record.state == runs_module.RUNNING for record in records):
        return "running"
    if any("waiting for another" in str(record.status.get("phase", "")) for record in records):
        return "queued: waiting for another training job to finish"
    if not records:
        return "preparing: reading, auditing and splitting the dataset"
    return "running"


def started_text(job: jobs_module.JobRecord) -> str:
    """When a job started, as ``2026-11-26 19:25 UTC``."""
    try:
        moment = datetime.datetime.fromisoformat(job.started or "")
    except ValueError:
        return "at an unknown time"
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def draw_job(job: jobs_module.JobRecord, base: Path, *, curves: bool = True) -> None:
    """Draw one job: its state, a cancel button while it runs, and one progress bar per model.

    A failed run shows its error and the end of its log; a job that ended before any model
    started shows the end of the job's own log; with ``curves``, runs with a history show
    their loss and accuracy per epoch.
    """
    entries = job_runs(job, base)
    title = "Demo study" if job.kind == "demo" else "Training job"
    with st.container(border=True):
        head, button = st.columns([5, 1], vertical_alignment="center")
        head.markdown(f"**{title}** `{job.job_id}` · {job_state(job, entries)}")
        head.caption(f"Started {started_text(job)} · study `{job.study_id}`")
        if not job.is_active:
            later = [other.job_id for other in jobs_module.list_jobs(base)
                     if other.study_id == job.study_id and (other.started or "") > (job.started or "")]
            if later:
                st.caption(f"Job `{later[-1]}` resumed this study later; the models below show their state now.")
        if job.is_active and button.button("Cancel", key=f"cancel-{job.job_id}", icon=":material/stop:"):
            with shown_errors("cancelling the job"):
                with st.spinner("Stopping the job (up to 10 s) ..."):
                    jobs_module.cancel_job(job.job_id, base)
                st.rerun()
        names = job.info.get("display_names") or {}
        for model, record in entries:
            draw_run(names.get(model, model), record, curves=curves, job_active=job.is_active,
                     key=f"{job.job_id}-{model}")
        if not entries or (not job.is_active and all(record is None for _, record in entries)):
            tail = job.log_tail(8)
            if job.is_active:
                st.caption(tail.splitlines()[-1] if tail else "Starting ...")
            elif tail:
                st.error("The job ended before any model started. The end of its log:")
                st.code(tail, language=None)


def draw_run(
    model: str,
    record: runs_module.RunRecord | None,
    *,
    curves: bool = True,
    job_active: bool = True,
    key: str = "",
) -> None:
    """One model's line in a job: name, progress bar, and for a failed run its error and log.

    ``model`` names the model while it has no run yet (its display name when the job recorded
    one); a run's own display name is used once it exists. A job that has ended may share a
    run with a later job that resumed its study; such a run is shown as continued there.
    ``key`` makes the run's charts unique on the page (one run may show under two jobs).
    """
    name = (record.info.display_name if record is not None else None) or model
    if record is None:
        reason = "waiting for its turn" if job_active else "the job ended before its turn"
        st.progress(0.0, text=f"**{name}**: not started ({reason})")
        return
    if not job_active and record.is_active:
        st.progress(run_fraction(record), text=f"**{name}**: continued by a later job that resumed this study")
        return
    st.progress(run_fraction(record), text=f"**{name}**: {run_line(record)}")
    if record.state == runs_module.FAILED:
        tail = record.status.get("log_tail") or runs_module.read_log_tail(record.path / runs_module.LOG_FILE)
        if tail:
            with st.expander(f"End of the training log of {name}"):
                st.code(tail, language=None)
    history = record.path / runs_module.HISTORY_FILE
    if curves and history.is_file() and record.state in (runs_module.RUNNING, runs_module.COMPLETED):
        with st.expander(f"Training curves of {name}", expanded=record.state == runs_module.RUNNING):
            kept = record.info.best_epoch if record.state == runs_module.COMPLETED else None
            draw_curves(history_rows(str(history), history.stat().st_mtime_ns), key=key or record.run_id,
                        kept_epoch=kept if isinstance(kept, int) else None)


def draw_curves(rows: list[dict[str, Any]], key: str, kept_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch (training and validation) from ``history.csv`` rows.

    ``key`` is unique to this pair of charts on the page; ``kept_epoch``, when given, is marked
    with a dotted line (the epoch whose checkpoint the run kept).
    """
    import plotly.graph_objects as go

    if not rows:
        st.caption("No finished epoch yet.")
        return
    columns = st.columns(2)
    for column, metric, title in ((columns[0], "loss", "Loss"), (columns[1], "accuracy", "Accuracy")):
        figure = go.Figure()
        for column_name, label in ((metric, "training"), (f"val_{metric}", "validation")):
            points = [(row["epoch"], row[column_name]) for row in rows if isinstance(row.get(column_name), float)]
            if points:
                figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                            mode="lines+markers", name=label))
        kept = [row[f"val_{metric}"] for row in rows
                if row["epoch"] == kept_epoch and isinstance(row.get(f"val_{metric}"), float)]
        if kept:
            figure.add_vline(x=kept_epoch, line_dash="dot", line_color="#888")
            figure.add_trace(go.Scatter(x=[kept_epoch], y=kept, mode="markers", name=f"kept (epoch {kept_epoch})",
                                        marker=dict(symbol="star", size=14, color="#d62728")))
        figure.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=10),
                             xaxis_title="epoch", legend=dict(orientation="h", y=-0.3))
        figure.update_xaxes(dtick=1)
        column.plotly_chart(figure, width="stretch", key=f"{key}-{metric}")


# Sidebar --------------------------------------------------------------------------------------


def sidebar() -> None:
    """The shared sidebar: workspace, dataset folder and the training jobs now running."""
    base = workspace()
    with st.sidebar:
        st.markdown("**Workspace**")
        origin = workspace_module.WORKSPACE_VARIABLE if os.environ.get(workspace_module.WORKSPACE_VARIABLE, "").strip() else "default"
        st.caption(f"`{base}` ({origin})" + ("" if base.is_dir() else " · not created yet"))
        choice = data_choice(base)
        st.markdown("**Dataset**")
        if choice.folder is None:
            st.caption("None chosen yet: choose one on the Dataset page.")
        else:
            missing = "" if choice.folder.is_dir() else " · **missing**"
            st.caption(f"`{choice.folder}` ({choice.source}){missing}")
        st.markdown("**Training**")
        with shown_errors("reading the training jobs"):
            if jobs_module.list_jobs(base, active_only=True):
                _live_sidebar_jobs(base)
            else:
                _sidebar_jobs(base)


@st.fragment(run_every=REFRESH_SECONDS * 2)
def _live_sidebar_jobs(base: Path) -> None:
    with shown_errors("reading the training jobs"):
        _sidebar_jobs(base)


def _sidebar_jobs(base: Path) -> None:
    active = jobs_module.list_jobs(base, active_only=True)
    if not active:
        st.caption("No training job running.")
    for job in active:
        entries = job_runs(job, base)
        # A demo job trains two models at once (two processes), a train job one at a time.
        current = [record for _, record in entries if record is not None and record.is_active]
        label = "Demo" if job.kind == "demo" else "Job"
        if not current:
            st.caption(f"{label} `{job.job_id[-6:]}`: {job_state(job, entries)}")
        for record in current:
            name = record.info.display_name or record.model
            st.progress(run_fraction(record), text=f"{label} `{job.job_id[-6:]}`: {name}, {record.state}")
    studies = {job.study_id for job in active}
    outside = [record for record in runs_module.list_runs(base)
               if record.is_active and record.study_id not in studies]
    if outside:
        st.caption(f"{len(outside)} run(s) active outside the app's jobs (started from the command line).")
