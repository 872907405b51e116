"""Evaluation: one run in depth, or two runs compared on the same images.

Everything drawn comes from a run's stored evaluation (``predictions.csv``, one row per image,
read and validated by :mod:`kidney_lab.evaluation.store`) through the library's functions:
:func:`~kidney_lab.evaluation.stats.metrics_with_intervals` (scores, confusion matrix,
calibration, and intervals that resample near-duplicate clusters, roughly CT series, except on a
random split, each saying which), the series-level verdicts of
:func:`~kidney_lab.evaluation.stats.series_scores`, the ROC and precision-recall curves,
:func:`~kidney_lab.evaluation.stats.compare_runs` for two runs (the paired cluster test on a
grouped split or a folder, McNemar's test on a random split), ``history.csv`` for the training curves and ``faithfulness.json`` for the heat
maps. A run evaluated on another folder keeps that evaluation beside its test split; the page
can start one as a background job (``python -m kidney_lab evaluate RUN --data DIR``, see
:func:`kidney_lab.training.jobs.start_evaluate_job`), shows its progress from the job's files
while it runs (leaving the page does not stop it) and opens its result when it ends. Links carry the run in the URL (``?run=...&source=...``), so the Leaderboard's
"Open in Evaluation" and a shared link open the same view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kidney_lab import runs
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.evaluation import metrics
from kidney_lab.evaluation import operating_points
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.training import jobs
from pages import common

ONE_RUN = "One run"
TWO_RUNS = "Compare two runs"
# URL parameters: the run, its evaluation, and the second run of a comparison.
RUN_PARAMETER = "run"
SOURCE_PARAMETER = "source"
OTHER_PARAMETER = "compare"
MISTAKES_SHOWN = 24

MISTAKE_COLUMNS = 6
# Pixels on a side of a cell's thumbnails (about two columns' width, so they stay sharp).
THUMBNAIL_SIDE = 256
# p-values below this are called unlikely to be chance (the conventional 5% level).
SIGNIFICANCE = 0.05
CHART_MARGIN = dict(l=10, r=10, t=40, b=10)
# faithfulness.json score -> (column label, what it means).
FAITHFULNESS_COLUMNS = {
    "pointing_game": ("pointing game", "Share of lesion images whose heat-map maximum lies in the lesion."),
    "random_weights_pointing_game": (
        "pointing game, random weights",
        "The same for this architecture with random weights: a map that finds lesions without what the "
        "model learned (an edge detector) scores as high here as above."),
    "energy_in_mask": ("energy in mask", "Share of the map's energy inside the lesion mask."),
    "deletion_auc": ("deletion AUC", "Probability as the most salient pixels are removed; lower is better."),
    "random_deletion_auc": ("deletion, random order", "The same with pixels in random order."),
    "insertion_auc": ("insertion AUC", "Probability as the most salient pixels are put back; higher is better."),
    "random_insertion_auc": ("insertion, random order", "The same with pixels in random order."),
    "randomization_spearman": (
        "rank correlation with random weights",
        "Spearman correlation of the maps with those of random weights (Adebayo et al., 2018); near 1 means "
        "the map ignores what the model learned, so lower is better."),
}


def main() -> None:
    """Draw the Evaluation page."""
    st.title("Evaluation")
    st.markdown(
        "Everything here is computed from a run's stored predictions (one row per image, with its "
        "path, true label and probabilities): pick a run and the evaluation to look at, or two "
        "runs to compare on the same images."
    )
    base = common.workspace()
    catalogue: dict[str, dict[str, Any]] | None = None
    with common.shown_errors("listing the evaluated runs"):
        catalogue = evaluated_runs(base)
    if catalogue is None:
        return
    if not catalogue:
        explain_empty(base)
        return
    apply_link(base, catalogue)
    st.session_state.setdefault("evaluation_mode", ONE_RUN)
    mode = st.segmented_control("View", [ONE_RUN, TWO_RUNS], key="evaluation_mode", required=True)
    if mode == TWO_RUNS:
        two_runs(catalogue)
    else:
        one_run(catalogue)


# Choosing runs --------------------------------------------------------------------------------


def evaluated_runs(base: Path) -> dict[str, dict[str, Any]]:
    """Every run with a stored evaluation, newest first: run id -> ``record`` and ``evaluations``.

    ``evaluations`` maps each source (``"test"`` or a fingerprint) to its entry of
    :func:`kidney_lab.evaluation.store.list_evaluations`.
    """
    catalogue = {}
    for record in runs.list_runs(base):
        if record.state == runs.BROKEN:
            continue
        evaluations = {item["source"]: item for item in store.list_evaluations(record.path)}
        if evaluations:
            catalogue[record.run_id] = {"record": record, "evaluations": evaluations}
    return catalogue


def explain_empty(base: Path) -> None:
    """What to do when no run has been evaluated."""
    trained = runs.list_runs(base)
    detail = (f" The workspace holds {len(trained)} run(s) without a stored evaluation (still training, failed "
              "or cancelled); a run is evaluated on its test split when its training ends."
              if trained else "")
    st.info(
        "No evaluated run in this workspace yet." + detail + " Build the demo study on the Home page (no "
        "download needed), or train on your dataset on the Train page; each run then appears here.",
        icon=":material/analytics:",
    )
    common.start_links()


def apply_link(base: Path, catalogue: dict[str, dict[str, Any]]) -> None:
    """Open the run named in the URL; say so plainly when it does not exist.

    The pickers write their choice back to the URL at the end of each run, so a URL that differs
    from the last one written is a new link (typed, shared, or from the Leaderboard). It is
    applied then, and also when the pickers have no state (the page was left and opened again),
    never on a rerun after the user picked something else.
    """
    pending = st.session_state.pop("evaluation_pending", None)
    if pending:
        st.session_state.update(pending)
    params = st.query_params
    link = (params.get(RUN_PARAMETER), params.get(SOURCE_PARAMETER), params.get(OTHER_PARAMETER))
    fresh = "evaluation_run" not in st.session_state
    if link[0] is None or (st.session_state.get("evaluation_link") == link and not fresh):
        return
    st.session_state["evaluation_link"] = link
    run_id, source, other = link
    if run_id not in catalogue:
        st.error(
            f"There is no evaluated run `{run_id}` in the workspace `{base}`: it may have been deleted, "
            "not evaluated yet, or the link names a run of another workspace. Pick a run below.",
            icon=":material/search_off:",
        )
        return
    st.session_state["evaluation_run"] = run_id
    st.session_state["evaluation_mode"] = TWO_RUNS if other in catalogue and other != run_id else ONE_RUN
    if other in catalogue:
        st.session_state["evaluation_other"] = other
    if source is not None and source in catalogue[run_id]["evaluations"]:
        st.session_state["evaluation_source"] = source
    elif source is not None:
        st.warning(f"Run `{run_id}` has no evaluation `{source}`; showing another one of its evaluations.")


def run_label(catalogue: dict[str, dict[str, Any]], run_id: str) -> str:
    """How a run looks in a picker: model, when it started (the start of its id) and its split."""
    record = catalogue[run_id]["record"]
    name = record.info.display_name or record.model or "?"
    split = record.info.split_strategy or "?"
    return f"{name} · {run_id[:15]} ({split} split)"


def source_label(evaluation: dict[str, Any]) -> str:
    """How an evaluation looks in a picker: test split or folder, with its image count."""
    images = f"{evaluation['images']:,} images" if isinstance(evaluation.get("images"), int) else "images unknown"
    if evaluation["source"] == runs.TEST_SOURCE:
        return f"Test split ({evaluation.get('kind') or '?'}, {images})"
    folder = Path(str(evaluation.get("data") or evaluation["source"])).name
    return f"Folder {folder} ({evaluation['source']}, {images})"


def pick(key: str, label: str, options: list[str], **arguments: Any) -> str:
    """A selectbox whose remembered value falls back to the first option when it is gone."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    return st.selectbox(label, options, key=key, **arguments)


