"""One scan through several runs: what the Compare page and ``python -m kidney_lab explain`` do.

The scan is read once and turned into one model input per input size; each run then gets its
cached explainer (:func:`kidney_lab.explain.cam.load_explainer`) and its compiled pass. A run
that cannot be loaded, or a method that fails on one model (out of memory, say), is reported
for that run alone in :attr:`ExplainReport.errors`; the other runs still return. Only a bad
request fails the whole call: an unreadable image, an unknown method or target class.

Before any model runs, the scan's content is checked (:func:`kidney_lab.data.content.check_scan`:
a DICOM that is not CT, an odd rescale, a colour photo, a constant image, pure noise); the
warnings travel with the report. Each model's answer carries its out-of-distribution score and
its calibrated probabilities (see :class:`kidney_lab.explain.cam.Explanation`).

What the Compare page shows around the heat maps is decided here too, so that the page only
draws it: which runs it uses by default (:func:`usable_runs`, :func:`default_runs`), which
caveats come before a model's class (:func:`trust`, the one place that decides them), how far
the models agree (:func:`agreement`, never counting flagged models), the predictions table it
offers for download (:func:`predictions_csv`, with the library's ``prob_<class>`` columns) and
the calibrated ensemble of the models shown (:func:`ensemble_result`: mean probabilities and one
combined heat map). Importing this module
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
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kidney_lab import errors
from kidney_lab import runs as runs_module
from kidney_lab.data import classes
from kidney_lab.data import content
from kidney_lab.data import phantom
from kidney_lab.data import scan as scan_module
from kidney_lab.evaluation import store
from kidney_lab.evaluation import trust as trust_files

if TYPE_CHECKING:
    import numpy as np

    from kidney_lab.explain import cam

RunRef = str | os.PathLike
# Which runs the Compare page uses when nobody chose (see default_runs), in words.
DEFAULT_RUNS_RULE = ("each architecture's latest completed run in the newest study; an architecture that study lacks "
                     "gets its own latest completed run from an older study")
# The explanation method the Compare page opens with (and the app warms up) when no stored
# faithfulness says which method points best (see default_method).
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
        warnings: the content checks of the scan, ``{"code", "message"}`` each
            (:func:`kidney_lab.data.content.check_scan`), made before any model ran.
        scan_is_phantom: True for a phantom of a kidney_lab phantom set (an image given by its
            path inside one), False for any other image given by path, None when not known
            (bytes, an array or a decoded scan).
    """

    scan: scan_module.Scan = dataclasses.field(repr=False)
    method: str
    results: list[cam.Explanation]
    errors: list[dict[str, str]]
    seconds: float
    warnings: list[dict[str, str]] = dataclasses.field(default_factory=list)
    scan_is_phantom: bool | None = None

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
    warnings = content.check_scan(scan)
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
    return ExplainReport(scan, method, results, failures, time.perf_counter() - started, warnings,
                         is_phantom_scan(image))


def is_phantom_scan(image: Any) -> bool | None:
    """Whether an image is a kidney_lab phantom: for a path, whether it lies in a class folder
    of a phantom set (:func:`kidney_lab.data.phantom.is_phantom_data`); None for anything else
    (bytes, arrays and decoded scans do not say where they came from)."""
    if not isinstance(image, (str, os.PathLike)):
        return None
    return phantom.is_phantom_data(Path(image).absolute().parent.parent)


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
        row["caveats"] = trust(result, report.scan_is_phantom)
        row.update((paths or {}).get(result.run_id, {"heatmap": None, "overlay": None}))
        results.append(row)
    return {"method": report.method, "warnings": [dict(warning) for warning in report.warnings],
            "scan_is_phantom": report.scan_is_phantom, "results": results, "errors": list(report.errors),
            "agreement": agreement(report.results).text if report.results else None,
            "seconds": report.seconds}


