"""Home: what kidney_lab is and is not, the state of the workspace, and the demo study.

A first-time user with no trained model gets one button that builds the demo study (phantoms
and the five models) as a background job, with progress per model, so the app works without any
download. The page reads only run and job files, so it opens fast.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from kidney_lab import runs
from kidney_lab.training import jobs
from pages import common

# What a run's score cell shows when the run has no evaluation (cancelled, failed, still training).
NOT_EVALUATED = "— (not evaluated)"


def main() -> None:
    """Draw the Home page."""
    st.title("kidney_lab")
    st.markdown(
        "Compare deep-learning classifiers of kidney CT slices (Cyst, Normal, Stone, Tumor) "
        "**honestly**: audit a dataset for duplicates, split it so that no test image has a twin "
        "in training, train five architectures on the same split, and score every model from "
        "its stored predictions."
    )
    st.warning(
        "For research and teaching only. kidney_lab is not a medical device: its predictions "
        "and heat maps must not be used to diagnose anyone.",
        icon=":material/info:",
    )
    base = common.workspace()
    if jobs.list_jobs(base, active_only=True):
        live_state(base)
    else:
        with common.shown_errors("reading the workspace"):
            draw_state(base)
    with common.shown_errors("showing the demo study"):
        draw_demo(base)
    draw_links()


def draw_state(base: Path) -> None:
    """Dataset, trained models, studies and jobs of the workspace, in numbers."""
    st.subheader("Workspace")
    records = runs.list_runs(base)
    completed = [record for record in records if record.state == runs.COMPLETED]
    studies = {record.study_id for record in records if record.study_id}
    active_jobs = jobs.list_jobs(base, active_only=True)
    choice = common.data_choice(base)
    dataset, models, study_count, running = st.columns(4)
    found = "none" if choice.folder is None else ("found" if choice.folder.is_dir() else "missing")
    dataset.metric("Dataset folder", found, help="The dataset folder the Dataset and Train pages use.")
    models.metric("Trained models", len(completed),
                  help="Runs that completed training and evaluation, in all studies.")
    study_count.metric("Studies", len(studies), help="Models trained together on one split form a study.")
    running.metric("Jobs running", len(active_jobs))
    st.caption(f"Workspace `{base}`" + ("" if base.is_dir() else " (not created yet)")
               + (f" · dataset `{choice.folder}` ({choice.source})" if choice.folder else ""))
    if choice.folder is not None and not choice.folder.is_dir():
        st.error(f"The dataset folder {choice.folder} no longer exists; choose another on the Dataset page.")
    if records:
        st.markdown("**Runs**, newest first" + (f" (the 10 newest of {len(records)})" if len(records) > 10 else ""))
        st.dataframe(
            run_table(records[:10]), hide_index=True, placeholder=NOT_EVALUATED,
            column_config={
                "test accuracy": st.column_config.NumberColumn(
                    format="percent", help="From the run's metrics.json, computed from its stored predictions."),
                "test images": st.column_config.NumberColumn(help="Images the accuracy was measured on."),
                "split": st.column_config.TextColumn(
                    help="grouped: near-duplicates never straddle train and test; random: image by image."),
            },
        )


@st.fragment(run_every=common.REFRESH_SECONDS * 2)
def live_state(base: Path) -> None:
    """:func:`draw_state`, redrawn every few seconds while a training job runs."""
    with common.shown_errors("reading the workspace"):
        draw_state(base)


def run_table(records: list[runs.RunRecord]) -> list[dict[str, object]]:
    """One row per run: model, state, test accuracy and images (from metrics.json), split, study."""
    rows = []
    for record in records:
        metrics = common.read_metrics(record.path) if record.state == runs.COMPLETED else None
        rows.append({
            "model": record.info.display_name or record.model or "?",
            "state": record.state,
            "test accuracy": (metrics or {}).get("accuracy"),
            "test images": (metrics or {}).get("images"),
            "split": record.info.split_strategy or "?",
            "note": run_note(record),
            "study": record.study_id or "",
            "run": record.run_id,
        })
    return rows


def run_note(record: runs.RunRecord) -> str:
    """Why a run has no score (in progress, or what went wrong), or for a completed run whether
    it started from other weights than asked; empty otherwise."""
    if record.state == runs.COMPLETED:
        return "random weights: ImageNet weights were unavailable" if record.weights_note else ""
    if record.is_active:
        return "in progress: follow it on the Train page"
    return record.problem or record.status.get("error") or record.state


def draw_demo(base: Path) -> None:
    """The demo study: live progress while it is built, a way to finish an interrupted one, or
    (with no trained model at all) the button that builds it."""
    demo_jobs = [job for job in jobs.list_jobs(base) if job.kind == "demo"]
    if demo_jobs and demo_jobs[0].is_active:
        st.subheader("Building the demo study")
        st.caption("Two models train at a time, the others wait for their turn; this updates every few "
                   "seconds. Leaving the page or closing the browser does not stop it.")
        live_demo(base)
        return
    if demo_jobs:
        entries = common.job_runs(demo_jobs[0], base)
        missing = [model for model, record in entries if record is None or record.state != runs.COMPLETED]
        if missing:
            st.subheader("The demo study is unfinished")
            st.markdown(f"The last demo job ended with {len(missing)} of {len(entries)} models not trained. "
                        "Finishing it keeps the models already trained and trains the others.")
            common.draw_job(demo_jobs[0], base, curves=False)
            start_demo_button(f"Finish the demo study ({len(missing)} models)")
            return
    if any(record.state == runs.COMPLETED for record in runs.list_runs(base)):
        return
    st.subheader("Start here")
    st.markdown(
        "There is no trained model in this workspace yet. Two ways to get one:\n"
        "1. **Build the demo study**: kidney_lab draws 1,600 synthetic CT-like phantoms (with "
        "known lesions) into the workspace and trains all five models on them from scratch, one "
        "after the other, then scores each on its held-out test phantoms. No download is needed; "
        "it took about 10 minutes on two CPU cores when measured for the README. It runs in the "
        "background: you can leave this page, or close the browser, and come back.\n"
        "2. **Use your own data**: choose a folder on the Dataset page (one folder per class, as "
        "in the Kaggle CT KIDNEY DATASET), then start training on the Train page."
    )
    start_demo_button("Build the demo study")


def start_demo_button(label: str) -> None:
    """A button that starts the demo job (which resumes an unfinished demo study)."""
    if st.button(label, type="primary", icon=":material/play_arrow:"):
        with common.shown_errors("starting the demo"):
            with st.spinner("Starting the demo job ..."):
                from kidney_lab import demo

                demo.start_demo_job(common.workspace())
            st.rerun()


@st.fragment(run_every=common.REFRESH_SECONDS)
def live_demo(base: Path) -> None:
    """The running demo job, redrawn from its runs' status files every few seconds."""
    with common.shown_errors("reading the demo's progress"):
        demo_jobs = [job for job in jobs.list_jobs(base) if job.kind == "demo"]
        if not demo_jobs or not demo_jobs[0].is_active:
            st.rerun(scope="app")
        common.draw_job(demo_jobs[0], base, curves=False)


def draw_links() -> None:
    """A link to every other page, with what it is for."""
    st.subheader("Pages")
    for info in common.PAGES[1:]:
        st.page_link(info.path, label=f"**{info.title}**: {info.summary}", icon=info.icon)


common.run_page(main)
