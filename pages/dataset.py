"""Dataset: choose a folder, see what is in it, what repeats, and what each split would leak.

Everything shown is computed from the files: the scan (kidney_lab.data.discover), the audit
(kidney_lab.data.audit) and split previews (kidney_lab.data.split, not stored). The chosen
folder is remembered in the workspace, so the Train page and a restarted app use it too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from kidney_lab import workspace as workspace_module
from kidney_lab.data import audit as audit_module
from kidney_lab.data import discover
from kidney_lab.data import split as split_module
from kidney_lab.data import classes
from pages import common

SAMPLES_PER_CLASS = 6
GROUPS_SHOWN = 4
CLUSTER_MEMBERS_SHOWN = 6
SUBSET_NAMES = {"train": "train", "val": "validation", "test": "test"}


def main() -> None:
    """Draw the Dataset page."""
    st.title("Dataset")
    st.markdown(
        "A dataset is a folder with one sub-folder per class (`Cyst`, `Normal`, `Stone`, "
        "`Tumor`), as in the Kaggle CT KIDNEY DATASET; you may give that folder or any folder "
        "above it. Images may be JPEG, PNG, BMP or TIFF."
    )
    base = common.workspace()
    choose_folder(base)
    choice = common.data_choice(base)
    if choice.folder is None:
        st.info(
            "No dataset chosen yet. Type the path of a dataset folder above"
            + (", or use the demo phantoms." if common.demo_data_folder(base) else
               ", or build the demo study on the Home page to get synthetic phantoms."),
            icon=":material/arrow_upward:",
        )
        return
    scan = None
    with common.shown_errors("reading the dataset"):
        root, class_folders = discover.find_root(choice.folder)
        key = (str(root), common.folder_signature(root, class_folders))
        cache = str(base / workspace_module.CACHE_FOLDER)
        scan = common.scan_folder(key[0], key[1], cache)
    if scan is None:
        return
    draw_overview(scan)
    with common.shown_errors("drawing the samples"):
        draw_samples(scan)
    report = None
    with common.shown_errors("auditing the dataset"):
        report = common.audit_of(scan, key)
        draw_audit(report)
    if report is not None:
        with common.shown_errors("previewing the splits"):
            draw_splits(report, key)


def choose_folder(base: Path) -> None:
    """The folder field, checked when submitted, and the demo phantoms' button."""
    choice = common.data_choice(base)
    with st.form("dataset-folder", border=False):
        field, submit = st.columns([5, 1], vertical_alignment="bottom")
        text = field.text_input(
            "Dataset folder",
            value=str(choice.folder or ""),
            placeholder="/data/CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone",
            help="An absolute path on the machine that runs the app.",
        )
        submitted = submit.form_submit_button("Use this folder", type="primary")
    if submitted:
        with common.shown_errors("checking the folder"):
            common.choose_data_folder(text, base)
            st.rerun()
    demo = common.demo_data_folder(base)
    using_demo = choice.folder is not None and demo is not None and demo.resolve() in (
        choice.folder, *choice.folder.parents)
    buttons = st.container(horizontal=True)
    if demo is not None and not using_demo and buttons.button("Use the demo phantoms", icon=":material/science:"):
        with common.shown_errors("choosing the demo phantoms"):
            common.choose_data_folder(demo, base)
            st.rerun()
    if choice.folder is not None and buttons.button(
        "Read the folder again", icon=":material/refresh:",
        help="Files changed in place are not noticed automatically; this reads every file again.",
    ):
        common.scan_folder.clear()
        common.audit_of.clear()
        common.split_preview.clear()
        st.rerun()
    if choice.folder is not None:
        st.caption(f"Using `{choice.folder}` ({choice.source}).")


