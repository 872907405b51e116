"""Navigation and running a page: the one list of pages, links, and the error guard.

- :data:`PAGES`, the one list of pages; ``streamlit_app.py`` builds the navigation from it and
  the Home page its links, so adding a page is one line here;
- :func:`run_page`, which runs a page's ``main`` inside the app's navigation and sidebar;
- :func:`shown_errors`, which turns a :class:`kidney_lab.errors.KidneyLabError` into its message
  in ``st.error`` and any other exception into a short message with details in an expander,
  so that no page ever shows a stack trace;
- :func:`keep_tensorflow_state`, which keeps cached models fast across script runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import runpy
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator

import streamlit as st

from kidney_lab import errors

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
    except errors.KidneyLabError as error:
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