def write_link(run_id: str, source: str, other: str | None = None) -> None:
    """Put the current choice in the URL (shareable), and remember it as applied."""
    wanted = {RUN_PARAMETER: run_id, SOURCE_PARAMETER: source}
    if other is not None:
        wanted[OTHER_PARAMETER] = other
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)
    st.session_state["evaluation_link"] = (run_id, source, other)


# Cached reads ---------------------------------------------------------------------------------


def stamp(path: Path, source: str) -> int:
    """The modification time of an evaluation's predictions.csv (-1 when it is missing)."""
    try:
        return runs.predictions_path(path, source).stat().st_mtime_ns
    except OSError:
        return -1


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def predictions_of(path: str, source: str, mtime_ns: int) -> pd.DataFrame:
    """The validated predictions of one evaluation; ``mtime_ns`` is part of the cache key only."""
    return store.load_predictions(path, source)


@st.cache_data(max_entries=32, ttl=3600, show_spinner="Scoring the stored predictions ...")
def scores_of(path: str, source: str, mtime_ns: int) -> dict[str, Any]:
    """:func:`stats.metrics_with_intervals` of one evaluation (its split kind decides the
    resampling) plus its ``roc`` and ``pr`` curves, and ``series`` (:func:`stats.series_scores`,
    ``None`` when the predictions do not know their clusters)."""
    table = predictions_of(path, source, mtime_ns)
    scores = stats.metrics_with_intervals(table, store.split_kind(path, source))
    series = stats.series_scores(table) if stats.has_clusters(table) else None
    return {**scores, "roc": metrics.roc_curves(table), "pr": metrics.pr_curves(table), "series": series}


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Pairing the two runs' predictions ...")
def paired(path_a: str, path_b: str, source: str, mtimes: tuple[int, int]) -> dict[str, Any]:
    """:func:`stats.compare_runs` of two runs' evaluations ``source`` (the cluster test or McNemar's,
    as their split calls for); ``mtimes`` is part of the cache key only."""
    return stats.compare_runs(path_a, path_b, source)


def stored_metrics(path: Path, source: str) -> dict[str, Any]:
    """The evaluation's metrics.json (facts only evaluation knew), or ``{}`` when unreadable."""
    try:
        return store.load_metrics(path, source)
    except store.EvaluationError:
        return {}


# One run --------------------------------------------------------------------------------------


def one_run(catalogue: dict[str, dict[str, Any]]) -> None:
    """Pickers, then every view of one evaluation of one run."""
    ids = list(catalogue)
    picker, source_picker = st.columns([3, 2])
    with picker:
        run_id = pick("evaluation_run", "Run", ids, format_func=lambda value: run_label(catalogue, value))
    evaluations = catalogue[run_id]["evaluations"]
    with source_picker:
        source = pick("evaluation_source", "Evaluated on", list(evaluations),
                      format_func=lambda value: source_label(evaluations[value]),
                      help="The run's own test split, or a folder it was evaluated on after training.")
    write_link(run_id, source)
    record = catalogue[run_id]["record"]
    with common.shown_errors("evaluating on another folder"):
        external_form(record)
    scores = None
    with common.shown_errors(f"reading the evaluation of {run_id}"):
        scores = scores_of(str(record.path), source, stamp(record.path, source))
    if scores is None:
        return
    stored = stored_metrics(record.path, source)
    draw_summary(evaluations[source], scores, stored)
    if record.weights_note:
        st.info(f"Weights: {record.weights_note}", icon=":material/info:")
    matrix, per_class = st.columns([5, 6], gap="large")
    with matrix, common.shown_errors("drawing the confusion matrix"):
        draw_confusion(scores)
    with per_class, common.shown_errors("drawing the per-class metrics"):
        draw_per_class_bars(scores)
    with common.shown_errors("drawing the per-class metrics"):
        draw_per_class_table(scores)
    with common.shown_errors("choosing an operating point"):
        draw_operating_point(record.path, source, scores)
    with common.shown_errors("drawing the series-level results"):
        draw_series(scores)
    with common.shown_errors("drawing the ROC and precision-recall curves"):
        draw_curves_per_class(scores)
    with common.shown_errors("drawing the reliability diagram"):
        draw_reliability(scores)
    with common.shown_errors("drawing the training curves"):
        draw_training(record, stored)
    with common.shown_errors("showing the images of a cell"):
        draw_cell_images(record.path, source, scores)
    with common.shown_errors("reading the heat-map faithfulness"):
        draw_faithfulness(record.path, source)