def trust(result: cam.Explanation, scan_is_phantom: bool | None) -> list[str]:
    """The caveats that come before one model's answer, most serious first (empty: none).

    This is the one place that decides them:

    - the run's detector flags the scan as out of distribution;
    - the model was trained on kidney_lab phantoms and the scan is real (or not known to be a
      phantom), or trained on real slices and the scan is a phantom (``run.json``'s data
      folder, through :func:`kidney_lab.data.phantom.is_phantom_data`);
    - on its own test images it predicts one class for nearly everything or scores at chance
      (:func:`kidney_lab.evaluation.trust.metrics_caveats` of its stored ``metrics.json``).

    Args:
        result: one model's explanation (its ``ood`` and ``run_dir`` are read when present).
        scan_is_phantom: see :attr:`ExplainReport.scan_is_phantom`.

    Returns:
        Short sentences, each starting with what is wrong.
    """
    caveats = []
    found = getattr(result, "ood", None)
    if found and found["flagged"]:
        caveats.append(out_of_distribution_text(found))
    run_dir = getattr(result, "run_dir", None)
    if run_dir is None:
        return caveats
    data_root = runs_module.read_info(run_dir).data_root
    trained_on_phantoms = None if not data_root else phantom.is_phantom_data(data_root)
    if trained_on_phantoms and scan_is_phantom is not True:
        caveats.append(
            "trained on synthetic phantoms only" + (" and this scan is not one" if scan_is_phantom is False else "")
            + ": its answer means nothing for a real CT slice"
        )
    elif trained_on_phantoms is False and scan_is_phantom:
        caveats.append("trained on real CT slices, and this is a synthetic phantom")
    try:
        stored = store.load_metrics(run_dir)
    except store.EvaluationError:
        stored = None
    caveats.extend(trust_files.metrics_caveats(stored))
    return caveats


def out_of_distribution_text(found: dict[str, Any]) -> str:
    """``"OUT OF DISTRIBUTION (score s > threshold t)"`` of a flagged ``ood`` result."""
    return f"OUT OF DISTRIBUTION (score {found['score']:.2f} > threshold {found['threshold']:.2f})"


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

    Training one new model must not drop the others from the page: the newest study's runs are
    kept, and every architecture it lacks is filled with that architecture's newest run.

    Args:
        completed: usable runs, newest first (see :func:`usable_runs`); the newest study is
            the one of the first run.
        model_names: the architectures, in the order to show them (registry names).

    Returns:
        Registry name -> that architecture's newest run in the newest study, else its newest
        run of any study, or ``None`` where it has no usable run at all.
    """
    study = next((record.study_id for record in completed), None)
    chosen = {}
    for model in model_names:
        own = [record for record in completed if record.model == model]
        chosen[model] = next((record for record in own if record.study_id == study), next(iter(own), None))
    return chosen


def default_method(run_dirs: Sequence[RunRef]) -> str:
    """The explanation method the Compare page opens with: the one whose heat maps point at the
    lesion most often on these runs' test phantoms (the mean pointing game of their stored
    ``faithfulness.json``, :func:`kidney_lab.runs.read_faithfulness`), among the methods measured
    on every run that has such a file; :data:`DEFAULT_METHOD` when none was measured, or on a tie
    with it.

    Args:
        run_dirs: the run folders shown (those of :func:`default_runs`).
    """
    measured: list[dict[str, float]] = []
    for run_dir in run_dirs:
        try:
            payload = runs_module.read_faithfulness(run_dir)
        except errors.KidneyLabError:
            continue
        scores = {
            method: float(values["pointing_game"])
            for method, values in ((payload or {}).get("methods") or {}).items()
            if isinstance(method, str) and isinstance(values, dict)
            and isinstance(values.get("pointing_game"), (int, float)) and not isinstance(values["pointing_game"], bool)
        }
        if scores:
            measured.append(scores)
    if not measured:
        return DEFAULT_METHOD
    common = set.intersection(*(set(scores) for scores in measured))
    means = {method: sum(scores[method] for scores in measured) / len(measured) for method in common}
    if not means:
        return DEFAULT_METHOD
    best = max(means.values())
    if means.get(DEFAULT_METHOD) == best:
        return DEFAULT_METHOD
    return min(method for method, value in means.items() if value == best)


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How far several models agree on one scan.

    Attributes:
        total: how many models predicted.
        votes: class -> how many unflagged models predict it, most voted first.
        leader: the class most unflagged models predict, or ``None`` when two or more classes
            tie for it or every model is flagged.
        count: how many unflagged models predict the most voted class (or each of the tied ones).
        text: one or two sentences of Markdown that say so, naming the models.
        flagged: how many models' detectors flag the scan as out of distribution; they are
            never counted as agreeing.
    """

    total: int
    votes: dict[str, int]
    leader: str | None
    count: int
    text: str
    flagged: int = 0

    @property
    def unanimous(self) -> bool:
        """True when every model predicts the same class and none is flagged."""
        return self.flagged == 0 and self.count == self.total


def agreement(results: Sequence[cam.Explanation]) -> Agreement:
    """How far the models behind ``results`` agree on their predicted class.

    Agreement is counted, never weighed: it is not a diagnosis, and several models can be
    wrong together. A model whose detector flags the scan as out of distribution is never
    counted: the text then speaks of "N of M unflagged models" and names the flagged ones.

    Raises:
        ValueError: ``results`` is empty (there is nothing to agree on).
    """
    if not results:
        raise ValueError("No model predicted this scan, so there is no agreement to report.")
    flagged = [result for result in results if _is_flagged(result)]
    if flagged:
        return _agreement_with_flagged(results, flagged)
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


