"""Leaderboard: every evaluated run, ranked only against runs tested on the same images.

The table is :func:`kidney_lab.evaluation.leaderboard.leaderboard`: every score recomputed
from the run's stored ``predictions.csv``, with its bootstrap interval (over near-duplicate
clusters, roughly CT series, except on a random split: the table says which), the clusters per
class it rests on, the kind of split it was measured on and how many test images have a
near-duplicate in training; pooled cross-validations are rows too, with their folds' mean ± sd.
Rows measured on different images answer different questions, so they fall into separate
comparable groups: ranks, "best" highlights, the p-value and the chart's groups never cross a
group. A class that rests on fewer than three series is warned about above the table. The page
only filters, formats and draws; per-run actions open a run on the Evaluation page, download its
model card, or delete it after a confirmation (a cross-validation row and a study's ensemble row
are not one run, so they have none).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kidney_lab import runs
from kidney_lab.evaluation import cv
from kidney_lab.evaluation import study_ensemble
from pages import common

EVALUATION_PAGE = "pages/evaluation.py"
# URL parameters the Evaluation page opens a run from.
RUN_PARAMETER = "run"
SOURCE_PARAMETER = "source"
ALL = "All"
# Highlight of the best value of a column within a comparable group.
BEST_STYLE = "background-color: #d8efe0; font-weight: 600"
# column -> (label, what it is); the scores the chart can draw.
SCORES = {
    "macro_f1": ("macro F1", "Mean over the four classes of F1, from the stored predictions."),
    "accuracy": ("accuracy", "Share of test images predicted right."),
    "balanced_accuracy": ("balanced accuracy", "Mean recall over the classes."),
    "macro_auc": ("macro ROC AUC", "One-vs-rest ROC AUC averaged over the classes."),
    "ece": ("ECE", "Expected calibration error of the top-class confidence (10 bins); lower is better."),
    "pointing_game": ("pointing game", "Share of lesion images whose Grad-CAM maximum lies in the lesion (phantoms)."),
    "energy_in_mask": ("energy in mask", "Share of the Grad-CAM map's energy inside the lesion mask (phantoms)."),
}
# The columns shown until "All columns" is on: what fits a laptop's width (flag only when a row has one).
# The group line above the table gives each group's split and images.
MAIN_COLUMNS = ("group", "rank", "model", "flag", "dataset", "accuracy", "macro_f1", "resampled", "folds macro F1",
                "p vs best")
INTERVALS = {"accuracy": ("accuracy_ci_low", "accuracy_ci_high"), "macro_f1": ("macro_f1_ci_low", "macro_f1_ci_high")}


def main() -> None:
    """Draw the Leaderboard page."""
    st.title("Leaderboard")
    st.markdown(
        "Every score is recomputed from the run's stored predictions (one row per image). "
        "Rows are ranked **only against rows evaluated on the same images** (the same group): a "
        "model tested on a leaky random split, one tested on a grouped split and one tested on "
        "another folder answer different questions. Intervals are 95% bootstrap intervals over "
        "near-duplicate clusters (series) on grouped splits, cross-validations and folders, and over "
        "images on random splits (column *resampled*); *p vs best* compares a row with the best single model "
        "of its group (a study's *Ensemble* row too) by the paired cluster test, or by McNemar's exact test on a random split (column *test*)."
    )
    base = common.workspace()
    if not runs.list_runs(base):
        # Nothing to score: say so without loading the scoring code (and TensorFlow with it).
        explain_empty(base, [])
        return
    full = None
    with common.shown_errors("building the leaderboard"):
        full = board(str(base), common.evaluation_signature(base))
    if full is None:
        return
    if full.empty:
        explain_empty(base, full.attrs.get("skipped") or [])
        return
    study, split, fingerprint, include_external = filters(full)
    table = None
    with common.shown_errors("building the leaderboard"):
        table = board(str(base), common.evaluation_signature(base), study, split, fingerprint, include_external)
    if table is None:
        return
    draw_skipped(table.attrs.get("skipped") or [])
    if table.empty:
        st.info("No row matches these filters; choose **All** in one of them.", icon=":material/filter_alt_off:")
        return
    labels = group_labels(table)
    draw_groups(table, labels)
    draw_few_clusters(table, labels)
    draw_degenerate(table, labels)
    draw_table(table, labels)
    with common.shown_errors("drawing the chart"):
        draw_chart(table, labels)
    with common.shown_errors("acting on the run"):
        draw_actions(base, table)


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Scoring every stored evaluation ...")
def board(
    workspace: str,
    signature: tuple[tuple[str, int], ...],
    study: str | None = None,
    split: str | None = None,
    fingerprint: str | None = None,
    include_external: bool = True,
) -> pd.DataFrame:
    """The leaderboard of ``workspace`` (see :func:`kidney_lab.evaluation.leaderboard.leaderboard`).

    ``signature`` (:func:`pages.common.evaluation_signature`) is part of the cache key only.
    """
    from kidney_lab.evaluation.leaderboard import leaderboard

    return leaderboard(workspace, study_id=study, split=split, fingerprint=fingerprint,
                       include_external=include_external)


def explain_empty(base: Path, skipped: list[dict[str, str]]) -> None:
    """What to do when no run has a stored evaluation; ``skipped`` lists runs that cannot be read."""
    records = runs.list_runs(base)
    if records:
        active = sum(record.is_active for record in records)
        st.info(
            f"The workspace holds {len(records)} run(s), but none has a stored evaluation yet"
            + (f" ({active} still training: they are scored when training ends)." if active else
               ": runs are scored on their test split when training ends, so these failed or were "
               "cancelled before that. `python -m kidney_lab evaluate RUN_DIR` scores one by hand."),
            icon=":material/hourglass_empty:",
        )
    else:
        st.info(
            "No trained model in this workspace yet. Build the demo study on the Home page (no "
            "download needed), or choose a dataset and train on the Train page; every run is "
            "scored on its test split when training ends and then appears here.",
            icon=":material/leaderboard:",
        )
    draw_skipped(skipped)
    common.start_links()


def filters(full: pd.DataFrame) -> tuple[str | None, str | None, str | None, bool]:
    """The filter row; returns (study, split kind, dataset fingerprint, include external)."""
    studies = sorted(full["study_id"].dropna().unique(), reverse=True)
    splits = [kind for kind in ("grouped", "cv", "random", "external") if kind in set(full["split"])]
    prints = sorted(full["dataset_fingerprint"].dropna().unique())
    study_box, split_box, print_box, external_box = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
    study = study_box.selectbox("Study", [ALL, *studies], key="leaderboard_study",
                                help="Runs trained together on one split form a study.")
    split = split_box.selectbox(
        "Split kind", [ALL, *splits], key="leaderboard_split",
        help="grouped: near-duplicates never straddle train and test; cv: a grouped K-fold cross-validation's "
             "pooled out-of-fold predictions; random: image by image (leaks near-duplicates); external: a folder "
             "evaluated after training.",
    )
    names = dict(zip(full["dataset_fingerprint"], full["dataset"]))
    fingerprint = print_box.selectbox(
        "Dataset", [ALL, *prints], key="leaderboard_fingerprint",
        format_func=lambda value: value if value == ALL else f"{names.get(value) or value} · {value}",
        help="The dataset the row was evaluated on, by name and the hash of its files (its fingerprint).")
    include_external = external_box.toggle("External folders", value=True, key="leaderboard_external",
                                           help="Rows of folders evaluated after training (not the run's own test split).")
    return (None if study == ALL else study, None if split == ALL else split,
            None if fingerprint == ALL else fingerprint, include_external)


def draw_skipped(skipped: list[dict[str, str]]) -> None:
    """Say which runs or evaluations could not be read, and why."""
    if not skipped:
        return
    with st.expander(f"{len(skipped)} run(s) or evaluation(s) could not be read and are left out", icon=":material/warning:"):
        for entry in skipped:
            st.markdown(f"- `{entry['run_id']}`: {entry['reason']}")


def group_labels(table: pd.DataFrame) -> dict[str, str]:
    """A short letter for each comparable group, in the table's order (largest group first)."""
    groups = list(dict.fromkeys(table["comparable_group"].dropna()))
    letters = string.ascii_uppercase
    return {group: letters[index] if index < len(letters) else str(index + 1) for index, group in enumerate(groups)}