def draw_overview(scan: discover.DatasetScan) -> None:
    """Image counts, the class bar chart, sizes, and the files that were skipped."""
    import plotly.graph_objects as go

    st.subheader("Images")
    summary = scan.summary()
    images, skipped, ignored = st.columns(3)
    images.metric("Usable images", f"{summary['images']:,}")
    skipped.metric("Skipped (unreadable)", len(summary["skipped"]))
    ignored.metric("Other files ignored", summary["ignored_files"],
                   help="Files that are not images by their extension, such as kidneyData.csv.")
    counts = scan.per_class
    figure = go.Figure(go.Bar(
        x=list(counts), y=list(counts.values()), text=[f"{value:,}" for value in counts.values()],
        textposition="outside", marker_color=[common.CLASS_COLOURS.get(name, "#888") for name in counts],
    ))
    figure.update_layout(title="Images per class", height=320, margin=dict(l=10, r=10, t=40, b=10),
                         yaxis_title="images", yaxis_range=[0, max(counts.values()) * 1.15])
    chart, facts = st.columns([3, 2])
    chart.plotly_chart(figure, width="stretch")
    sizes = summary["sizes"]
    facts.markdown(
        f"**Root** `{scan.root}`  \n**Fingerprint** `{summary['fingerprint']}` (changes when any file does)"
    )
    if sizes:
        shown = ", ".join(f"{size['width']}x{size['height']} ({size['images']:,})" for size in sizes[:4])
        more = f" and {len(sizes) - 4} more sizes" if len(sizes) > 4 else ""
        facts.markdown(f"**Sizes** {shown}{more}")
    facts.markdown("**Modes** " + ", ".join(f"{mode} ({count:,})" for mode, count in summary["modes"].items()))
    if summary["skipped"]:
        with st.expander(f"{len(summary['skipped'])} image files skipped, with the reason"):
            st.dataframe(scan.skipped[["path", "reason"]], hide_index=True)


def draw_samples(scan: discover.DatasetScan) -> None:
    """A few images of each class, spread evenly over the class's files."""
    st.subheader("Samples")
    st.caption(f"{SAMPLES_PER_CLASS} images per class, evenly spaced through each class's files in name order.")
    for label in classes.CLASS_NAMES:
        paths = scan.table.loc[scan.table["label"] == label, "path"].tolist()
        chosen = spread(paths, SAMPLES_PER_CLASS)
        st.markdown(f"**{label}** ({len(paths):,} images)")
        st.image(common.thumbnails(chosen), caption=[Path(path).name for path in chosen], width=common.THUMBNAIL_SIDE)


def spread(items: list[str], count: int) -> list[str]:
    """``count`` items evenly spaced through ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def draw_audit(report: audit_module.AuditReport) -> None:
    """Exact duplicates, label conflicts and near-duplicate clusters, with their images."""
    st.subheader("Audit: duplicates and near-duplicates")
    summary = report.to_dict()
    exact, conflicts, near, clusters = st.columns(4)
    exact.metric("Exact duplicate groups", len(report.exact_duplicate_groups),
                 help=f"Files with identical bytes (MD5); {summary['exact_duplicate_images']} images are redundant copies.")
    conflicts.metric("Label conflicts", len(report.label_conflicts),
                     help="Identical files filed under different classes.")
    near.metric("Near-duplicate clusters", len(report.near_duplicate_clusters),
                help=f"Groups of two or more images whose perceptual hashes differ in at most "
                     f"{report.threshold} of 256 bits (single linkage).")
    clusters.metric("Images in those clusters", f"{summary['images_in_near_duplicate_clusters']:,}")
    st.caption(
        f"Method: {summary['near_duplicate_method']}. Neighbouring slices of one CT series chain into "
        "one cluster, so a cluster is roughly one series."
    )
    label_of = dict(zip(report.scan.table["path"], report.scan.table["label"]))
    if report.label_conflicts:
        st.error(f"{len(report.label_conflicts)} images are filed under two or more classes; "
                 "whichever label a model learns, it is scored wrong on the other.")
        for group in report.label_conflicts[:GROUPS_SHOWN]:
            show_group(group, label_of)
    if report.exact_duplicate_groups:
        with st.expander(f"Exact duplicates: the first {min(GROUPS_SHOWN, len(report.exact_duplicate_groups))} "
                         f"of {len(report.exact_duplicate_groups)} groups"):
            for group in report.exact_duplicate_groups[:GROUPS_SHOWN]:
                show_group(group, label_of)
    if report.near_duplicate_clusters:
        st.markdown("**Near-duplicate clusters**, largest first")
        options = list(range(len(report.near_duplicate_clusters)))
        chosen = st.selectbox(
            "Cluster", options,
            format_func=lambda index: cluster_name(index, report.near_duplicate_clusters[index], label_of),
        )
        members = report.near_duplicate_clusters[chosen]
        shown = spread(members, CLUSTER_MEMBERS_SHOWN)
        st.caption(f"{len(shown)} of its {len(members)} images, evenly spaced in name order.")
        show_group(shown, label_of, with_label=len({label_of.get(path) for path in members}) > 1)
    else:
        st.success("No near-duplicate clusters: a random split is not at risk of this leakage.")


def cluster_name(index: int, members: list[str], label_of: dict[str, str]) -> str:
    """``"3: 54 images (Cyst)"``, with every class the cluster's images carry."""
    labels = sorted({label_of.get(path, "?") for path in members})
    return f"{index + 1}: {len(members)} images ({', '.join(labels)})"