def _ood_cells(result: Any) -> list[str]:
    found = getattr(result, "ood", None)
    return ["", ""] if not found else [f"{found['score']:.4f}", str(bool(found["flagged"]))]


def _is_flagged(result: Any) -> bool:
    found = getattr(result, "ood", None)
    return bool(found and found["flagged"])


def _agreement_with_flagged(results: Sequence[cam.Explanation], flagged: Sequence[cam.Explanation]) -> Agreement:
    """The agreement of the unflagged models, saying which models were left out and why."""
    counted = [result for result in results if not _is_flagged(result)]
    names = ", ".join(result.display_name for result in flagged)
    left_out = (f"{len(flagged)} of {len(results)} models ({names}) flag the scan as out of distribution "
                "and are not counted.")
    if not counted:
        return Agreement(total=len(results), votes={}, leader=None, count=0, flagged=len(flagged),
                         text=f"**Every model flags the scan as out of distribution** ({names}): no answer counts.")
    votes = collections.Counter(result.predicted for result in counted)
    (leader, count), = votes.most_common(1)
    tied = list(votes.values()).count(count) > 1
    unflagged = len(counted)
    if tied:
        groups = "; ".join(
            f"{label}: {', '.join(result.display_name for result in counted if result.predicted == label)}"
            for label, _ in votes.most_common()
        )
        text = f"**The {unflagged} unflagged models disagree** ({groups}). {left_out}"
    else:
        others = ", ".join(f"{result.display_name} predicts {result.predicted}"
                           for result in counted if result.predicted != leader)
        model_word = "model" if unflagged == 1 else "models"
        text = (f"**{count} of {unflagged} unflagged {model_word}** predict **{leader}**"
                f"{'; ' + others if others else ''}. {left_out}")
    return Agreement(total=len(results), votes=dict(votes.most_common()), leader=None if tied else leader,
                     count=count, text=text, flagged=len(flagged))


def prediction_columns() -> list[str]:
    """The columns of :func:`predictions_csv`: the scan, the run, the method, the prediction,
    the class explained, one probability column per class (named as in every stored
    ``predictions.csv``: :func:`kidney_lab.evaluation.metrics.probability_columns`), the
    seconds the model took, and the OOD score and flag (empty without a detector)."""
    from kidney_lab.evaluation import metrics

    return ["scan", "run_id", "model", "method", "predicted", "explained_class",
            *metrics.probability_columns(), "seconds", "ood_score", "ood_flagged"]


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
                             f"{result.seconds:.4f}", *_ood_cells(result)])
    return buffer.getvalue()