def external_form(record: runs.RunRecord) -> None:
    """Evaluate the run on another folder in a background job (stored beside its test results).

    While the run's newest evaluate job runs, its progress is drawn (refreshed every few
    seconds) instead of the form; when a job this session watched ends, the page opens the
    evaluation it stored.
    """
    base = common.workspace()
    job = next(iter(jobs.evaluate_jobs(record.run_id, base)), None)
    running = job is not None and job.is_active
    with st.expander("Evaluate this run on another folder", icon=":material/create_new_folder:", expanded=running):
        st.caption(
            "Every image of a folder in the Kaggle layout (one sub-folder per class) is predicted by this run's "
            "saved model; the predictions and scores are stored in the run under the folder's fingerprint, so the "
            "test results stay as they were. It runs in the background (leaving the page does not stop it) and can "
            "take a while for thousands of images."
        )
        if running:
            live_evaluate_job(job.job_id, base)
            return
        if job is not None:
            common.draw_evaluate_job(job, base)
            open_result(job)
        choice = common.data_choice()
        with st.form("evaluation-external", border=False):
            field, button = st.columns([5, 1], vertical_alignment="bottom")
            folder = field.text_input("Folder", placeholder=str(choice.folder or "/data/another-hospital"),
                                      help="An absolute path on the machine that runs the app.")
            submitted = button.form_submit_button("Evaluate", type="primary", icon=":material/play_arrow:")
        if not submitted:
            return
        started = jobs.start_evaluate_job(record.path, folder, base)
        st.session_state["evaluation_watching"] = started.job_id
        st.rerun()


@st.fragment(run_every=common.REFRESH_SECONDS)
def live_evaluate_job(job_id: str, base: Path) -> None:
    """An evaluate job's progress, read again from its files every few seconds; the whole page
    is drawn again when it ends (to show its result)."""
    job = jobs.read_job(job_id, base)
    common.draw_evaluate_job(job, base)
    if not job.is_active:
        st.rerun()


def open_result(job: jobs.JobRecord) -> None:
    """Once, when a job started or watched in this session has ended: pick the evaluation it
    stored and say so above the scores."""
    if st.session_state.get("evaluation_watching") != job.job_id:
        return
    del st.session_state["evaluation_watching"]
    result = job.result()
    if result is None:
        return
    st.session_state["evaluation_pending"] = {"evaluation_source": result["evaluated_on"]}
    st.session_state["evaluation_done"] = (
        f"Evaluated on {result['images']:,} images of {result.get('data')}: accuracy {result['accuracy']:.3f}; "
        "shown below."
    )
    st.rerun()


def draw_summary(evaluation: dict[str, Any], scores: dict[str, Any], stored: dict[str, Any]) -> None:
    """The headline scores with their intervals, and what the images were."""
    done = st.session_state.pop("evaluation_done", None)
    if done:
        st.success(done, icon=":material/check_circle:")
    intervals = scores["intervals"]
    cells = st.columns(6)
    cells[0].metric("Images", f"{scores['images']:,}")
    resampled = stats.resampling_words(intervals)
    for cell, key, label in ((cells[1], "accuracy", "Accuracy"), (cells[2], "macro_f1", "Macro F1")):
        low, high = intervals[key]
        cell.metric(label, f"{scores[key]:.3f}", help=f"95% interval {low:.3f}–{high:.3f} "
                    f"({intervals['resamples']:,} bootstrap resamples {resampled}).")
        cell.caption(f"95% CI {low:.3f}–{high:.3f} {resampled}")
    cells[3].metric("Balanced accuracy", f"{scores['balanced_accuracy']:.3f}", help="Mean recall over the classes.")
    auc = scores["macro_roc_auc"]
    cells[4].metric("Macro ROC AUC", "n/a" if auc is None else f"{auc:.3f}",
                    help="One-vs-rest, averaged over the classes where it is defined.")
    cells[5].metric("ECE", f"{scores['ece']:.3f}", help="Expected calibration error (10 bins); 0 is perfectly calibrated.")
    degenerate = metrics.degenerate(scores)
    if degenerate:
        st.warning(degenerate + " Train it longer or with other settings before comparing it with others.",
                   icon=":material/report:")
    duplicates = stored.get("test_with_duplicate_in_train")
    if evaluation["source"] == runs.TEST_SOURCE:
        what = (f"the test split of a **{evaluation.get('kind') or 'unknown'}** split"
                + (f" (`{stored['split_id']}`)" if stored.get("split_id") else "")
                + (f" of dataset `{stored['fingerprint']}`" if stored.get("fingerprint") else ""))
    else:
        what = f"the folder `{evaluation.get('data')}` (fingerprint `{evaluation['source']}`), evaluated after training"
    when = f" on {str(evaluation['evaluated'])[:16].replace('T', ' ')} UTC" if evaluation.get("evaluated") else ""
    st.caption(f"Evaluated{when} on {what}.")
    if isinstance(duplicates, int) and duplicates > 0:
        st.warning(
            f"{duplicates:,} of these {scores['images']:,} images have a near-duplicate in this run's training "
            "images: the scores are optimistic, because the model may recognise the slice rather than the lesion.",
            icon=":material/content_copy:",
        )
    elif duplicates is None and stored.get("duplicate_check"):
        st.caption(f"Near-duplicates of training images could not be counted: {stored['duplicate_check']}")
    elif isinstance(duplicates, int):
        st.caption("None of these images has a near-duplicate among this run's training images.")
    draw_resampling(scores)


def draw_resampling(scores: dict[str, Any]) -> None:
    """What the intervals resampled and why, the clusters per class, and a warning for each class
    whose score rests on fewer than three series."""
    intervals = scores["intervals"]
    per_class = scores.get("clusters_per_class")
    counts = ("; clusters (series) per class: " + ", ".join(f"{name} {count}" for name, count in per_class.items())
              if per_class is not None else "")
    st.caption(f"Intervals {stats.resampling_words(intervals)}: {intervals['reason']}{counts}.")
    warnings = stats.few_cluster_warnings(per_class)
    if warnings:
        st.warning("Few series behind some scores. " + " ".join(warnings), icon=":material/groups:")


def draw_confusion(scores: dict[str, Any]) -> None:
    """The confusion matrix as a heat map, in counts or row-normalised."""
    st.subheader("Confusion matrix")
    normalised = st.toggle("Row-normalised (share of each true class)", key="evaluation_normalised",
                           help="Each row divided by its images: the diagonal is each class's recall.")
    names = list(scores["classes"])
    counts = scores["confusion_matrix"]
    if normalised:
        rates = metrics.confusion_rates(counts)
        values = rates.tolist()
        text = [[("–" if pd.isna(rate) else f"{rate:.0%}") for rate in row] for row in rates]
    else:
        values = counts
        text = [[f"{count:,}" for count in row] for row in counts]
    figure = go.Figure(go.Heatmap(
        z=values, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
        customdata=counts, hovertemplate="true %{y}, predicted %{x}: %{customdata} images<extra></extra>",
        zmin=0, zmax=1 if normalised else None, showscale=False, textfont=dict(size=16),
    ))
    figure.update_layout(height=420, margin=CHART_MARGIN, xaxis_title="predicted", yaxis_title="true")
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(side="top")
    st.plotly_chart(figure, width="stretch", key="evaluation_confusion")


