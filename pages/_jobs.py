"""How a job and its runs are drawn: progress bars, states, logs and training curves.

The Home page's demo, the Train page and the sidebar draw training jobs with it; the
Evaluation page draws its evaluate jobs (:func:`draw_evaluate_job`). Everything shown comes
from the job's files (:mod:`kidney_lab.training.jobs`) and its runs' files.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from kidney_lab import runs as runs_module
from kidney_lab.training import jobs as jobs_module
from pages import _caches
from pages import _navigation

# Seconds between refreshes of live training progress.
REFRESH_SECONDS = 2.0
# How many finished jobs the Train page lists under the active ones.
RECENT_JOBS = 6


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
        metrics = _caches.read_metrics(record.path)
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
            with _navigation.shown_errors("cancelling the job"):
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
    if record.state == runs_module.COMPLETED:
        reason = degenerate_reason(record)
        if reason:
            st.warning(f"**{name}**: {reason}", icon=":material/report:")
    if record.state == runs_module.FAILED:
        tail = record.status.get("log_tail") or runs_module.read_log_tail(record.path / runs_module.LOG_FILE)
        if tail:
            with st.expander(f"End of the training log of {name}"):
                st.code(tail, language=None)
    history = record.path / runs_module.HISTORY_FILE
    if curves and history.is_file() and record.state in (runs_module.RUNNING, runs_module.COMPLETED):
        with st.expander(f"Training curves of {name}", expanded=record.state == runs_module.RUNNING):
            kept = record.info.best_epoch if record.state == runs_module.COMPLETED else None
            draw_curves(_caches.history_rows(str(history), history.stat().st_mtime_ns), key=key or record.run_id,
                        kept_epoch=kept if isinstance(kept, int) else None)


def degenerate_reason(record: runs_module.RunRecord) -> str | None:
    """Why a completed run's stored test metrics say it learned nothing useful
    (:func:`kidney_lab.evaluation.metrics.degenerate`), or None."""
    stored = _caches.read_metrics(record.path)
    if not stored:
        return None
    # The scoring module (and scikit-learn) loads only when a finished run is drawn.
    from kidney_lab.evaluation import metrics

    return metrics.degenerate(stored)


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


def elapsed_seconds(job: jobs_module.JobRecord) -> float | None:
    """Seconds from a job's start to its end (to now while it runs), or ``None`` when unknown."""
    try:
        start = datetime.datetime.fromisoformat(job.started or "")
        end = (datetime.datetime.fromisoformat(job.info["finished"]) if job.info.get("finished")
               else datetime.datetime.now(datetime.timezone.utc) if job.is_active else None)
    except (TypeError, ValueError):
        return None
    return None if end is None else (end - start).total_seconds()


def draw_evaluate_job(job: jobs_module.JobRecord, base: Path) -> None:
    """Draw an evaluate job (:func:`kidney_lab.training.jobs.start_evaluate_job`) from its files.

    While it runs: the folder, how long it has run, the last line of its log and a cancel
    button; once it ended: its result (images and accuracy from the command's ``--json``), or
    why it failed, with the end of its log.
    """
    folder = job.info.get("data") or "?"
    took = elapsed_seconds(job)
    if job.is_active:
        head, button = st.columns([5, 1], vertical_alignment="center")
        head.markdown(f"**Evaluating on** `{folder}` · running for {duration(took)}")
        tail = job.log_tail(1)
        head.caption(tail or "Starting: loading TensorFlow and the model ...")
        if button.button("Cancel", key=f"cancel-{job.job_id}", icon=":material/stop:"):
            with _navigation.shown_errors("cancelling the evaluation"):
                with st.spinner("Stopping the evaluation (up to 10 s) ..."):
                    jobs_module.cancel_job(job.job_id, base)
                st.rerun()
        return
    result = job.result()
    when = f"job `{job.job_id}`, started {started_text(job)}" + (f", took {duration(took)}" if took is not None else "")
    if result is not None and isinstance(result.get("images"), int) and isinstance(result.get("accuracy"), float):
        st.caption(f"Last evaluation on another folder: {result['images']:,} images of `{result.get('data')}`, "
                   f"accuracy {result['accuracy']:.3f} ({when}).")
    elif job.state == jobs_module.CANCELLED:
        st.caption(f"The evaluation on `{folder}` was cancelled ({when}).")
    else:
        tail = job.log_tail(12)
        reason = tail.splitlines()[-1] if tail else "it wrote no log"
        st.error(f"The evaluation on `{folder}` failed: {reason}", icon=":material/error:")
        if tail:
            with st.expander("The end of its log"):
                st.code(tail, language=None)