def show_group(paths: list[str], label_of: dict[str, str], with_label: bool = True) -> None:
    """Images side by side, each captioned with its file name and (``with_label``) its class."""
    captions = [f"{label_of.get(path, '?')}: {Path(path).name}" if with_label else Path(path).name for path in paths]
    st.image(common.thumbnails(paths), width=common.THUMBNAIL_SIDE, caption=captions)


def draw_splits(report: audit_module.AuditReport, key: tuple) -> None:
    """Random and grouped splits side by side, with how many test images leak from training."""
    st.subheader("Split preview: random vs grouped")
    st.markdown(
        "A **random** split assigns images one by one (as the original study did); a **grouped** "
        "split keeps every near-duplicate cluster whole on one side and gives every class at least "
        f"{split_module.MIN_TEST_CLUSTERS} test clusters where it has enough. A test image with a "
        "duplicate or near-duplicate in training is one the model has, in effect, already seen."
    )
    seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1,
                           help="Both splits are deterministic for a seed.")
    results = {}
    for strategy in split_module.STRATEGIES:
        with common.shown_errors(f"making a {strategy} split"):
            results[strategy] = common.split_preview(report, key, strategy, int(seed))
    if not results:
        return
    rows = []
    for strategy, result in results.items():
        counts = result["counts"]
        leaked, exact = result["test_with_duplicate_in_train"], result["test_with_exact_duplicate_in_train"]
        rows.append({
            "split": strategy,
            "train": counts["train"], "validation": counts["val"], "test": counts["test"],
            "test images with a duplicate in train": f"{leaked} of {counts['test']} ({exact} exact, {leaked - exact} near)",
            "validation images with a duplicate in train": f"{result['val_with_duplicate_in_train']} of {counts['val']}",
        })
    st.dataframe(rows, hide_index=True)
    st.caption("Previews only: nothing is stored until a model is trained on a split (fractions 70/15/15).")
    draw_cluster_tables(results)
    random = results.get("random")
    if random and random["test_with_duplicate_in_train"]:
        st.warning(
            f"On the random split, {random['test_with_duplicate_in_train']} of {random['counts']['test']} test "
            "images have a duplicate or near-duplicate in training, so a score on it rewards remembering "
            "seen images. Train on the grouped split for an honest estimate."
        )

def draw_cluster_tables(results: dict[str, dict]) -> None:
    """Distinct near-duplicate clusters per class and subset of each split, and the grouped
    split's warnings about classes whose test images come from few clusters."""
    st.markdown("**Near-duplicate clusters per class and subset**")
    st.caption(
        "A cluster is roughly one CT series, and the slices of one series are not independent: a "
        "class's test score rests on as many cases as it has test clusters. On the random split "
        "the same clusters are on every side."
    )
    columns = st.columns(len(results))
    for column, (strategy, result) in zip(columns, results.items()):
        column.markdown(f"*{strategy}*")
        column.table(pd.DataFrame(
            [result["clusters"][subset] for subset in split_module.SUBSETS],
            index=[SUBSET_NAMES[subset] for subset in split_module.SUBSETS], columns=list(classes.CLASS_NAMES),
        ))
    grouped = results.get("grouped")
    for warning in grouped["warnings"] if grouped else []:
        st.warning(f"Grouped split: {warning}", icon=":material/warning:")


common.run_page(main)