def draw_per_class_bars(scores: dict[str, Any]) -> None:
    """Precision, recall and F1 of each class as grouped bars."""
    st.subheader("Per class")
    figure = go.Figure()
    for key, label, colour in (("precision", "precision", "#9ecae1"), ("recall", "recall", "#4292c6"),
                               ("f1", "F1", "#08519c")):
        figure.add_trace(go.Bar(x=list(scores["classes"]), y=[scores["per_class"][name][key] for name in scores["classes"]],
                                name=label, marker_color=colour,
                                hovertemplate="%{x}: " + label + " %{y:.3f}<extra></extra>"))
    figure.update_layout(barmode="group", height=420, margin=CHART_MARGIN, yaxis_range=[0, 1.05],
                         legend=dict(orientation="h", y=1.1))
    st.plotly_chart(figure, width="stretch", key="evaluation_per_class")


def draw_per_class_table(scores: dict[str, Any]) -> None:
    """Precision, recall, specificity, F1, ROC AUC, AP and images of each class, and their averages."""
    rows = [{"class": name, **scores["per_class"][name]} for name in scores["classes"]]
    images = sum(scores["per_class"][name]["support"] for name in scores["classes"])
    rows += [{"class": f"{average} average", **scores[average], "support": images} for average in ("macro", "weighted")]
    table = pd.DataFrame(rows)[["class", "precision", "recall", "specificity", "f1", "roc_auc",
                                "average_precision", "support"]]
    score = {"format": "%.3f"}
    st.dataframe(table, hide_index=True, column_config={
        "precision": st.column_config.NumberColumn(**score, help="Of the images predicted as this class, the share that are."),
        "recall": st.column_config.NumberColumn(**score, help="Sensitivity: of the images of this class, the share found."),
        "specificity": st.column_config.NumberColumn(**score, help="Of the images of other classes, the share not called this class."),
        "f1": st.column_config.NumberColumn("F1", **score),
        "roc_auc": st.column_config.NumberColumn("ROC AUC", **score, help="One-vs-rest; empty when undefined."),
        "average_precision": st.column_config.NumberColumn("average precision", **score, help="One-vs-rest."),
        "support": st.column_config.NumberColumn("images", format="localized"),
    }, placeholder="undefined")


@st.cache_data(max_entries=64, ttl=3600, show_spinner="Scoring the operating point ...")
def operating_of(path: str, source: str, mtimes: tuple[int, int], class_name: str, target: float,
                 prevalence: float) -> dict[str, Any]:
    """:func:`operating_points.operating_point` of one evaluation; ``mtimes`` (of the validation and
    the evaluated predictions) is part of the cache key only."""
    return operating_points.operating_point(path, class_name, target, prevalence, source)


def draw_operating_point(path: Path, source: str, scores: dict[str, Any]) -> None:
    """A class, a target sensitivity and a prevalence: the threshold chosen on the run's validation
    predictions, and the test sensitivity, specificity, PPV and NPV at it, with intervals."""
    st.subheader("Operating point")
    st.caption("One class against the rest on its probability: the threshold is chosen on the run's **validation** "
               "images (the highest one whose validation sensitivity reaches the target), then scored on these images, "
               "which never move it. PPV and NPV follow from sensitivity and specificity at the prevalence you set "
               "(Bayes' rule): the share of the class in the clinic is rarely the test set's.")
    validation = runs.validation_predictions_path(path)
    if not validation.is_file():
        st.info(f"This run has no validation predictions ({validation.name}), so no threshold can be chosen on "
                f"validation: {operating_points.FIT_HINT.replace('RUN', f'`{path}`')}.", icon=":material/tune:")
        return
    names = list(scores["classes"])
    class_box, target_box, prevalence_box = st.columns([2, 3, 2], vertical_alignment="bottom")
    class_name = class_box.selectbox("Class", names, index=names.index(operating_points.DEFAULT_CLASS),
                                     key="evaluation_operating_class")
    target = target_box.slider("Target sensitivity (on validation)", 0.50, 1.00,
                               operating_points.DEFAULT_TARGET_SENSITIVITY, 0.01, key="evaluation_operating_target",
                               help="The share of this class's validation images the threshold must catch.")
    support = scores["per_class"][class_name]["support"]
    share = min(max(support / scores["images"] * 100, 0.1), 99.9)
    prevalence = prevalence_box.number_input(
        "Prevalence (%)", 0.1, 99.9, round(share, 1), 0.5, format="%.1f", key=f"evaluation_prevalence_{class_name}",
        help="The share of this class among the scans where the model would be used; starts at its share here.")
    result = operating_of(str(path), source, (validation.stat().st_mtime_ns, stamp(path, source)), class_name,
                          float(target), float(prevalence) / 100)
    test, chosen = result["test"], result["validation"]
    intervals = test["intervals"]

    def value(number: float | None) -> str:
        return "undefined" if number is None else f"{number:.3f}"

    def interval(key: str) -> str:
        bounds = intervals[key]
        return "undefined" if bounds is None else f"{bounds[0]:.3f}–{bounds[1]:.3f}"

    at = f"at prevalence {prevalence:.1f}%"
    table = pd.DataFrame([
        {"measure": "sensitivity", "validation": value(chosen["sensitivity"]), "here": value(test["sensitivity"]),
         "95% CI": interval("sensitivity")},
        {"measure": "specificity", "validation": value(chosen["specificity"]), "here": value(test["specificity"]),
         "95% CI": interval("specificity")},
        {"measure": f"PPV {at}", "validation": "", "here": value(test["ppv"]), "95% CI": interval("ppv")},
        {"measure": f"NPV {at}", "validation": "", "here": value(test["npv"]), "95% CI": interval("npv")},
    ])
    numbers, words = st.columns([3, 2])
    numbers.dataframe(table, hide_index=True, column_config={
        "validation": st.column_config.TextColumn(help=f"On the run's {chosen['images']:,} validation images, where "
                                                       "the threshold was chosen."),
        "here": st.column_config.TextColumn("these images", help="On the evaluation shown above."),
        "95% CI": st.column_config.TextColumn(help=f"Percentile bootstrap {stats.resampling_words(intervals)}."),
    })
    words.metric(f"Threshold on P({class_name})", f"{result['threshold']:.4f}",
                 help="An image is called this class when the model's probability for it is at least this.")
    words.caption(
        f"Here: {test['true_positives']:,} of {test['positives']:,} {class_name} images found, "
        f"{test['false_positives']:,} of {test['images'] - test['positives']:,} others called {class_name}. "
        f"Intervals {stats.resampling_words(intervals)}: {intervals['reason']}.")


