"""The shared sidebar: workspace, dataset folder and the training jobs now running."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from kidney_lab import runs as runs_module
from kidney_lab import workspace as workspace_module
from kidney_lab.training import jobs as jobs_module
from pages import _folders
from pages import _jobs
from pages import _navigation

# Seconds between two looks for a new training job while none runs.
IDLE_REFRESH_SECONDS = 10.0


def sidebar() -> None:
    """The shared sidebar: workspace, dataset folder and the training jobs now running."""
    base = _folders.workspace()
    with st.sidebar:
        st.markdown("**Workspace**")
        origin = workspace_module.WORKSPACE_VARIABLE if os.environ.get(workspace_module.WORKSPACE_VARIABLE, "").strip() else "default"
        st.caption(f"`{base}` ({origin})" + ("" if base.is_dir() else " · not created yet"))
        choice = _folders.data_choice(base)
        st.markdown("**Dataset**")
        if choice.folder is None:
            st.caption("None chosen yet: choose one on the Dataset page.")
        else:
            missing = "" if choice.folder.is_dir() else " · **missing**"
            st.caption(f"`{choice.folder}` ({choice.source}){missing}")
        st.markdown("**Training**")
        with _navigation.shown_errors("reading the training jobs"):
            if jobs_module.list_jobs(base, active_only=True):
                _live_sidebar_jobs(base)
            else:
                _idle_sidebar_jobs(base)


@st.fragment(run_every=_jobs.REFRESH_SECONDS * 2)
def _live_sidebar_jobs(base: Path) -> None:
    """The running jobs, redrawn every few seconds."""
    with _navigation.shown_errors("reading the training jobs"):
        _sidebar_jobs(base)


@st.fragment(run_every=IDLE_REFRESH_SECONDS)
def _idle_sidebar_jobs(base: Path) -> None:
    """No job was running when the page was drawn: look again now and then, so a job started
    since (from another page, tab or the command line) shows without a reload."""
    with _navigation.shown_errors("reading the training jobs"):
        _sidebar_jobs(base)


def _sidebar_jobs(base: Path) -> None:
    active = jobs_module.list_jobs(base, active_only=True)
    if not active:
        st.caption("No training job running.")
    for job in active:
        entries = _jobs.job_runs(job, base)
        # A demo job trains two models at once (two processes), a train job one at a time.
        current = [record for _, record in entries if record is not None and record.is_active]
        label = "Demo" if job.kind == "demo" else "Job"
        if not current:
            st.caption(f"{label} `{job.job_id[-6:]}`: {_jobs.job_state(job, entries)}")
        for record in current:
            name = record.info.display_name or record.model
            st.progress(_jobs.run_fraction(record), text=f"{label} `{job.job_id[-6:]}`: {name}, {record.state}")
    studies = {job.study_id for job in active}
    outside = [record for record in runs_module.list_runs(base)
               if record.is_active and record.study_id not in studies]
    if outside:
        st.caption(f"{len(outside)} run(s) active outside the app's jobs (started from the command line).")
