"""One scan through several runs: what the Compare page and ``python -m kidney_lab explain`` do.

The scan is read once and turned into one model input per input size; each run then gets its
cached explainer (:func:`kidney_lab.explain.cam.load_explainer`) and its compiled pass. A run
that cannot be loaded, or a method that fails on one model (out of memory, say), is reported
for that run alone in :attr:`ExplainReport.errors`; the other runs still return. Only a bad
request fails the whole call: an unreadable image, an unknown method or target class.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from kidney_lab import errors
from kidney_lab.data import pipeline
from kidney_lab.data import scan as scan_module
from kidney_lab.explain import cam

RunRef = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class ExplainReport:
    """The outcome of :func:`explain`.

    Attributes:
        scan: the scan that was explained (draw overlays on ``scan.image``).
        method: the method used.
        results: one :class:`~kidney_lab.explain.cam.Explanation` per run that worked, in the
            order the runs were given.
        errors: ``{"run_id", "message"}`` per run that did not.
        seconds: wall-clock time of the whole call (reading the image included).
    """

    scan: scan_module.Scan = dataclasses.field(repr=False)
    method: str
    results: list[cam.Explanation]
    errors: list[dict[str, str]]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when at least one run was explained."""
        return bool(self.results)


def explain(
    runs: RunRef | Sequence[RunRef],
    image: cam.ImageInput,
    method: str = "gradcam",
    target: str | int | None = None,
) -> ExplainReport:
    """Predict and explain one image with every run.

    Args:
        runs: run folders or run ids (one, or a sequence).
        image: a path, file bytes, a :class:`~kidney_lab.data.scan.Scan` or an array (see
            :func:`kidney_lab.explain.cam.load_image`).
        method: one of :data:`kidney_lab.explain.cam.METHODS`.
        target: the class every heat map explains; None: each model's own prediction.

    Returns:
        An :class:`ExplainReport`.

    Raises:
        kidney_lab.errors.ScanReadError: the image cannot be read.
        kidney_lab.errors.ConfigError: an unknown method or target class, or no run given.
    """
    started = time.perf_counter()
    method = cam.check_method(method)
    index = cam.target_index(target)
    references = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not references:
        raise errors.ConfigError("No run to explain with; give at least one run folder or id.")
    scan = cam.load_image(image)
    inputs: dict[int, np.ndarray] = {}
    results: list[cam.Explanation] = []
    failures: list[dict[str, str]] = []
    for reference in references:
        try:
            explainer = cam.load_explainer(reference, method)
            size = explainer.image_size
            if size not in inputs:
                inputs[size] = pipeline.prepare_scan(scan.image, size)
            results.append(explainer.explain_prepared(scan, inputs[size], index))
        except Exception as error:  # One run's failure, whatever it is, must not hide the others.
            failures.append({"run_id": _run_label(reference), "message": _message(error, method)})
    return ExplainReport(scan, method, results, failures, time.perf_counter() - started)


def _run_label(reference: RunRef) -> str:
    return Path(os.fspath(reference)).name or os.fspath(reference)


def _message(error: Exception, method: str) -> str:
    """A one-line message a user can act on, for any error one run raised."""
    if isinstance(error, errors.KidneyLabError):
        return str(error)
    if isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError)):
        return (
            f"Out of memory while explaining with {cam.get_method(method).display_name}; close other "
            "models or programs, or use gradcam, which needs the least memory."
        )
    text = errors.first_line(error, 300, empty="")
    return f"{cam.get_method(method).display_name} failed on this model: {type(error).__name__}: {text}"


def report_to_dict(report: ExplainReport, paths: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """The JSON form of a report (DESIGN.md's ``explain`` fields), heat maps left out.

    Args:
        report: the report.
        paths: run id -> ``{"heatmap": path, "overlay": path}`` of files written for it.
    """
    results = []
    for result in report.results:
        row = result.to_dict()
        row.update((paths or {}).get(result.run_id, {"heatmap": None, "overlay": None}))
        results.append(row)
    return {"method": report.method, "results": results, "errors": list(report.errors),
            "seconds": report.seconds}