def draw_series(scores: dict[str, Any]) -> None:
    """Series-level results: each near-duplicate cluster's mean-probability verdict against its
    label, the series-level accuracy and recall per class, and which series the model gets wrong."""
    st.subheader("Series-level results")
    series = scores.get("series")
    if series is None:
        st.info("These predictions were stored without their near-duplicate clusters, so the series are not known; "
                "evaluate the run again to see them.", icon=":material/info:")
        return
    st.caption(
        "The slices of one CT series (one near-duplicate cluster) are not independent: a model gets a series right "
        "or wrong together. A series' verdict is the class with the highest mean probability over its slices."
    )
    cells = st.columns(1 + len(series["per_class"]))
    cells[0].metric("Series right", f"{series['right']} of {series['series']}", help="Series-level accuracy.")
    cells[0].caption(f"series-level accuracy {series['accuracy']:.3f} (slice-level {scores['accuracy']:.3f})")
    for cell, (name, item) in zip(cells[1:], series["per_class"].items()):
        cell.metric(f"{name} series right", f"{item['right']} of {item['series']}",
                    help=f"Series whose label is {name} and whose verdict is {name}.")
    verdicts = series["verdicts"]
    wrong = verdicts[~verdicts["correct"]]
    if wrong.empty:
        st.success(f"The verdict is right for every one of the {series['series']} series.", icon=":material/check_circle:")
    else:
        st.markdown(f"**Series the model gets wrong** ({len(wrong)} of {series['series']})")
        st.dataframe(series_table(wrong), hide_index=True, key="evaluation_series_wrong")
    with st.expander(f"All {series['series']} series"):
        st.dataframe(series_table(verdicts), hide_index=True, key="evaluation_series_all")


