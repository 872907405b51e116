"""One scan through several runs: what the Compare page and ``python -m kidney_lab explain`` do.

The scan is read once and turned into one model input per input size; each run then gets its
cached explainer (:func:`kidney_lab.explain.cam.load_explainer`) and its compiled pass. A run
that cannot be loaded, or a method that fails on one model (out of memory, say), is reported
for that run alone in :attr:`ExplainReport.errors`; the other runs still return. Only a bad
request fails the whole call: an unreadable image, an unknown method or target class.

What the Compare page shows around the heat maps is decided here too, so that the page only
draws it: which runs it uses by default (:func:`usable_runs`, :func:`default_runs`), how far
the models agree (:func:`agreement`) and the predictions table it offers for download
(:func:`predictions_csv`, with the library's ``prob_<class>`` columns). Importing this module
loads no TensorFlow (the models load when :func:`explain` runs), so the page can ask these
questions before any model is needed.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kidney_lab import errors
from kidney_lab import runs as runs_module
from kidney_lab.data import classes
from kidney_lab.data import scan as scan_module

if TYPE_CHECKING:
    import numpy as np

    from kidney_lab.explain import cam

RunRef = str | os.PathLike
# Which runs the Compare page uses when nobody chose (see default_runs), in words.
DEFAULT_RUNS_RULE = "the latest completed run of each architecture in the newest study"
# The explanation method the Compare page opens with (and the app warms up).
DEFAULT_METHOD = "gradcam"


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
    from kidney_lab.data import pipeline
    from kidney_lab.explain import cam

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
    import tensorflow as tf

    from kidney_lab.explain import cam

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


# What the Compare page shows around the heat maps ---------------------------------------------


def usable_runs(workspace: str | os.PathLike[str]) -> list[runs_module.RunRecord]:
    """The runs of ``workspace`` that can be compared: completed, with a saved model and a
    model name, newest first."""
    return [record for record in runs_module.list_runs(workspace)
            if record.state == runs_module.COMPLETED and record.has_model and record.model]


def default_runs(
    completed: Sequence[runs_module.RunRecord], model_names: Sequence[str]
) -> dict[str, runs_module.RunRecord | None]:
    """The runs compared when nobody chose: :data:`DEFAULT_RUNS_RULE`.

    Args:
        completed: usable runs, newest first (see :func:`usable_runs`); the newest study is
            the one of the first run.
        model_names: the architectures, in the order to show them (registry names).

    Returns:
        Registry name -> that architecture's newest run in the newest study, or ``None`` where
        the study has none (other studies' runs are never mixed in by default).
    """
    study = next((record.study_id for record in completed), None)
    return {model: next((record for record in completed
                         if record.model == model and record.study_id == study), None)
            for model in model_names}


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How far several models agree on one scan.

    Attributes:
        total: how many models predicted.
        votes: class -> how many models predict it, most voted first.
        leader: the class most models predict, or ``None`` when two or more classes tie for it.
        count: how many models predict the most voted class (or each of the tied ones).
        text: one or two sentences of Markdown that say so, naming the models.
    """

    total: int
    votes: dict[str, int]
    leader: str | None
    count: int
    text: str

    @property
    def unanimous(self) -> bool:
        """True when every model predicts the same class."""
        return self.count == self.total


def agreement(results: Sequence[cam.Explanation]) -> Agreement:
    """How far the models behind ``results`` agree on their predicted class.

    Agreement is counted, never weighed: it is not a diagnosis, and several models can be
    wrong together.

    Raises:
        ValueError: ``results`` is empty (there is nothing to agree on).
    """
    if not results:
        raise ValueError("No model predicted this scan, so there is no agreement to report.")
    votes = collections.Counter(result.predicted for result in results)
    total = len(results)
    (leader, count), = votes.most_common(1)
    tied = list(votes.values()).count(count) > 1
    if total == 1:
        text = f"Only one model: {results[0].display_name} predicts **{leader}**."
    elif count == total:
        text = f"**All {total} models agree**: {leader}."
    elif tied:
        groups = "; ".join(
            f"{label}: {', '.join(result.display_name for result in results if result.predicted == label)}"
            for label, _ in votes.most_common()
        )
        text = f"**The models disagree** ({groups})."
    else:
        others = ", ".join(f"{result.display_name} predicts {result.predicted}"
                           for result in results if result.predicted != leader)
        text = f"**{count} of {total} models** predict **{leader}**; {others}."
    return Agreement(total=total, votes=dict(votes.most_common()), leader=None if tied else leader,
                     count=count, text=text)


def prediction_columns() -> list[str]:
    """The columns of :func:`predictions_csv`: the scan, the run, the method, the prediction,
    the class explained, one probability column per class (named as in every stored
    ``predictions.csv``: :func:`kidney_lab.evaluation.metrics.probability_columns`) and the
    seconds the model took."""
    from kidney_lab.evaluation import metrics

    return ["scan", "run_id", "model", "method", "predicted", "explained_class",
            *metrics.probability_columns(), "seconds"]


def predictions_csv(scans: Sequence[tuple[str, Sequence[cam.Explanation]]]) -> str:
    """The predictions of several scans by several runs as CSV text, one line per scan and run.

    Args:
        scans: ``(scan name, its explanations)`` per scan, in the order to list them.

    Returns:
        CSV with a header of :func:`prediction_columns`; probabilities with 6 decimals, seconds
        with 4.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(prediction_columns())
    for name, results in scans:
        for result in results:
            writer.writerow([name, result.run_id, result.model, result.method, result.predicted, result.target,
                             *[f"{result.probabilities[label]:.6f}" for label in classes.CLASS_NAMES],
                             f"{result.seconds:.4f}"])
    return buffer.getvalue()
