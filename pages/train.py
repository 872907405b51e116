"""Train: start a training job in the background, follow it per model, cancel it.

The form draws the options of ``python -m kidney_lab train`` that have a page label in
kidney_lab.training.config (the table that also makes the command's parser); its choices become
that command's arguments, started by kidney_lab.training.jobs in its own process: the page never
trains anything itself. Progress
comes from each run's ``status.json`` and ``history.csv``, redrawn by a fragment every few
seconds, so leaving the page, closing the browser or restarting the app shows the same jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from kidney_lab import runs
from kidney_lab.training import config
from kidney_lab.training import jobs
from pages import common

def main() -> None:
    """Draw the Train page."""
    st.title("Train")
    st.markdown(
        "Train one or more architectures on **one** split of the dataset, one after another, in "
        "a background process. Each model keeps its checkpoint of lowest validation loss and is "
        "then scored on the split's test images. One job trains at a time; a second one waits "
        "in the queue."
    )
    base = common.workspace()
    choice = common.data_choice(base)
    if choice.folder is None:
        demo = " (the demo phantoms are there too)" if common.demo_data_folder(base) else ""
        st.info(f"Choose a dataset first, on the Dataset page{demo}.", icon=":material/folder_open:")
        dataset_page = common.page_info("pages/dataset.py")
        st.page_link(dataset_page.path, label="Go to the Dataset page", icon=dataset_page.icon)
    else:
        with common.shown_errors("starting the training job"):
            training_form(base, choice.folder)
    st.subheader("Training jobs")
    with common.shown_errors("reading the training jobs"):
        if jobs.list_jobs(base, active_only=True):
            live_jobs(base)
        finished_jobs(base, can_start=choice.folder is not None)


def training_form(base: Path, folder: Path) -> None:
    """The form, one widget per option of the Train page (kidney_lab.training.config); on submit,
    its values are checked and a job is started with the matching command line."""
    from kidney_lab.models import registry

    st.caption(f"Dataset `{folder}`; change it on the Dataset page.")
    with st.form("train"):
        values = form_values(registry)
        submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return
    models = list(values["models"])
    problems = check_choices(registry, models, values["image_size"], values["weights"])
    if problems:
        st.error("Training was not started:\n" + "\n".join(f"- {problem}" for problem in problems))
        return
    from kidney_lab.data import discover

    discover.find_root(folder)
    arguments = config.to_arguments(config.TrainConfig, {**values, "data": folder})
    job = jobs.start_job(arguments, base, details={
        "models": models,
        "display_names": {name: registry.get_spec(name).display_name for name in models},
    })
    st.success(f"Started job `{job.job_id}`: {len(models)} model(s) on {folder.name}. Its progress is below.")


def form_values(registry) -> dict[str, Any]:
    """Draw a widget per page option: models first, numbers and choices three to a row, checkboxes last.

    Returns:
        Field name -> the value chosen (None for an image size left empty: each model's own).
    """
    page = config.page_options()
    values: dict[str, Any] = {}
    for name, option in page:
        if option.kind == "models":
            values[name] = st.multiselect(
                option.label, list(registry.MODEL_NAMES), default=list(registry.MODEL_NAMES),
                format_func=lambda model: registry.get_spec(model).display_name,
            )
    inline = [(name, option) for name, option in page if option.kind not in ("models", "off-flag")]
    for start in range(0, len(inline), 3):
        for column, (name, option) in zip(st.columns(3), inline[start:start + 3]):
            values[name] = _widget(column, option, config.default(config.TrainConfig, name), registry)
    for name, option in page:
        if option.kind == "off-flag":
            values[name] = st.checkbox(option.label, value=config.default(config.TrainConfig, name))
    return values


def _widget(column, option: config.Option, default: Any, registry) -> Any:
    """The number input or radio of one option, in ``column``."""
    if option.choices is not None:
        notes = option.choices
        return column.radio(option.label, list(notes), index=list(notes).index(default),
                            format_func=lambda choice: f"{choice}: {notes[choice]}", help=option.help)
    whole = option.kind in ("int", "size")
    number = int if whole else float
    help_text = option.help + (f" (empty: {option.default_note})" if default is None and option.default_note else "")
    if option.kind == "size":
        help_text += ". " + size_help(registry)
    return column.number_input(
        option.label,
        min_value=None if option.minimum is None else number(option.minimum),
        max_value=None if option.maximum is None else number(option.maximum),
        value=default, step=number(option.step or 1), format=option.number_format,
        placeholder=option.default_note, help=help_text,
    )


def size_help(registry) -> str:
    """What image sizes each architecture accepts, from the registry."""
    lines = [f"The same size is used for every model chosen (designed for: "
             f"{', '.join(f'{spec.display_name} {spec.default_size}' for spec in registry.REGISTRY.values())})."]
    for spec in registry.REGISTRY.values():
        rule = f"at least {spec.min_size}"
        if spec.size_multiple > 1:
            rule += f", a multiple of {spec.size_multiple}"
        lines.append(f"{spec.display_name}: {rule}.")
    return " ".join(lines)


def check_choices(registry, models: list[str], size: int | None, weights: str) -> list[str]:
    """What is wrong with the form's choices, one message each (none: they can be trained).

    A ``size`` of None gives each model its own, which it always accepts."""
    from kidney_lab.errors import ConfigError

    problems = []
    if not models:
        problems.append("Choose at least one model.")
    for name in models:
        spec = registry.get_spec(name)
        try:
            if size is not None:
                spec.check_size(int(size))
        except ConfigError as error:
            problems.append(str(error))
        if weights == "imagenet" and not spec.imagenet_weights:
            problems.append(f"{spec.display_name} has no ImageNet weights; choose auto or none, or leave it out.")
    return problems


@st.fragment(run_every=common.REFRESH_SECONDS)
def live_jobs(base: Path) -> None:
    """The running and queued jobs, redrawn from their files every few seconds."""
    with common.shown_errors("reading the training jobs"):
        active = jobs.list_jobs(base, active_only=True)
        if not active:
            # The last job ended: redraw the whole page, so that it moves to the finished ones.
            st.rerun(scope="app")
        entries = {job.job_id: common.job_runs(job, base) for job in active}
        queued = [job for job in active if common.job_state(job, entries[job.job_id]).startswith("queued")]
        if queued:
            st.markdown(f"**Queue**: {len(queued)} job(s) wait for the running one to finish (one job trains "
                        "at a time): " + ", ".join(f"`{job.job_id}`" for job in reversed(queued)))
        for job in sorted(active, key=lambda job: job in queued):
            common.draw_job(job, base)


def finished_jobs(base: Path, can_start: bool) -> None:
    """The most recent jobs that have ended, with their runs' results, errors and curves."""
    all_jobs = jobs.list_jobs(base)
    ended = [job for job in all_jobs if not job.is_active][:common.RECENT_JOBS]
    if not all_jobs:
        start = "Start one with the form above" if can_start else "Once a dataset is chosen, start one here"
        trained = len(runs.list_runs(base))
        elsewhere = (f" The workspace's {trained} run(s) were trained outside the app (command line or Python); the Home "
                     "page lists them." if trained else "")
        st.info(f"No training job has been started from the app in this workspace yet.{elsewhere} "
                f"{start}, or build the demo study on the Home page.")
        return
    if ended:
        st.markdown(f"**Finished jobs** (the {len(ended)} most recent)")
        for job in ended:
            common.draw_job(job, base)


common.run_page(main)