def series_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts of :func:`stats.cluster_verdicts` with readable columns."""
    table = pd.DataFrame({
        "series (cluster)": verdicts["cluster"].astype(str),
        "label": verdicts["true_label"],
        "verdict": verdicts["predicted_label"],
        "right": verdicts["correct"],
        "slices": verdicts["images"],
        "slices right": verdicts["images_right"].round(3),
    })
    for name in CLASS_NAMES:
        table[f"mean P({name})"] = verdicts[metrics.PROBABILITY_PREFIX + name].round(3)
    return table


def draw_curves_per_class(scores: dict[str, Any]) -> None:
    """One-vs-rest ROC and precision-recall curves of every class, AUC and AP in the legend."""
    st.subheader("ROC and precision-recall curves")
    roc_column, pr_column = st.columns(2)
    roc = go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                             name="chance", hoverinfo="skip"))
    pr = go.Figure()
    for name in scores["classes"]:
        colour = common.CLASS_COLOURS.get(name, "#888")
        curve = scores["roc"][name]
        if curve["auc"] is None:
            roc.add_trace(go.Scatter(x=[None], y=[None], name=f"{name} (undefined: one kind only)", mode="lines"))
        else:
            roc.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", line=dict(color=colour, width=2),
                                     name=f"{name} (AUC {curve['auc']:.3f})",
                                     hovertemplate=name + ": FPR %{x:.3f}, TPR %{y:.3f}<extra></extra>"))
        curve = scores["pr"][name]
        if curve["average_precision"] is None:
            pr.add_trace(go.Scatter(x=[None], y=[None], name=f"{name} (no images of it)", mode="lines"))
            continue
        pr.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", line=dict(color=colour, width=2),
                                name=f"{name} (AP {curve['average_precision']:.3f})",
                                hovertemplate=name + ": recall %{x:.3f}, precision %{y:.3f}<extra></extra>"))
        pr.add_trace(go.Scatter(x=[0, 1], y=[curve["prevalence"]] * 2, mode="lines", showlegend=False,
                                line=dict(dash="dot", color=colour, width=1),
                                hovertemplate=f"{name}: a guess scores precision {curve['prevalence']:.3f}<extra></extra>"))
    # ROC curves hug the top left and PR curves the top right: each legend sits in the free corner.
    for figure, title, x_title, y_title, corner in (
        (roc, "ROC, one class against the rest", "false positive rate", "true positive rate", (0.98, "right")),
        (pr, "Precision-recall", "recall", "precision", (0.02, "left")),
    ):
        figure.update_layout(title=title, height=380, margin=CHART_MARGIN, xaxis_title=x_title, yaxis_title=y_title,
                             legend=dict(x=corner[0], y=0.04, xanchor=corner[1], yanchor="bottom",
                                         bgcolor="rgba(255,255,255,0.85)"))
        figure.update_xaxes(range=[-0.01, 1.01])
        figure.update_yaxes(range=[-0.01, 1.02])
    roc_column.plotly_chart(roc, width="stretch", key="evaluation_roc")
    pr_column.plotly_chart(pr, width="stretch", key="evaluation_pr")
    st.caption("Dotted lines: chance (ROC) and each class's share of the images, the precision of a guess (PR). "
               "With few images per class the curves are steps and the areas are uncertain.")


def draw_reliability(scores: dict[str, Any]) -> None:
    """The reliability diagram: accuracy against confidence per bin, with the ECE."""
    calibration = scores["calibration"]
    st.subheader("Calibration")
    chart, words = st.columns([3, 2])
    bins = [row for row in calibration["reliability"] if row["count"]]
    figure = go.Figure()
    figure.add_trace(go.Bar(
        x=[(row["lower"] + row["upper"]) / 2 for row in bins], y=[row["accuracy"] for row in bins],
        width=[(row["upper"] - row["lower"]) * 0.92 for row in bins], name="accuracy in the bin",
        marker_color="#4292c6", text=[f"n={row['count']:,}" for row in bins], textposition="outside",
        customdata=[[row["lower"], row["upper"], row["mean_confidence"]] for row in bins],
        hovertemplate="confidence %{customdata[0]:.1f}–%{customdata[1]:.1f}: accuracy %{y:.3f}, "
                      "mean confidence %{customdata[2]:.3f}, %{text}<extra></extra>",
    ))
    figure.add_trace(go.Scatter(x=[row["mean_confidence"] for row in bins], y=[row["accuracy"] for row in bins],
                                mode="markers", marker=dict(color="#d62728", size=8, symbol="diamond"),
                                name="mean confidence", hoverinfo="skip"))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                                name="perfect calibration", hoverinfo="skip"))
    figure.update_layout(title=f"Reliability diagram (ECE {calibration['ece']:.3f})", height=360, margin=CHART_MARGIN,
                         xaxis_title="confidence of the predicted class", yaxis_title="accuracy",
                         legend=dict(orientation="h", y=-0.2), xaxis_range=[0, 1], yaxis_range=[0, 1.12])
    chart.plotly_chart(figure, width="stretch", key="evaluation_reliability")
    fullest = max(bins, key=lambda row: row["count"]) if bins else None
    words.markdown(
        f"The images are put in {calibration['bins']} bins by the probability the model gave its own "
        "prediction. A calibrated model is right 90% of the time when it says 0.9: its bars reach the dotted "
        f"diagonal. The **expected calibration error** ({calibration['ece']:.3f}) is the gap between bar and "
        "diagonal, averaged over the bins by their share of the images."
        + (f"\n\n{fullest['count']:,} of {calibration['images']:,} images fall in the bin "
           f"{fullest['lower']:.1f}–{fullest['upper']:.1f}, where the model is right "
           f"{fullest['accuracy']:.1%} of the time at a mean confidence of {fullest['mean_confidence']:.1%}."
           if fullest else "")
    )


def draw_training(record: runs.RunRecord, stored: dict[str, Any]) -> None:
    """Loss and accuracy per epoch from history.csv, the kept epoch marked."""
    st.subheader("Training curves")
    history = record.path / runs.HISTORY_FILE
    if not history.is_file():
        st.caption("This run has no history.csv: its training curves were not recorded.")
        return
    kept = stored.get("kept_epoch") if isinstance(stored.get("kept_epoch"), dict) else {}
    epoch = kept.get("epoch") if isinstance(kept.get("epoch"), int) else None
    common.draw_curves(common.history_rows(str(history), history.stat().st_mtime_ns), key="evaluation-training",
                       kept_epoch=epoch)
    if epoch is not None:
        parts = [f"The run kept epoch {epoch}'s checkpoint ({kept.get('rule') or 'lowest validation loss'})"]
        if isinstance(kept.get("val_accuracy"), float) and isinstance(kept.get("train_accuracy"), float):
            parts.append(f"training accuracy {kept['train_accuracy']:.3f}, validation accuracy {kept['val_accuracy']:.3f}")
        st.caption("; ".join(parts) + ".")


def draw_cell_images(path: Path, source: str, scores: dict[str, Any]) -> None:
    """The images of one cell of the confusion matrix (a mistake by default), with their probabilities."""
    st.subheader("Images of one cell")
    names = list(scores["classes"])
    matrix = scores["confusion_matrix"]
    mistakes = [(matrix[i][j], i, j) for i in range(len(names)) for j in range(len(names)) if i != j and matrix[i][j]]
    if mistakes:
        _count, first_true, first_predicted = max(mistakes)
        total = sum(count for count, _i, _j in mistakes)
        st.caption(f"{total:,} of {scores['images']:,} images are misclassified. Pick a cell of the matrix; "
                   "the most confident predictions come first.")
    else:
        first_true, first_predicted = 0, 0
        st.caption("No image is misclassified in this evaluation. You can still look at any cell of the matrix.")
    key = f"{path.name}|{source}"
    if st.session_state.get("evaluation_cell_of") != key:
        st.session_state["evaluation_cell_of"] = key
        st.session_state["evaluation_cell_true"] = names[first_true]
        st.session_state["evaluation_cell_predicted"] = names[first_predicted]
    true_box, predicted_box, _rest = st.columns([1, 1, 2])
    true_label = true_box.selectbox("True class", names, key="evaluation_cell_true")
    predicted_label = predicted_box.selectbox("Predicted class", names, key="evaluation_cell_predicted")
    table = predictions_of(str(path), source, stamp(path, source))
    cell = table[(table["true_label"] == true_label) & (table["predicted_label"] == predicted_label)]
    if cell.empty:
        st.info(f"No image of class {true_label} was predicted as {predicted_label}.")
        return
    probability = metrics.PROBABILITY_PREFIX
    cell = cell.sort_values(probability + predicted_label, ascending=False, kind="stable")
    shown = cell.head(MISTAKES_SHOWN)
    if len(cell) > len(shown):
        st.caption(f"The {len(shown)} most confident of {len(cell):,} images.")
    columns = st.columns(MISTAKE_COLUMNS)
    for index, (_position, row) in enumerate(shown.iterrows()):
        draw_image(columns[index % MISTAKE_COLUMNS], row.to_dict(), true_label, predicted_label)


def draw_image(column: Any, row: dict[str, Any], true_label: str, predicted_label: str) -> None:
    """One image of a cell, read from its stored path, with the probabilities the run gave it."""
    file = Path(str(row["path"]))
    probabilities = " · ".join(f"{name} {float(row[metrics.PROBABILITY_PREFIX + name]):.2f}" for name in CLASS_NAMES)
    if not file.is_file():
        column.caption(f"{file.name}: no longer at its stored path.")
        return
    try:
        column.image(common.thumbnail(str(file), file.stat().st_mtime_ns, THUMBNAIL_SIDE), width="stretch")
        column.caption(f"**{file.name}**  \nP({predicted_label}) {float(row[metrics.PROBABILITY_PREFIX + predicted_label]):.2f}"
                       + ("" if true_label == predicted_label else
                          f" · P({true_label}) {float(row[metrics.PROBABILITY_PREFIX + true_label]):.2f}"),
                       help=f"All probabilities: {probabilities}.")
    except Exception as error:  # noqa: BLE001 - one unreadable file must not hide the others.
        column.caption(f"{file.name}: cannot be read ({error}).")


def draw_faithfulness(path: Path, source: str) -> None:
    """The heat-map faithfulness scores measured on this evaluation's images, if measured."""
    st.subheader("Heat-map faithfulness")
    payload = runs.read_faithfulness(path, source)
    if payload is None:
        st.caption("Not measured for this evaluation. `python -m kidney_lab explain-eval RUN_DIR` measures how well "
                   "each explanation method points at the lesion (on phantoms) and how the prediction falls when "
                   "the most salient pixels are removed.")
        return
    rows = []
    for method, values in payload["methods"].items():
        if isinstance(values, dict):
            rows.append({"method": method, **{key: values.get(key) for key in FAITHFULNESS_COLUMNS}})
    baselines = payload.get("baselines") or {}
    # A score that was not measured (deletion curves are optional) leaves its column out.
    table = pd.DataFrame(rows).dropna(axis="columns", how="all")
    st.dataframe(table, hide_index=True, placeholder="–", column_config={
        key: st.column_config.NumberColumn(label, format="%.3f", help=help_text)
        for key, (label, help_text) in FAITHFULNESS_COLUMNS.items()
    })
    curves = "deletion_auc" in table.columns
    chance = []
    if isinstance(baselines.get("pointing_game"), float):
        chance.append(f"pointing game {baselines['pointing_game']:.3f}")
    if isinstance(baselines.get("energy_in_mask"), float):
        chance.append(f"energy in mask {baselines['energy_in_mask']:.3f}")
    st.caption(
        f"Measured on {payload.get('images', '?')} images with the true class as target."
        + (" A faithful map has a deletion AUC below its random-order one and an insertion AUC above it." if curves
           else " Deletion and insertion curves were not measured.")
        + (f" A map that points at random would score {', '.join(chance)}." if chance else "")
    )



