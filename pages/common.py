"""What every page of the app shares, by job, under one name: ``from pages import common``.

The pages only draw; what they show comes from kidney_lab. The glue they have in common lives
in one module per job, and every name is also reachable here (``common.shown_errors``,
``common.draw_job``, ...), resolved on first use, so a page needs one import:

- :mod:`pages._navigation`: the one list of pages (:data:`PAGES`; ``streamlit_app.py`` builds
  the navigation from it), running a page inside the app, links, and the error guard
  :func:`shown_errors` that keeps stack traces off every page;
- :mod:`pages._folders`: where the workspace and the dataset folder are;
- :mod:`pages._caches`: bounded caches of dataset scans, audits, split previews, thumbnails,
  training curves and stored metrics;
- :mod:`pages._jobs`: how a background job and its runs are drawn (training jobs on the Home
  and Train pages, evaluate jobs on the Evaluation page);
- :mod:`pages._sidebar`: the shared sidebar.

Those modules import pandas or TensorFlow only inside the functions that need them, so the
Home page and the sidebar start fast.
"""

from __future__ import annotations

from kidney_lab import lazy

# One colour per class on every chart.
CLASS_COLOURS = {"Cyst": "#4c78a8", "Normal": "#54a24b", "Stone": "#e45756", "Tumor": "#b279a2"}

_NAMES = {
    "_navigation": ("APP_FILE", "PAGES", "PageInfo", "inside_app", "keep_tensorflow_state", "page_info",
                    "run_page", "shown_errors", "start_links"),
    "_folders": ("CHOSEN_IN_APP", "DATA_VARIABLE", "DataChoice", "choose_data_folder", "data_choice",
                 "demo_data_folder", "workspace"),
    "_caches": ("THUMBNAIL_SIDE", "audit_of", "evaluation_signature", "folder_signature", "history_rows",
                "read_metrics", "scan_folder", "split_preview", "thumbnail", "thumbnails"),
    "_jobs": ("RECENT_JOBS", "REFRESH_SECONDS", "draw_curves", "draw_evaluate_job", "draw_job", "draw_run",
              "duration", "elapsed_seconds", "job_runs", "job_state", "run_fraction", "run_line", "started_text"),
    "_sidebar": ("sidebar",),
}
_HOMES = {name: module for module, names in _NAMES.items() for name in names}

__all__ = sorted(["CLASS_COLOURS", *_HOMES])


__getattr__ = lazy.attributes(__name__, _HOMES, package="pages")