# The ensemble of the models that explained one scan ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnsembleVerdict:
    """The calibrated ensemble's answer for one scan (see :func:`ensemble_result`).

    Attributes:
        members: the run ids combined, in the order of the results.
        temperatures: run id -> the temperature its probabilities were calibrated with (1 for a
            run without calibration).
        probabilities: class -> the mean of the members' calibrated probabilities, in
            :data:`kidney_lab.data.classes.CLASS_NAMES` order.
        predicted: the class of highest ensemble probability.
        map_class: the class the combined map explains (``predicted`` unless another was asked for).
        heatmap: float32 ``(H, W)`` at the scan's size, in [0, 1]: the members' maps of
            ``map_class``, each weighted by its calibrated probability of that class, scaled
            like every member's map; None when no member's map of that class is at hand.
        map_weights: run id -> the weight of its map in ``heatmap`` (summing to 1).
        notes: what the reader should know: members without calibration, members whose map
            explains another class and so is left out of ``heatmap``.
    """

    members: tuple[str, ...]
    temperatures: dict[str, float]
    probabilities: dict[str, float]
    predicted: str
    map_class: str
    heatmap: np.ndarray | None = dataclasses.field(repr=False)
    map_weights: dict[str, float]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the heat map, as JSON-ready values (``explain --json``'s ``"ensemble"``)."""
        return {
            "predicted": self.predicted,
            "probabilities": dict(self.probabilities),
            "members": list(self.members),
            "temperatures": dict(self.temperatures),
            "weights": "equal",
            "map_class": self.map_class,
            "map_weights": dict(self.map_weights),
            "notes": list(self.notes),
        }


def ensemble_result(
    results: ExplainReport | Sequence[cam.Explanation],
    temperatures: dict[str, float] | None = None,
    map_class: str | None = None,
    explain_class: Callable[[cam.Explanation, str], cam.Explanation | None] | None = None,
) -> EnsembleVerdict | None:
    """The equal-weight calibrated ensemble of the models that explained one scan.

    Each member's probabilities are calibrated with its temperature
    (:func:`kidney_lab.evaluation.calibration.apply_temperature`) and averaged; the combined map
    is the members' maps of ``map_class`` weighted by their calibrated probability of it. A
    member whose map explains another class (``target``) is explained again for ``map_class``
    by ``explain_class`` when it is given, and otherwise left out of the map with a note.

    Args:
        results: a report of :func:`explain`, or its results (one scan).
        temperatures: run id -> temperature (see :func:`run_temperatures`); a run not in it is
            taken as uncalibrated (1) and noted.
        map_class: the class the combined map explains; the ensemble's prediction when None.
        explain_class: optional ``(result, class) -> Explanation`` that explains the same scan
            with the result's run for that class (the page's cache, or an explainer).

    Returns:
        The verdict, or None for fewer than two results (one model is no ensemble).

    Raises:
        kidney_lab.evaluation.calibration.CalibrationError: a bad temperature.
        kidney_lab.errors.ConfigError: an unknown ``map_class``.
    """
    import numpy as np

    from kidney_lab.evaluation import calibration

    members = list(results.results if isinstance(results, ExplainReport) else results)
    if len(members) < 2:
        return None
    known = temperatures or {}
    uncalibrated = [result.display_name for result in members if result.run_id not in known]
    notes = []
    if len(uncalibrated) == len(members):
        notes.append(f"None of the {len(members)} models has a calibration, so their probabilities are averaged "
                     "as they are.")
    elif uncalibrated:
        notes.append(f"No calibration for {', '.join(uncalibrated)}: used as they are.")
    used = {result.run_id: calibration.check_temperature(known.get(result.run_id, 1.0)) for result in members}
    calibrated = np.concatenate([
        calibration.apply_temperature([[result.probabilities[label] for label in classes.CLASS_NAMES]], used[result.run_id])
        for result in members
    ])
    mean = calibrated.mean(axis=0)
    predicted = classes.CLASS_NAMES[int(np.argmax(mean))]
    explained = predicted if map_class is None else classes.match_class(str(map_class))
    if explained is None:
        raise errors.ConfigError(f"Unknown class {map_class!r}; choose from {', '.join(classes.CLASS_NAMES)}.")
    maps: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    other_class: list[str] = []
    for row, result in zip(calibrated, members):
        chosen = result if _explains(result, explained) else None
        if chosen is None and explain_class is not None:
            try:
                chosen = explain_class(result, explained)
            except Exception as error:  # A map left out must not hide the ensemble's verdict.
                notes.append(f"{result.display_name} could not be explained for {explained}: "
                             f"{errors.first_line(error, 200)}")
                continue
        if chosen is None:
            other_class.append(f"{result.display_name} (a map of {result.target})")
            continue
        maps[result.run_id] = np.asarray(chosen.heatmap, dtype=np.float32)
        weights[result.run_id] = float(row[classes.CLASS_NAMES.index(explained)])
    if other_class:
        notes.append(f"Left out of the map of {explained}: {', '.join(other_class)}.")
    total = sum(weights.values())
    shares = {run_id: (weight / total if total > 0 else 1.0 / len(weights)) for run_id, weight in weights.items()}
    heatmap = None
    if maps:
        combined = sum(np.float32(shares[run_id]) * values for run_id, values in maps.items())
        low, high = float(combined.min()), float(combined.max())
        heatmap = ((combined - low) / (high - low) if high > low else np.zeros_like(combined)).astype(np.float32)
    return EnsembleVerdict(
        members=tuple(result.run_id for result in members),
        temperatures=used,
        probabilities={label: float(value) for label, value in zip(classes.CLASS_NAMES, mean)},
        predicted=predicted,
        map_class=explained,
        heatmap=heatmap,
        map_weights=shares,
        notes=tuple(notes),
    )


def run_temperatures(run_dirs: Sequence[RunRef]) -> dict[str, float]:
    """Run id (the folder's name) -> the temperature of its ``calibration.json``, for the runs
    that have one (see :func:`kidney_lab.evaluation.study_ensemble.read_temperature`).

    Raises:
        kidney_lab.evaluation.calibration.CalibrationError: a damaged ``calibration.json``.
    """
    from kidney_lab.evaluation import study_ensemble

    found = {}
    for run_dir in run_dirs:
        temperature = study_ensemble.read_temperature(run_dir)
        if temperature is not None:
            found[_run_label(run_dir)] = temperature
    return found


def _explains(result: cam.Explanation, label: str) -> bool:
    """Whether the result's map is a map of ``label`` (always, for a method whose map is the same
    for every class)."""
    from kidney_lab.explain import cam

    return result.target == label or not cam.get_method(result.method).explains_a_class