def draw_groups(table: pd.DataFrame, labels: dict[str, str]) -> None:
    """The comparable groups in words, and a plain warning when rows are not comparable."""
    groups = table.attrs.get("groups") or []
    if len(groups) > 1:
        st.warning(
            f"These rows are **not all comparable**: they were evaluated on {len(groups)} different "
            "sets of images. Ranks, highlights and p-values compare rows only within a group; never "
            "read a score of one group against another.",
            icon=":material/compare_arrows:",
        )
    elif groups:
        st.success("All rows were evaluated on the same images: they can be compared directly.",
                   icon=":material/check_circle:")
    lines = []
    for group in groups:
        splits = ", ".join(group["splits"]) or "unknown split"
        names = ", ".join(f"**{value}**" for value in group.get("datasets") or []) or "unknown dataset"
        lines.append(f"- **Group {labels.get(group['comparable_group'], '?')}**: {group['rows']} row(s) on the same "
                     f"{group['images']:,} images of {names} ({splits})")
    st.markdown("\n".join(lines))
    leaky = table[(table["split"] == "random") & (pd.to_numeric(table["test_with_duplicate_in_train"], errors="coerce") > 0)]
    if not leaky.empty:
        row = leaky.iloc[0]
        st.warning(
            f"{len(leaky)} row(s) were scored on a random split whose test images have near-duplicates in "
            f"training (for example {int(row['test_with_duplicate_in_train']):,} of {int(row['images']):,} for "
            f"{row['display_name']}): those scores are optimistic. A grouped split measures generalisation.",
            icon=":material/content_copy:",
        )