# Two runs -------------------------------------------------------------------------------------


def two_runs(catalogue: dict[str, dict[str, Any]]) -> None:
    """Two runs on the same images: their scores, the paired test (McNemar's on a random split, the
    paired cluster test otherwise) and the confusion difference."""
    ids = list(catalogue)
    if len(ids) < 2:
        st.info("Only one run has been evaluated; train another to compare two.")
        return
    if "evaluation_other" not in st.session_state:
        # Opened without a link to a pair and before any B was picked: start on two runs that can be compared.
        pairs = comparable_pairs(catalogue)
        if not pairs:
            st.info("No two runs here were evaluated on the same images, so none can be compared: runs of one study "
                    "share their test split, and runs of different studies can be compared on a folder both were "
                    "evaluated on (One run view, *Evaluate this run on another folder*).", icon=":material/compare_arrows:")
            return
        current = st.session_state.get("evaluation_run")
        start = current if current in pairs else next(iter(pairs))
        st.session_state["evaluation_run"], st.session_state["evaluation_other"] = start, pairs[start][0]
    first, second, source_box = st.columns([2, 2, 2])
    with first:
        run_a = pick("evaluation_run", "Run A", ids, format_func=lambda value: run_label(catalogue, value))
    others = [run_id for run_id in ids if run_id != run_a]
    if st.session_state.get("evaluation_other") not in others:
        st.session_state["evaluation_other"] = (comparable_pairs(catalogue).get(run_a) or others)[0]
    with second:
        run_b = st.selectbox("Run B", others, key="evaluation_other", format_func=lambda value: run_label(catalogue, value))
    evaluations_a, evaluations_b = catalogue[run_a]["evaluations"], catalogue[run_b]["evaluations"]
    shared = [source for source in evaluations_a if source in evaluations_b]
    if not shared:
        write_link(run_a, next(iter(evaluations_a)), run_b)
        st.error(
            "These two runs were never evaluated on the same data, so they cannot be compared: A on "
            + "; ".join(source_label(item) for item in evaluations_a.values()) + ", B on "
            + "; ".join(source_label(item) for item in evaluations_b.values())
            + ". Evaluate both on one folder (One run view, *Evaluate this run on another folder*).",
            icon=":material/block:",
        )
        return
    with source_box:
        source = pick("evaluation_pair_source", "Evaluated on", shared,
                      format_func=lambda value: source_label(evaluations_a[value]))
    write_link(run_a, source, run_b)
    record_a, record_b = catalogue[run_a]["record"], catalogue[run_b]["record"]
    name_a = f"A ({record_a.info.display_name or record_a.model})"
    name_b = f"B ({record_b.info.display_name or record_b.model})"
    try:
        result = paired(str(record_a.path), str(record_b.path), source,
                        (stamp(record_a.path, source), stamp(record_b.path, source)))
    except metrics.PredictionsError as error:
        st.error(f"{name_a} and {name_b} cannot be compared: {error}", icon=":material/block:")
        return
    place = "the test split" if source == runs.TEST_SOURCE else f"the folder `{evaluations_a[source].get('data')}`"
    pairing = (f"series by series: both runs' predictions of the same {result['clusters']:,} series "
               f"({result['images']:,} images)" if result["test"] == "cluster" else
               f"image by image: both runs' predictions of the same {result['images']:,} images")
    st.caption(f"Paired {pairing} of {place}.")
    scores_a = scores_of(str(record_a.path), source, stamp(record_a.path, source))
    scores_b = scores_of(str(record_b.path), source, stamp(record_b.path, source))
    draw_pair_summary(name_a, name_b, scores_a, scores_b)
    if result["test"] == "cluster":
        draw_cluster_test(name_a, name_b, result)
    else:
        draw_mcnemar(name_a, name_b, result)
    with common.shown_errors("drawing the confusion difference"):
        draw_difference(name_a, name_b, result)
    with common.shown_errors("drawing the per-class comparison"):
        draw_pair_per_class(name_a, name_b, scores_a, scores_b)


