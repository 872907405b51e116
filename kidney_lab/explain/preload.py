"""Loading the models the Compare page opens with before its first scan arrives.

The first scan after the app starts waits for what each model needs once: importing TensorFlow,
loading the model and tracing its compiled pass. Measured on the five architectures at their
native sizes (random weights, 2 shared cores): TensorFlow 3.7 s, loading 0.3-2.7 s per model
(8 s for the five), the first pass 1.1-2.8 s per model (10 s), against 0.02-0.1 s per model for
every later scan. :func:`warm_up` does that work ahead of time for the runs Compare opens with
(:func:`kidney_lab.explain.compare.default_runs`) and the method it opens with, by explaining a
blank image through :func:`kidney_lab.explain.compare.explain`, so the models land in the same
explainer cache (:func:`kidney_lab.explain.cam.load_explainer`) that the page reads.

:func:`start_warm_up` runs it in a background thread, at most once per process for the same
runs and method, and never raises, so the app can call it on every rerun. Importing this module
loads no TensorFlow, nor the scan readers (:mod:`kidney_lab.explain.compare` is imported in the
thread, so the app's first page does not wait for it), and a warm-up with nothing to load
imports no TensorFlow either.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

from kidney_lab.models import registry

# The side in pixels of the blank image each model explains once.
BLANK_SIDE = 64
# Set to 0 (or no, off, false) to switch the background warm-up off.
WARM_UP_VARIABLE = "KIDNEY_LAB_WARM_UP"

_LOGGER = logging.getLogger(__name__)
# The (method, run folders...) warmed up in this process, and the thread doing it.
_warmed: set[tuple[str, ...]] = set()
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class WarmUp:
    """What :func:`warm_up` did.

    Attributes:
        run_ids: the runs whose explainers are loaded and traced, in registry order.
        errors: ``{"run_id", "message"}`` per run that could not be explained (the Compare page
            reports it again when it uses that run).
        seconds: wall-clock time of the whole warm-up.
    """

    run_ids: list[str]
    errors: list[dict[str, str]]
    seconds: float


def default_run_folders(workspace: str | os.PathLike[str]) -> list[Path]:
    """The folders of the runs the Compare page opens with in ``workspace``, in registry order
    (:func:`kidney_lab.explain.compare.default_runs`); empty when there is none."""
    from kidney_lab.explain import compare

    chosen = compare.default_runs(compare.usable_runs(workspace), registry.MODEL_NAMES)
    return [record.path for record in chosen.values() if record is not None]


def warm_up(workspace: str | os.PathLike[str], method: str | None = None) -> WarmUp:
    """Load the Compare page's default runs and trace their compiled passes for ``method``
    (default: the method the page opens with, :func:`kidney_lab.explain.compare.default_method`).

    Each model explains one blank image, so the page's first real scan finds the explainer
    cached and traced. A run that cannot be loaded is reported in :attr:`WarmUp.errors`, the
    others still load; TensorFlow is imported only when there is a run to load.

    Raises:
        kidney_lab.errors.ConfigError: an unknown method.
    """
    started = time.perf_counter()
    folders = default_run_folders(workspace)
    if not folders:
        return WarmUp([], [], time.perf_counter() - started)
    import numpy as np

    from kidney_lab.explain import compare

    report = compare.explain(folders, np.zeros((BLANK_SIDE, BLANK_SIDE), np.uint8),
                             method=method or compare.default_method(folders))
    return WarmUp([result.run_id for result in report.results], list(report.errors),
                  time.perf_counter() - started)


def warm_up_enabled() -> bool:
    """False when ``$KIDNEY_LAB_WARM_UP`` switches the background warm-up off."""
    return os.environ.get(WARM_UP_VARIABLE, "").strip().lower() not in ("0", "no", "off", "false")


def start_warm_up(workspace: str | os.PathLike[str], method: str | None = None) -> threading.Thread | None:
    """Warm up in a background (daemon) thread the default runs of ``workspace`` that this
    process has not warmed up yet for ``method`` (see :func:`warm_up`).

    Returns at once (the thread lists the run folders too), so an app can call it on every
    rerun; when the default runs change (a new study is trained), the new ones are loaded.
    Never raises: a failure, here or in the thread, is logged, and the page then loads its
    models itself.

    Returns:
        The thread, or None when none was started (switched off, a warm-up still running, or a
        failure).
    """
    global _thread
    try:
        if not warm_up_enabled():
            return None
        with _thread_lock:
            if _thread is not None and _thread.is_alive():
                return None
            _thread = threading.Thread(target=_warm_up_new_runs, args=(workspace, method),
                                       name="kidney_lab-warm-up", daemon=True)
            _thread.start()
            return _thread
    except Exception:  # noqa: BLE001 - a warm-up must never break the page that started it.
        _LOGGER.warning("Could not start loading the Compare models ahead of time.", exc_info=True)
        return None


def _warm_up_new_runs(workspace: str | os.PathLike[str], method: str | None) -> None:
    """:func:`warm_up`, unless this process has warmed up the same runs already; logs, never raises."""
    try:
        from kidney_lab.explain import compare

        folders = default_run_folders(workspace)
        method = method or compare.default_method(folders)
        key = (method, *map(str, folders))
        if not folders or key in _warmed:
            return
        _warmed.add(key)
        result = warm_up(workspace, method)
        _LOGGER.info("Loaded %d Compare model(s) ahead of time in %.1f s.", len(result.run_ids), result.seconds)
        for failure in result.errors:
            _LOGGER.warning("Run %s was not loaded ahead of time: %s", failure["run_id"], failure["message"])
    except Exception:  # noqa: BLE001 - the thread's last line of defence.
        _LOGGER.warning("Loading the Compare models ahead of time failed.", exc_info=True)