def draw_few_clusters(table: pd.DataFrame, labels: dict[str, str]) -> None:
    """A warning naming every row with a class whose score rests on fewer than three series."""
    few = table[table["cluster_warning"].notna()]
    if few.empty:
        return
    lines = []
    for row in few.itertuples(index=False):
        classes = ", ".join(f"{name} on {row.clusters_per_class[name]}" for name in row.few_clusters)
        lines.append(f"- **{row.display_name or row.model}** ({where(row.split, row.evaluated_on)}, group "
                     f"{labels.get(row.comparable_group, '?')}): {classes}")
    st.warning(
        f"{len(few)} row(s) have a class that rests on fewer than three near-duplicate clusters (series): its recall "
        "is one or two patients' recall, whatever the number of slices.\n\n" + "\n".join(lines),
        icon=":material/groups:",
    )


def draw_degenerate(table: pd.DataFrame, labels: dict[str, str]) -> None:
    """A warning naming every row whose model predicts one class for nearly everything or scores
    at chance (:func:`kidney_lab.evaluation.metrics.degenerate`)."""
    flagged = table[table["degenerate"].notna()]
    if flagged.empty:
        return
    lines = [f"- **{row.display_name or row.model}** ({where(row.split, row.evaluated_on)}, group "
             f"{labels.get(row.comparable_group, '?')}): {row.degenerate}" for row in flagged.itertuples(index=False)]
    st.warning(f"{len(flagged)} row(s) come from a model that has not learned the task: its rank says nothing about "
             "which architecture is better.\n\n" + "\n".join(lines), icon=":material/report:")


def where(split: str | None, source: str) -> str:
    """What a row was evaluated on, in words."""
    if split == cv.CV_KIND:
        return "cross-validation, out-of-fold"
    return "test split" if source == runs.TEST_SOURCE else f"folder {source}"


def clusters_text(per_class: Any) -> str:
    """Clusters per class in one cell, "Cyst 4 · Normal 1 · ..."; empty when not known."""
    if not isinstance(per_class, dict):
        return ""
    return " · ".join(f"{name} {count}" for name, count in per_class.items())