def comparable_pairs(catalogue: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Run id -> the other runs (in catalogue order) with an evaluation of exactly the same images
    under the same source (:func:`kidney_lab.evaluation.store.images_key`); runs without any are
    left out. Damaged evaluations are skipped."""
    keys: dict[str, set[tuple[str, str]]] = {}
    for run_id, entry in catalogue.items():
        path = entry["record"].path
        for source in entry["evaluations"]:
            try:
                key = store.images_key(predictions_of(str(path), source, stamp(path, source)))
            except (OSError, ValueError, KeyError, store.EvaluationError):
                continue
            keys.setdefault(run_id, set()).add((source, key))
    pairs: dict[str, list[str]] = {}
    for run_id, own in keys.items():
        partners = [other for other in catalogue if other != run_id and own & keys.get(other, set())]
        if partners:
            pairs[run_id] = partners
    return pairs


def draw_pair_summary(name_a: str, name_b: str, scores_a: dict[str, Any], scores_b: dict[str, Any]) -> None:
    """Accuracy and macro F1 of both runs, with intervals."""
    columns = st.columns(4)
    for offset, (name, scores) in enumerate(((name_a, scores_a), (name_b, scores_b))):
        for index, (key, label) in enumerate((("accuracy", "accuracy"), ("macro_f1", "macro F1"))):
            low, high = scores["intervals"][key]
            cell = columns[offset * 2 + index]
            cell.metric(f"{name}: {label}", f"{scores[key]:.3f}")
            cell.caption(f"95% CI {low:.3f}–{high:.3f} {stats.resampling_words(scores['intervals'])}")


def draw_paired_counts(result: dict[str, Any]) -> tuple[Any, Any]:
    """The 2x2 table of which model is right on each image, in the left of two columns; returns
    (left, right) columns for the test's figures and its reading."""
    # Rows are A's outcome, columns B's: A right and B wrong is "only A right".
    counts = pd.DataFrame(
        [[result["both_right"], result["only_a_right"]], [result["only_b_right"], result["both_wrong"]]],
        index=["A right", "A wrong"], columns=["B right", "B wrong"],
    )
    table, words = st.columns([2, 3])
    table.dataframe(counts, column_config={column: st.column_config.NumberColumn(format="localized")
                                           for column in counts.columns})
    return table, words


def draw_mcnemar(name_a: str, name_b: str, result: dict[str, Any]) -> None:
    """McNemar's counts, p-value and what they mean in plain words."""
    st.subheader("Is the difference more than chance? McNemar's test")
    table, words = draw_paired_counts(result)
    table.metric("p-value (exact, two-sided)", f"{result['p_value']:.3g}")
    words.markdown(mcnemar_reading(name_a, name_b, result))
    st.caption(f"McNemar's test counts images as independent: {result['reason']}.")


def draw_cluster_test(name_a: str, name_b: str, result: dict[str, Any]) -> None:
    """The paired cluster test: image counts, the difference with its interval over series, the
    permutation p-value, and what they mean in plain words."""
    st.subheader("Is the difference more than chance? Paired test over series")
    table, words = draw_paired_counts(result)
    table.metric(f"p-value (permutation over {result['clusters']} series)", f"{result['p_value']:.3g}",
                 help="Two-sided sign-flip permutation test of the macro F1 difference: each series' predictions by A "
                      "and B swapped as a whole.")
    words.markdown(cluster_test_reading(name_a, name_b, result))


def cluster_test_reading(name_a: str, name_b: str, result: dict[str, Any]) -> str:
    """The paired cluster test in plain words."""
    difference = result["difference"]["macro_f1"]
    low, high = result["difference_interval"]["macro_f1"]
    opening = (f"Macro F1 of {name_b} minus {name_a}: **{difference:+.3f}** (95% interval {low:+.3f} to {high:+.3f}, "
               f"resampling the {result['clusters']} series of these {result['images']:,} images, since a series' "
               "slices are right or wrong together). ")
    if result["p_value"] < SIGNIFICANCE:
        leader, follower = (name_b, name_a) if difference > 0 else (name_a, name_b)
        return opening + (f"Swapping the two models' predictions series by series gives a difference this large with "
                          f"probability {result['p_value']:.3g}, so **{leader} scores better than {follower} on these "
                          "series**. It says nothing about other data (other scanners, other hospitals).")
    return opening + (f"A difference at least this large arises by chance with probability {result['p_value']:.3g}: "
                      "**no evidence that either model is better on these series**; more series (patients), not "
                      "more slices, would be needed to tell them apart.")


def mcnemar_reading(name_a: str, name_b: str, result: dict[str, Any]) -> str:
    """McNemar's result in plain words."""
    only_a, only_b, images = result["only_a_right"], result["only_b_right"], result["images"]
    accuracy = f"accuracy {result['accuracy_a']:.1%} against {result['accuracy_b']:.1%}"
    if only_a + only_b == 0:
        return (f"The two models are right and wrong on exactly the same {images:,} images ({accuracy}): there is "
                "no disagreement to test.")
    leader, follower = (name_a, name_b) if only_a >= only_b else (name_b, name_a)
    opening = (f"The models disagree on {only_a + only_b:,} of {images:,} images: {name_a} alone is right on "
               f"{only_a:,}, {name_b} alone on {only_b:,}. ")
    if result["p_value"] < SIGNIFICANCE:
        return opening + (
            f"A split this uneven would arise by chance with probability {result['p_value']:.3g}, so **{leader} is "
            f"more accurate than {follower} on these images** ({accuracy}). It says nothing about other data "
            "(other scanners, other hospitals).")
    return opening + (
        f"A split at least this uneven arises by chance with probability {result['p_value']:.3g}: **no evidence that "
        f"either model is more accurate on these images** ({accuracy}); the difference may be luck. More test "
        "images would be needed to tell them apart.")


def draw_difference(name_a: str, name_b: str, result: dict[str, Any]) -> None:
    """B's confusion matrix minus A's, coloured by which run the difference favours."""
    st.subheader("Confusion matrix difference (B minus A)")
    names = list(result["classes"])
    difference = result["confusion_difference"]
    # More images on the diagonal is better for B; more off the diagonal is worse. The colour says
    # whom a cell favours (blue: B, red: A); the number is the plain difference of counts.
    favour = [[value if i == j else -value for j, value in enumerate(row)] for i, row in enumerate(difference)]
    largest = max(1, max(abs(value) for row in difference for value in row))
    figure = go.Figure(go.Heatmap(
        z=favour, x=names, y=names, text=[[f"{value:+,}" if value else "0" for value in row] for row in difference],
        texttemplate="%{text}", colorscale="RdBu", zmid=0, zmin=-largest, zmax=largest, showscale=False,
        textfont=dict(size=16),
        hovertemplate="true %{y}, predicted %{x}: B minus A = %{text}<extra></extra>",
    ))
    figure.update_layout(height=380, margin=CHART_MARGIN, xaxis_title="predicted", yaxis_title="true")
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(side="top")
    chart, words = st.columns([3, 2])
    chart.plotly_chart(figure, width="stretch", key="evaluation_difference")
    words.markdown(
        f"Each cell is {name_b}'s count minus {name_a}'s on the same images. **Blue favours B**: more right on the "
        "diagonal, or fewer of that mistake off it. **Red favours A.** Pale grey: no difference."
    )


def draw_pair_per_class(name_a: str, name_b: str, scores_a: dict[str, Any], scores_b: dict[str, Any]) -> None:
    """F1 per class of both runs, side by side."""
    st.subheader("F1 per class")
    figure = go.Figure()
    for name, scores, colour in ((name_a, scores_a, "#d6604d"), (name_b, scores_b, "#4393c3")):
        figure.add_trace(go.Bar(x=list(scores["classes"]), y=[scores["per_class"][label]["f1"] for label in scores["classes"]],
                                name=name, marker_color=colour, hovertemplate="%{x}: F1 %{y:.3f}<extra></extra>"))
    figure.update_layout(barmode="group", height=300, margin=CHART_MARGIN, yaxis_range=[0, 1.05],
                         legend=dict(orientation="h", y=1.12))
    st.plotly_chart(figure, width="stretch", key="evaluation_pair_f1")


common.run_page(main)