def display_table(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The leaderboard with readable columns: group letters, intervals as text, sizes in MB."""
    shown = pd.DataFrame(index=table.index)
    shown["group"] = table["comparable_group"].map(labels)
    shown["rank"] = pd.to_numeric(table["rank"], errors="coerce")
    shown["model"] = table["display_name"].fillna(table["model"])
    shown["flag"] = ["degenerate" if isinstance(reason, str) else "" for reason in table["degenerate"]]
    shown["dataset"] = table["dataset"]
    shown["split"] = table["split"]
    shown["images"] = pd.to_numeric(table["images"], errors="coerce")
    shown["near-duplicates in train"] = pd.to_numeric(table["test_with_duplicate_in_train"], errors="coerce")
    for column in ("accuracy", "macro_f1"):
        low, high = INTERVALS[column]
        # Fixed-width text of numbers in [0, 1] sorts like the numbers themselves.
        shown[column] = [
            f"{value:.3f} ({a:.3f}–{b:.3f})" if pd.notna(value) and pd.notna(a) and pd.notna(b) else ""
            for value, a, b in zip(table[column], table[low], table[high])
        ]
    shown["resampled"] = [
        f"clusters ({int(count)})" if kind == "cluster" else ("images" if isinstance(kind, str) else "")
        for kind, count in zip(table["interval_resampling"], table["clusters"])
    ]
    shown["clusters per class"] = [clusters_text(value) for value in table["clusters_per_class"]]
    if table["macro_f1_fold_mean"].notna().any():
        shown["folds macro F1"] = [
            f"{mean:.3f} ± {sd:.3f} ({int(folds)} folds)" if pd.notna(mean) and pd.notna(sd) else ""
            for mean, sd, folds in zip(table["macro_f1_fold_mean"], table["macro_f1_fold_sd"], table["folds"])
        ]
    shown["p vs best"] = pd.to_numeric(table["p_vs_best"], errors="coerce")
    shown["test"] = table["p_test"].map({"cluster": "cluster", "mcnemar": "McNemar"})
    for column in ("balanced_accuracy", "macro_auc", "ece", "loss"):
        shown[column] = table[column]
    for column in ("pointing_game", "energy_in_mask"):
        if table[column].notna().any():
            shown[column] = table[column]
    shown["evaluated on"] = [where(split, source) for split, source in zip(table["split"], table["evaluated_on"])]
    shown["params (M)"] = pd.to_numeric(table["params"], errors="coerce") / 1e6
    shown["model MB"] = pd.to_numeric(table["model_bytes"], errors="coerce") / 1e6
    shown["ms/image (batch 1)"] = table["ms_per_image_batch_1"]
    shown["ms/image (batch 32)"] = table["ms_per_image_batch_32"]
    shown["training (s)"] = table["train_seconds"]
    shown["epochs"] = pd.to_numeric(table["epochs"], errors="coerce")
    shown["image size"] = pd.to_numeric(table["image_size"], errors="coerce")
    shown["weights"] = table["weights"]
    shown["study"] = table["study_id"]
    shown["run"] = table["run_id"]
    return shown


def column_config() -> dict[str, Any]:
    """Labels, widths and explanations of the displayed columns (numbers are formatted by :data:`FORMATS`)."""
    return {
        "group": st.column_config.TextColumn(help="Rows with the same letter were evaluated on exactly the same images.",
                                             width="small", pinned=True),
        "rank": st.column_config.NumberColumn(help="Rank by macro F1, then accuracy, within the group only.",
                                              width="small", pinned=True),
        "model": st.column_config.TextColumn(pinned=True),
        "flag": st.column_config.TextColumn(
            width="small", help="degenerate: the model predicts one class for nearly every image or scores at chance "
                                "(the warning above says which)."),
        "dataset": st.column_config.TextColumn(
            help="What the row was evaluated on: the demo phantoms, or the dataset folder's name and the start of its "
                 "fingerprint."),
        "accuracy": st.column_config.TextColumn(
            "accuracy (95% CI)", help=SCORES["accuracy"][1] + " In brackets: percentile bootstrap, resampling what "
                                                            "the column *resampled* says."),
        "macro_f1": st.column_config.TextColumn(
            "macro F1 (95% CI)", help=SCORES["macro_f1"][1] + " In brackets: percentile bootstrap, resampling what "
                                                            "the column *resampled* says."),
        "resampled": st.column_config.TextColumn(
            help="What the interval's bootstrap drew: whole near-duplicate clusters (series), how many; or images, "
                 "as if independent (random splits, and predictions stored without clusters)."),
        "clusters per class": st.column_config.TextColumn(
            help="Distinct near-duplicate clusters (about one CT series each) among each class's images: how many "
                 "patients a class's score rests on. Fewer than 3 is warned about above."),
        "folds macro F1": st.column_config.TextColumn(
            help="Cross-validation: mean ± sample standard deviation of the folds' macro F1, each fold scored on its "
                 "own held-out series."),
        "p vs best": st.column_config.NumberColumn(
            help="p-value against the best single model (not an ensemble) of the same group, by the test in column *test*; small (< 0.05): the "
                 "difference is unlikely to be chance on these images."),
        "test": st.column_config.TextColumn(
            help="cluster: paired sign-flip permutation test over series (grouped splits, cross-validations, "
                 "folders); McNemar: exact test over images (random splits)."),
        "balanced_accuracy": st.column_config.NumberColumn("balanced acc.", help=SCORES["balanced_accuracy"][1]),
        "macro_auc": st.column_config.NumberColumn("macro AUC", help=SCORES["macro_auc"][1]),
        "ece": st.column_config.NumberColumn("ECE", help=SCORES["ece"][1]),
        "loss": st.column_config.NumberColumn(help="Mean cross-entropy of the stored probabilities (nats); lower is better."),
        "pointing_game": st.column_config.NumberColumn("pointing game", help=SCORES["pointing_game"][1]),
        "energy_in_mask": st.column_config.NumberColumn("energy in mask", help=SCORES["energy_in_mask"][1]),
        "split": st.column_config.TextColumn(help="What the row was measured on: a grouped or random test split, "
                                                  "a cross-validation (cv) or an external folder."),
        "near-duplicates in train": st.column_config.NumberColumn(
            "near-dup. in train", help="Test images with a near-duplicate (same slice of one patient, nearly) in training."),
        "ms/image (batch 1)": st.column_config.NumberColumn(help="Median warm time on the machine that evaluated it."),
    }


# How the numbers of the displayed columns are written; a missing value shows as a dash.
FORMATS = {
    "rank": "{:.0f}", "p vs best": "{:.3g}", "balanced_accuracy": "{:.3f}", "macro_auc": "{:.3f}", "ece": "{:.3f}",
    "loss": "{:.3f}", "pointing_game": "{:.3f}", "energy_in_mask": "{:.3f}", "images": "{:,.0f}",
    "near-duplicates in train": "{:,.0f}", "params (M)": "{:.2f}", "model MB": "{:.1f}",
    "ms/image (batch 1)": "{:.1f}", "ms/image (batch 32)": "{:.2f}", "training (s)": "{:,.0f}", "epochs": "{:.0f}",
    "image size": "{:.0f}",
}


def highlighted(shown: pd.DataFrame, table: pd.DataFrame) -> Any:
    """A Styler of ``shown`` that formats its numbers and marks the best score of each group."""
    from kidney_lab.evaluation.leaderboard import best_in_group

    best = best_in_group(table)
    styles = pd.DataFrame("", index=shown.index, columns=shown.columns)
    for column in best.columns:
        if column in styles.columns:
            styles.loc[best[column], column] = BEST_STYLE
    formats = {column: text for column, text in FORMATS.items() if column in shown.columns}
    return shown.style.apply(lambda _frame: styles, axis=None).format(formats)


def draw_table(table: pd.DataFrame, labels: dict[str, str]) -> None:
    """The sortable table, a CSV download, and the selection that drives the actions below."""
    shown = display_table(table, labels)
    keys = row_keys(table)

    def picked() -> None:
        rows = st.session_state["leaderboard_table"].selection.rows
        if rows:
            st.session_state["leaderboard_row"] = keys[rows[0]]

    every = st.toggle("All columns", key="leaderboard_all_columns",
                      help="Off: the columns that fit the page. On: every column (the table scrolls sideways).")
    order = list(shown.columns) if every else [column for column in MAIN_COLUMNS if column in shown.columns
                                                 and (column != "flag" or (shown["flag"] != "").any())]
    st.dataframe(
        highlighted(shown, table), hide_index=True, column_config=column_config(), key="leaderboard_table",
        on_select=picked, selection_mode="single-row", placeholder="–", column_order=order, width="stretch",
    )
    caption, download = st.columns([4, 1], vertical_alignment="center")
    hidden = len(shown.columns) - len(order)
    caption.caption("Click a column to sort; green marks the best value of a score within its group (only groups of "
                    "two or more rows). Select a row for its actions below."
                    + (f" {hidden} more columns (split, images, test, calibration, faithfulness, speed, training, run) "
                       "with *All columns*."
                       if hidden else " Scroll the table sideways for every column."))
    download.download_button(
        "Download CSV", table.to_csv(index=False).encode("utf-8"), file_name="kidney_lab_leaderboard.csv",
        mime="text/csv", icon=":material/download:", help="Every column of the rows shown, unformatted.",
    )


def row_keys(table: pd.DataFrame) -> list[str]:
    """One key per row: ``run_id|source``."""
    return [f"{run}|{source}" for run, source in zip(table["run_id"], table["evaluated_on"])]


def row_label(table: pd.DataFrame, labels: dict[str, str]) -> dict[str, str]:
    """What each row key looks like in the actions' picker."""
    named = {}
    for key, row in zip(row_keys(table), table.itertuples(index=False)):
        named[key] = (f"{row.display_name or row.model} · {row.run_id} · {where(row.split, row.evaluated_on)} "
                      f"(group {labels.get(row.comparable_group, '?')})")
    return named


def draw_chart(table: pd.DataFrame, labels: dict[str, str]) -> None:
    """A bar chart of one score with its 95% interval, one block of bars per comparable group."""
    st.subheader("Chart")
    available = [column for column in SCORES if table[column].notna().any()]
    picker, note = st.columns([1, 2], vertical_alignment="bottom")
    metric = picker.selectbox("Score", available, format_func=lambda column: SCORES[column][0], key="leaderboard_metric")
    interval = (" Error bars: 95% bootstrap interval, over clusters (series) or images as the table's *resampled* "
                "column says." if metric in INTERVALS else "")
    note.caption(f"{SCORES[metric][1]}{interval} Bars of different groups were measured on different images: "
                 "compare bars within a group only.")
    rows = table[table[metric].notna()]
    groups = [f"group {labels[group]}" for group in rows["comparable_group"]]
    names = chart_names(rows)
    values = rows[metric].to_numpy(dtype=float)
    error = None
    if metric in INTERVALS:
        low, high = (rows[column].to_numpy(dtype=float) for column in INTERVALS[metric])
        error = dict(type="data", symmetric=False, array=high - values, arrayminus=values - low,
                     color="#333", thickness=1.2, width=4)
    figure = go.Figure(go.Bar(
        y=[groups, names], x=values, orientation="h", error_x=error,
        marker_color=[model_colour(model) for model in rows["model"]],
        text=[f"{value:.3f}" for value in values], textposition="inside", insidetextanchor="start",
        hovertemplate="%{y}<br>" + SCORES[metric][0] + " %{x:.3f}<extra></extra>",
    ))
    figure.update_layout(
        height=120 + 34 * len(rows), margin=dict(l=10, r=10, t=10, b=10), xaxis_title=SCORES[metric][0],
        showlegend=False, bargap=0.2,
    )
    # The first row of the table at the top; a score between 0 and 1 drawn on its whole range.
    figure.update_yaxes(autorange="reversed")
    if metric != "ece":
        figure.update_xaxes(range=[0, 1.02])
    st.plotly_chart(figure, width="stretch", key="leaderboard_chart")


def chart_names(rows: pd.DataFrame) -> list[str]:
    """Bar names: the model's name, with the run's start time where a group holds it twice."""
    names = rows["display_name"].fillna(rows["model"]).astype(str)
    repeated = names.groupby(rows["comparable_group"]).transform(lambda column: column.duplicated(keep=False))
    return [f"{name} ({run[:15]})" if twice else name for name, run, twice in zip(names, rows["run_id"], repeated)]


def model_colour(model: str | None) -> str:
    """The same colour for an architecture on every chart, in registry order."""
    import plotly.colors

    from kidney_lab.models import registry

    palette = plotly.colors.qualitative.Safe
    names = list(registry.MODEL_NAMES)
    return palette[names.index(model) % len(palette)] if model in names else "#888888"


def draw_actions(base: Path, table: pd.DataFrame) -> None:
    """Open a row in Evaluation, download its run's model card, or delete the run."""
    st.subheader("Run actions")
    # A cross-validation row is K runs, an ensemble row several: open their runs from their own rows.
    table = table[(table["split"] != cv.CV_KIND) & (table["model"] != study_ensemble.ENSEMBLE_MODEL)]
    if table.empty:
        st.caption("Cross-validation and ensemble rows have no run actions; open a fold's or a member's run on the Evaluation page (fold runs are listed there, and by `leaderboard --folds`).")
        return
    labels = row_label(table, group_labels(table))
    keys = list(labels)
    if st.session_state.get("leaderboard_row") not in keys:
        st.session_state["leaderboard_row"] = keys[0]
    key = st.selectbox("Run", keys, format_func=labels.get, key="leaderboard_row",
                       help="Or select a row in the table above.")
    run_id, source = key.split("|", 1)
    row = table[(table["run_id"] == run_id) & (table["evaluated_on"] == source)].iloc[0]
    message = st.session_state.pop("leaderboard_message", None)
    if message:
        st.success(message, icon=":material/delete:")
    open_button, card_button, delete_button = st.columns(3)
    if open_button.button("Open in Evaluation", icon=":material/analytics:", type="primary", width="stretch"):
        st.switch_page(EVALUATION_PAGE, query_params={RUN_PARAMETER: run_id, SOURCE_PARAMETER: source})
    card_button.download_button(
        "Download model card", card_text(row["path"], common.evaluation_signature(base)),
        file_name=f"model_card_{run_id}.md", mime="text/markdown", icon=":material/description:", width="stretch",
        help="Markdown, generated from the run's stored files: data, split, training, scores with intervals, limits.",
    )
    if delete_button.button("Delete run ...", icon=":material/delete:", width="stretch"):
        st.session_state["leaderboard_delete"] = run_id
    if st.session_state.get("leaderboard_delete") == run_id:
        confirm_delete(base, run_id, str(row["display_name"] or row["model"]))


@st.cache_data(max_entries=32, ttl=3600, show_spinner="Writing the model card ...")
def card_text(path: str, signature: tuple[tuple[str, int], ...]) -> str:
    """The Markdown model card of the run at ``path``; ``signature`` is part of the cache key only."""
    from kidney_lab.evaluation.model_card import model_card

    return model_card(path)


def confirm_delete(base: Path, run_id: str, name: str) -> None:
    """Ask before deleting a run; a run still training is refused with its message."""
    with st.container(border=True):
        st.warning(
            f"Delete run `{run_id}` ({name})? Its model, predictions, every evaluation and its model card are "
            "removed from the workspace for good; its rows leave the leaderboard.",
            icon=":material/warning:",
        )
        yes, no, _rest = st.columns([1, 1, 3])
        if yes.button("Delete for good", type="primary", icon=":material/delete_forever:", key="leaderboard_confirm"):
            st.session_state.pop("leaderboard_delete", None)
            runs.delete_run(base, run_id)
            st.session_state.pop("leaderboard_row", None)
            st.session_state["leaderboard_message"] = f"Deleted run {run_id} ({name})."
            st.rerun()
        if no.button("Keep it", key="leaderboard_keep"):
            st.session_state.pop("leaderboard_delete", None)
            st.rerun()


common.run_page(main)
