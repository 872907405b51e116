"""Compare: one scan, the five trained models, what each predicts and where each looks.

This is the page users come for. A scan (an upload, or a sample from the dataset or the demo
phantoms) goes through one run of each architecture; each row shows the scan and the five heat
maps side by side, each titled with the model, its predicted class and its confidence, and last
the calibrated ensemble of those models (its verdict and combined map), then the probabilities of
every model in one chart and how far the models agree.

What the page shows around the heat maps is decided by :mod:`kidney_lab.explain.compare`: the
runs it uses by default, how far the models agree, and the predictions table it offers for
download; this page only draws it.

Speed. Explanations are cached per (scan contents, DICOM window, run, model file, method,
target) in ``st.cache_data``, the run and model file by the library's key
(:func:`kidney_lab.runs.model_key`), and the library keeps the explainers (loaded models, compiled
passes) in its own bounded LRU (:func:`kidney_lab.explain.load_explainer`). So moving the
opacity slider or changing the colour map only re-blends cached heat maps, and changing one
run recomputes that run alone. The page times itself, from the scan's bytes to the last
overlay drawn, and says how long it took.

Truth first. Above a scan's row come its content warnings (:func:`kidney_lab.data.content.check_scan`:
not CT, odd rescale, colour, constant, noise); before each model's class come its caveats
(:func:`kidney_lab.explain.compare.trust`), an out-of-distribution flag as an error; the headline
(:func:`kidney_lab.explain.compare.agreement`) never counts a flagged model. The method the page
opens with is the one whose maps point at the lesion most often on the shown runs' test phantoms
(:func:`kidney_lab.explain.compare.default_method`).

Honesty. Every number drawn is the model's own output for this scan; a scan the reader rejects
shows its message and the other scans still work; a run that cannot be loaded is reported in
its own slot; models trained on synthetic phantoms are called so; agreement is never presented
as a diagnosis. Uploads stay in memory and are never written to disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from kidney_lab import runs
from kidney_lab.data import phantom
from kidney_lab.data import scan as scan_module
from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.errors import KidneyLabError
from kidney_lab.explain import compare
from pages import common

if TYPE_CHECKING:
    from kidney_lab.explain import Explanation

# The target-class choice that explains each model's own prediction.
OWN_PREDICTION = "each model's own prediction"
# The DICOM window choice that lets the reader decide (the file's window, else kidney, else min-max).
AUTOMATIC_WINDOW = "automatic"
# Sample images offered per class and source.
SAMPLES_PER_CLASS = 8
# Explanations kept by the page's cache (each holds one heat map at the scan's size).
CACHED_EXPLANATIONS = 120
OPACITY_STEP = 0.05
# What a model whose out-of-distribution detector flags the scan shows before its class.
OUT_OF_DISTRIBUTION = "Out of distribution — not a kidney CT like its training data"
UPLOAD_HELP = ("PNG, JPEG, TIFF or DICOM. The format is found from the file's contents, so DICOM "
               "files without an extension work. Files stay in memory and are never saved.")


@dataclasses.dataclass(frozen=True)
class ScanInput:
    """One scan to compare, as bytes in memory.

    Attributes:
        name: the upload's file name or the sample's label (for titles and messages only).
        data: the file's bytes.
        source: ``"upload"`` or the sample's source.
        path: the sample's file (None for an upload), so the library can tell a phantom.
    """

    name: str
    data: bytes
    source: str
    path: str | None = None

    @property
    def digest(self) -> str:
        """SHA-256 of the bytes: the scan's identity in the caches."""
        return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the heat maps are made and drawn.

    Attributes:
        method: one of :data:`kidney_lab.explain.METHODS`.
        target: the class every map explains, or None for each model's own prediction.
        opacity: weight of the heat map over the scan, 0 to 1.
        colormap: one of :data:`kidney_lab.explain.COLORMAPS`.
    """

    method: str
    target: str | None
    opacity: float
    colormap: str


@dataclasses.dataclass
class ScanRow:
    """What one scan's row found and how long it took.

    Attributes:
        item: the scan's input.
        scan: the scan as read.
        results: one explanation per run that worked, in the order of the architectures.
        errors: run id -> message, per run that did not.
        seconds: wall-clock time of the row, from the bytes to the last overlay drawn.
        explaining: the part of it spent getting explanations (near 0 when all were cached).
    """

    item: ScanInput
    scan: scan_module.Scan
    results: list[Explanation]
    errors: dict[str, str]
    seconds: float = 0.0
    explaining: float = 0.0


def main() -> None:
    """Draw the Compare page."""
    st.title("Compare")
    st.markdown(
        "Upload a kidney CT slice and see what each of the five trained models predicts and "
        "**where it looks**: one heat map per model, side by side. For research and teaching "
        "only; nothing here is a diagnosis."
    )
    base = common.workspace()
    completed: list[runs.RunRecord] | None = None
    with common.shown_errors("listing the trained models"):
        completed = compare.usable_runs(base)
    if completed is None:
        return
    if not completed:
        explain_empty()
        return
    from kidney_lab.models import registry

    chosen = choose_runs(completed, registry.MODEL_NAMES)
    settings = choose_settings(compare.default_method([record.path for record in chosen.values() if record is not None]))
    items, window = gather_scans(base)
    if not items:
        st.info("Upload one or more scans above, or pick a sample image, to compare the models on it.",
                icon=":material/upload_file:")
        return
    rows: list[ScanRow] = []
    for index, item in enumerate(items):
        with common.shown_errors(f"comparing the models on {item.name}"):
            row = draw_scan(item, window, chosen, settings, key=f"scan-{index}")
            if row is not None:
                rows.append(row)
    if rows:
        draw_downloads(rows, settings)


# Runs -----------------------------------------------------------------------------------------


def explain_empty() -> None:
    """What to do when the workspace has no trained model."""
    st.info(
        "No trained model in this workspace yet, so there is nothing to compare. Build the demo "
        "study on the Home page (five models trained on synthetic phantoms, no download), or "
        "train the five models on your own dataset on the Train page.",
        icon=":material/info:",
    )
    st.page_link(common.page_info("pages/home.py").path, label="Home: build the demo study", icon=":material/home:")
    st.page_link(common.page_info("pages/train.py").path, label="Train: train on your dataset",
                 icon=":material/model_training:")


def choose_runs(completed: list[runs.RunRecord], model_names: tuple[str, ...]) -> dict[str, runs.RunRecord | None]:
    """One selector per architecture; returns registry name -> the chosen run (None for none)."""
    from kidney_lab.models import registry

    defaults = compare.default_runs(completed, model_names)
    by_id = {record.run_id: record for record in completed}
    missing = [model for model, record in defaults.items() if record is None]
    label = "Models: the run of each architecture"
    if not missing:
        label += " (the newest study, completed by older runs)" if len(
            {record.study_id for record in defaults.values()}) > 1 else " (the newest study)"
    with st.expander(label, expanded=bool(missing)):
        columns = st.columns(len(model_names))
        chosen: dict[str, runs.RunRecord | None] = {}
        for column, model in zip(columns, model_names):
            options: list[str | None] = [None] + [record.run_id for record in completed if record.model == model]
            default = defaults[model]
            picked = column.selectbox(
                registry.get_spec(model).display_name, options,
                index=options.index(default.run_id) if default is not None else 0,
                format_func=lambda run_id: "none" if run_id is None else run_label(by_id[run_id]),
                key=f"compare-run-{model}",
                help="Completed runs of this architecture, newest first.",
            )
            chosen[model] = by_id.get(picked) if picked is not None else None
        st.caption(f"By default: {compare.DEFAULT_RUNS_RULE}. "
                   "Runs of different studies were trained and tested on different splits.")
    fallback = [registry.get_spec(model).display_name for model, record in chosen.items()
                if record is not None and record.weights_note]
    if fallback:
        st.caption(f"Trained from random initialisation because ImageNet weights were unavailable: "
                   f"{', '.join(fallback)} (the Evaluation page gives the reason).")
    absent = [registry.get_spec(model).display_name for model, record in chosen.items() if record is None]
    if absent:
        st.warning(
            f"{len(model_names) - len(absent)} of {len(model_names)} architectures have a run chosen; "
            f"missing: {', '.join(absent)}. The page shows the models it has. Train the missing ones on "
            "the Train page, or build the demo study (all five) on the Home page.",
            icon=":material/warning:",
        )
        links = st.columns(4)
        links[0].page_link("pages/train.py", label="Train", icon=":material/model_training:")
        links[1].page_link("pages/home.py", label="Home", icon=":material/home:")
    return chosen


def run_label(record: runs.RunRecord) -> str:
    """A run in a selector: its date, test accuracy (from metrics.json) and study."""
    metrics = common.read_metrics(record.path) or {}
    accuracy = metrics.get("accuracy")
    parts = [f"{record.run_id[:8]}-{record.run_id[9:13]}"]
    if isinstance(accuracy, (int, float)):
        parts.append(f"test acc. {accuracy:.0%}")
    if phantom.is_phantom_data(record.info.data_root):
        parts.append("phantoms")
    parts.append((record.study_id or "no study")[-4:])
    return " · ".join(parts)


# Settings and scans ---------------------------------------------------------------------------


def choose_settings(default_method: str = compare.DEFAULT_METHOD) -> Settings:
    """The method, target class, opacity and colour map controls; the method starts at
    ``default_method`` (:func:`kidney_lab.explain.compare.default_method` of the runs shown)."""
    from kidney_lab import explain
    from kidney_lab.explain import cam, render

    method_column, target_column, opacity_column, colour_column = st.columns([4, 2.2, 2, 1.2])
    methods = [cam.get_method(name) for name in cam.method_names()]
    names = [chosen.name for chosen in methods]
    opening = default_method if default_method in names else compare.DEFAULT_METHOD
    method = method_column.segmented_control(
        "Method", names, default=opening, required=True, key="compare-method",
        format_func=lambda name: cam.get_method(name).display_name,
        help="\n\n".join(f"{chosen.display_name}: {chosen.help}" for chosen in methods)
        + f"\n\nThe page opens with {cam.get_method(opening).display_name}: of the methods measured on these runs' "
          "test phantoms (explain-eval), the one whose maps point at the lesion most often.",
    )
    chosen = cam.get_method(method or compare.DEFAULT_METHOD)
    # A method whose map is the same for every class has no class to choose.
    target = target_column.selectbox(
        "Explain the class", [OWN_PREDICTION, *CLASS_NAMES], key="compare-target",
        help="The class each heat map explains: by default each model's own prediction.",
        disabled=not chosen.explains_a_class,
    )
    opacity = opacity_column.slider(
        "Heat-map opacity", 0.0, 1.0, render.DEFAULT_OPACITY, OPACITY_STEP, key="compare-opacity",
        help="0 shows the scan alone, 1 the heat map alone. Changing it does not recompute anything.",
    )
    colormap = colour_column.selectbox(
        "Colours", list(explain.COLORMAPS), key="compare-colormap",
        help="turbo: blue is low, red is high. viridis and inferno also read in greyscale.",
    )
    explained = target if chosen.explains_a_class and target != OWN_PREDICTION else None
    return Settings(method=chosen.name, target=explained, opacity=float(opacity), colormap=colormap)


def gather_scans(base: Path) -> tuple[list[ScanInput], str | None]:
    """The uploaded scans and the chosen sample images, in that order, and the DICOM window.

    The window picker shows only when a DICOM file is among the scans; the window is None for
    the reader's automatic choice.
    """
    upload_column, sample_column = st.columns([3, 2])
    with upload_column:
        uploads = st.file_uploader("Scans (PNG, JPEG, TIFF or DICOM)", accept_multiple_files=True, key="compare-uploads", help=UPLOAD_HELP)
    items = [ScanInput(upload.name, upload.getvalue(), "upload") for upload in uploads or []]
    with sample_column:
        samples = sample_images(base)
        if samples:
            picked = st.multiselect("Or pick sample images", list(samples), key="compare-samples",
                                    placeholder="Phantoms or dataset slices, by class",
                                    help="A few images of each class from the demo phantoms and the dataset folder.")
            for label in picked:
                with common.shown_errors(f"reading the sample {label}"):
                    items.append(ScanInput(label, Path(samples[label]).read_bytes(), "sample", samples[label]))
        else:
            st.caption("No sample images: choose a dataset on the Dataset page or build the demo study.")
    if any(scan_module.sniff_content(item.data) == "dicom" or item.name.lower().endswith((".dcm", ".dicom"))
           for item in items):
        window = st.selectbox(
            "DICOM window", [AUTOMATIC_WINDOW, *scan_module.WINDOW_CHOICES], key="compare-window",
            format_func=window_label,
            help="How Hounsfield units become grey levels. Automatic: the file's own window, else kidney.",
        )
        return items, None if window == AUTOMATIC_WINDOW else window
    return items, None


def window_label(name: str) -> str:
    """A window choice in words: ``"kidney (width 400 HU, level 40 HU)"``."""
    if name == AUTOMATIC_WINDOW:
        return "automatic (the file's own window, else kidney)"
    if name in scan_module.WINDOW_PRESETS:
        width, level = scan_module.WINDOW_PRESETS[name]
        return f"{name.replace('_', ' ')} (width {width:.0f} HU, level {level:.0f} HU)"
    return {"file": "the file's own window", "minmax": "min-max (the whole range)"}.get(name, name)


def sample_images(base: Path) -> dict[str, str]:
    """Label -> path of a few images per class from the demo phantoms and the dataset folder."""
    sources = []
    demo = common.demo_data_folder(base)
    if demo is not None:
        sources.append(("Phantom", str(demo)))
    choice = common.data_choice(base)
    if choice.folder is not None and choice.folder.is_dir() and (demo is None or choice.folder != demo):
        sources.append(("Dataset", str(choice.folder)))
    samples: dict[str, str] = {}
    for source, folder in sources:
        with common.shown_errors(f"listing the sample images in {folder}"):
            samples.update(listed_samples(source, folder))
    return samples


@st.cache_data(max_entries=8, ttl=300, show_spinner=False)
def listed_samples(source: str, folder: str) -> dict[str, str]:
    """The first :data:`SAMPLES_PER_CLASS` images (in natural order) of each class in ``folder``."""
    from kidney_lab.data import discover

    _, class_folders = discover.find_root(folder)
    samples: dict[str, str] = {}
    for label in CLASS_NAMES:
        if label not in class_folders:
            continue
        with os.scandir(class_folders[label]) as entries:
            names = [entry.name for entry in entries
                     if entry.is_file() and entry.name.lower().endswith(scan_module.SUPPORTED_EXTENSIONS)]
        for name in sorted(names, key=natural_key)[:SAMPLES_PER_CLASS]:
            samples[f"{source} · {label} · {name}"] = str(Path(class_folders[label]) / name)
    return samples


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``"Cyst- (2)"`` before ``"Cyst- (10)"``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# Explaining -----------------------------------------------------------------------------------


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def read_upload(digest: str, _data: bytes, name: str, window: str | None) -> scan_module.Scan:
    """The scan in ``_data`` (``digest`` is its key); raises the reader's ScanReadError."""
    return scan_module.read_scan(_data, window=window, name=name)


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def content_warnings(scan_key: tuple[str, str | None], _scan: scan_module.Scan) -> list[dict[str, str]]:
    """:func:`kidney_lab.data.content.check_scan` of a scan (``scan_key`` is its key): the signs
    that it is not a grey axial CT slice, found before any model runs."""
    from kidney_lab.data import content

    return content.check_scan(_scan)


def scan_is_phantom(item: ScanInput) -> bool | None:
    """Whether the library knows the scan for a kidney_lab phantom (only a sample's file says;
    None for an upload)."""
    return None if item.path is None else compare.is_phantom_scan(item.path)


def caveats_of(result: Explanation, is_phantom: bool | None) -> list[str]:
    """What must be read before a model's class: :func:`kidney_lab.explain.compare.trust`, the
    one place that decides it."""
    return list(compare.trust(result, is_phantom))


def draw_caveats(result: Explanation, is_phantom: bool | None) -> None:
    """The model's caveats, before its class: an out-of-distribution flag as an error, others as
    a warning."""
    caveats = caveats_of(result, is_phantom)
    details = "\n".join(f"- {caveat}" for caveat in caveats)
    found = getattr(result, "ood", None)
    if found and found.get("flagged"):
        st.error(f"**{OUT_OF_DISTRIBUTION}**\n\n{details}", icon=":material/block:")
    elif caveats:
        st.warning(details, icon=":material/warning:")


@st.cache_data(max_entries=CACHED_EXPLANATIONS, ttl=3600, show_spinner=False)
def explanation(scan_key: tuple[str, str | None], _scan: scan_module.Scan, run_key: tuple[str, int, int],
                method: str, target: str | None) -> Explanation:
    """One run's prediction and heat map of one scan, cached by scan, run, method and target.

    A failure is raised (and so not cached) as a KidneyLabError with the library's message.
    """
    from kidney_lab import explain
    from kidney_lab.explain import cam

    report = explain.explain([run_key[0]], _scan, method=method, target=target)
    if report.errors:
        raise cam.ExplainError(report.errors[0]["message"])
    return report.results[0]


def draw_scan(item: ScanInput, window: str | None, chosen: dict[str, runs.RunRecord | None],
              settings: Settings, key: str) -> ScanRow | None:
    """One scan's row: the scan and one overlay per architecture, the chart and the agreement.

    Returns:
        What was found, or None when the scan cannot be read (its message is shown).
    """
    from kidney_lab import explain
    from kidney_lab.explain import cam
    from kidney_lab.models import registry

    started = time.perf_counter()
    with st.container(border=True):
        try:
            scan = read_upload(item.digest, item.data, item.name, window)
        except KidneyLabError as error:
            st.error(f"**{item.name}** was not compared: {error}", icon=":material/error:")
            return None
        st.markdown(f"**{item.name}**")
        st.caption(scan_caption(scan))
        for warning in content_warnings((item.digest, window), scan):
            st.warning(f"**Not like a kidney CT slice**: {warning['message']}", icon=":material/warning:")
        is_phantom = scan_is_phantom(item)
        row = ScanRow(item, scan, [], {})
        columns = st.columns(2 + len(chosen))  # The scan, one column per architecture, the ensemble.
        with columns[0]:
            st.markdown("**Scan**")
            st.caption("as the models read it")
            st.image(scan.to_uint8(), width="stretch")
        computing = st.empty()
        loaded = {(run_id, method) for run_id, method in cam.cached_explainers()}
        for column, (model, record) in zip(columns[1:], chosen.items()):
            display = registry.get_spec(model).display_name
            with column:
                st.markdown(f"**{display}**")
                if record is None:
                    st.caption("no run chosen")
                    continue
                waiting = (f"{display}: explaining ..." if (record.run_id, settings.method) in loaded
                           else f"Loading {display} (only the first time; it can take tens of seconds) ...")
                asked = time.perf_counter()
                try:
                    with computing.container(), st.spinner(waiting):
                        result = explanation((item.digest, window), scan, runs.model_key(record.path),
                                             settings.method, settings.target)
                except (KidneyLabError, OSError) as error:
                    st.error(f"Run {record.run_id} could not be used: {error}", icon=":material/error:")
                    row.errors[record.run_id] = str(error)
                    continue
                finally:
                    row.explaining += time.perf_counter() - asked
                row.results.append(result)
                draw_caveats(result, is_phantom)
                st.caption(result_caption(result))
                st.image(explain.overlay(scan, result.heatmap, settings.opacity, settings.colormap), width="stretch")
                if not result.raw_max > result.raw_min:
                    st.caption("Flat map: nothing stands out for this class at this model's resolution.")
                trust = trust_caption(record, settings.method)
                if trust:
                    st.caption(trust)
        computing.empty()
        draw_ensemble(columns[-1], row, chosen, settings)
        row.seconds = time.perf_counter() - started
        if row.results:
            draw_summary(row, chosen, key)
    return row


def draw_ensemble(column: Any, row: ScanRow, chosen: dict[str, runs.RunRecord | None], settings: Settings) -> None:
    """The last column: the calibrated ensemble of the models drawn (:func:`compare.ensemble_result`),
    its verdict and its combined map. Only maps of one class are combined: a model whose map explains
    another class is left out and named (choosing a class to explain gives every model's map of it)."""
    from kidney_lab import explain

    with column:
        st.markdown("**Ensemble**")
        if len(row.results) < 2:
            st.caption("needs two or more models")
            return
        with common.shown_errors("combining the models"):
            folders = {record.run_id: record.path for record in chosen.values() if record is not None}
            verdict = compare.ensemble_result(
                row.results, compare.run_temperatures([folders[result.run_id] for result in row.results]),
                settings.target,
            )
            text = f"Verdict: {verdict.predicted} · {percent(verdict.probabilities[verdict.predicted])}"
            if verdict.map_class != verdict.predicted:
                text += f" · combined map for {verdict.map_class} ({percent(verdict.probabilities[verdict.map_class])})"
            st.caption(text)
            if verdict.heatmap is not None:
                st.image(explain.overlay(row.scan, verdict.heatmap, settings.opacity, settings.colormap), width="stretch")
            st.caption(f"Mean of {len(verdict.members)} models' probabilities, each after its own temperature "
                       f"scaling; the map combines {len(verdict.map_weights)} models' maps for {verdict.map_class}, "
                       "each weighted by its probability of it.")
            hint = (" Choose a class under *Explain the class* to combine every model's map of it."
                    if len(verdict.map_weights) < len(verdict.members) else "")
            if verdict.notes:
                st.caption(" ".join(verdict.notes) + hint)


def scan_caption(scan: scan_module.Scan) -> str:
    """The scan's format and size, and for DICOM the modality and window used."""
    metadata = scan.metadata
    parts = [f"{metadata.get('format', '?')}, {metadata.get('width', '?')}×{metadata.get('height', '?')} px"]
    if metadata.get("modality"):
        parts.append(str(metadata["modality"]))
    if metadata.get("window_width") is not None and metadata.get("window_center") is not None:
        parts.append(f"window {metadata.get('window') or ''} (width {metadata['window_width']:.0f}, "
                     f"level {metadata['window_center']:.0f} HU)")
    parts.extend(str(note) for note in metadata.get("notes") or [])
    return " · ".join(parts)


def trust_caption(record: runs.RunRecord, method: str) -> str | None:
    """How often this run's maps of ``method`` hit the lesion on its test split's phantoms, from
    its stored ``faithfulness.json`` (None when that was not measured)."""
    try:
        payload = runs.read_faithfulness(record.path)
    except KidneyLabError:
        return None
    scores = ((payload or {}).get("methods") or {}).get(method)
    pointing = scores.get("pointing_game") if isinstance(scores, dict) else None
    if not isinstance(pointing, float):
        return None
    notes = []
    chance = (payload.get("baselines") or {}).get("pointing_game")
    if isinstance(chance, float):
        notes.append(f"chance {chance:.0%}")
    random_weights = scores.get("random_weights_pointing_game")
    if isinstance(random_weights, float):
        notes.append(f"random weights {random_weights:.0%}")
    per_class = scores.get("per_class") if isinstance(scores.get("per_class"), dict) else {}
    lesion_images = sum(int(row.get("images") or 0) for row in per_class.values()
                        if isinstance(row, dict) and row.get("pointing_game") is not None)
    counted = f"On {lesion_images} test images with a lesion" if lesion_images else "On its test images with a lesion"
    return (f"{counted}, this method's maximum lay in the lesion {pointing:.0%} of the time"
            + (f" ({', '.join(notes)})." if notes else "."))


def result_caption(result: Explanation) -> str:
    """``"Tumor · 87.3%"``, and which class the map explains when it is not the prediction."""
    text = f"{result.predicted} · {percent(result.probabilities[result.predicted])}"
    if result.target != result.predicted:
        text += f" · map of {result.target} ({percent(result.probabilities[result.target])})"
    return text


def percent(probability: float) -> str:
    """A probability as a percentage with one decimal that never rounds up to a certain 100%
    or down to an impossible 0%."""
    if 0.999 <= probability < 1.0:
        return ">99.9%"
    if 0.0 < probability < 0.0005:
        return "<0.1%"
    return f"{probability:.1%}"


def draw_summary(row: ScanRow, chosen: dict[str, runs.RunRecord | None], key: str) -> None:
    """The probability chart across models, the agreement, and how long the row took."""
    chart_column, text_column = st.columns([3, 2])
    with chart_column:
        st.plotly_chart(probability_chart(row.results), width="stretch", key=f"{key}-chart",
                        config={"displayModeBar": False})
    with text_column:
        st.markdown(compare.agreement(row.results).text)
        phantom_runs = [record for record in chosen.values()
                        if record is not None and phantom.is_phantom_data(record.info.data_root)]
        caveat = ("Models agreeing is not a diagnosis: they can all be wrong together, and none of them "
                  "replaces a radiologist.")
        if phantom_runs:
            caveat += (f" {len(phantom_runs)} of these models learned from synthetic phantoms only; on a real "
                       "CT slice their predictions say little.")
        studies = {record.study_id for record in chosen.values() if record is not None}
        if len(studies) > 1:
            caveat += f" The runs come from {len(studies)} studies, trained and tested on different splits."
        st.caption(caveat)
        st.caption(f"{len(row.results)} models drawn in {row.seconds:.2f} s on this server, "
                   f"{row.explaining:.2f} s of it explaining (cached explanations take no time).")


def probability_chart(results: list[Explanation]) -> Any:
    """Horizontal stacked bars: one per model, one coloured segment per class probability."""
    import plotly.graph_objects as go

    names = [result.display_name for result in results]
    figure = go.Figure()
    for label in CLASS_NAMES:
        values = [result.probabilities[label] for result in results]
        figure.add_trace(go.Bar(
            y=names, x=values, name=label, orientation="h", marker_color=common.CLASS_COLOURS[label],
            text=[f"{value:.0%}" if value >= 0.08 else "" for value in values], textposition="inside",
            hovertemplate=f"%{{y}}: {label} %{{x:.1%}}<extra></extra>",
        ))
    figure.update_layout(
        barmode="stack", height=60 + 34 * len(results), margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(range=[0, 1], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%", title=None), yaxis=dict(autorange="reversed"),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0, traceorder="normal"),
        uniformtext=dict(minsize=9, mode="hide"),
    )
    return figure


# Downloads ------------------------------------------------------------------------------------


def draw_downloads(rows: list[ScanRow], settings: Settings) -> None:
    """Download buttons: the overlays as PNGs in a zip, and the predictions as CSV."""
    overlays, table = st.columns(2)
    overlays.download_button(
        "Overlays (PNG, zipped)", lambda: overlay_zip(rows, settings), file_name="kidney_lab-overlays.zip",
        mime="application/zip", icon=":material/download:", on_click="ignore", key="compare-zip",
    )
    table.download_button(
        "Predictions (CSV)", compare.predictions_csv([(row.item.name, row.results) for row in rows]),
        file_name="kidney_lab-predictions.csv",
        mime="text/csv", icon=":material/download:", on_click="ignore", key="compare-csv",
    )


def safe_stem(name: str, index: int) -> str:
    """A file-name-safe stem for the scan's files in the zip (numbered, so names never collide)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.split(" · ")[-1]).stem).strip("._") or "scan"
    return f"{index + 1:02d}-{stem[:60]}"


def overlay_zip(rows: list[ScanRow], settings: Settings) -> bytes:
    """A zip (built in memory) with each scan and its overlays as PNG files."""
    from kidney_lab import explain

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, row in enumerate(rows):
            stem = safe_stem(row.item.name, index)
            archive.writestr(f"{stem}/scan.png", explain.to_png(row.scan.to_uint8()))
            for result in row.results:
                picture = explain.overlay(row.scan, result.heatmap, settings.opacity, settings.colormap)
                archive.writestr(f"{stem}/{result.model}-{result.method}-{result.target}.png", explain.to_png(picture))
    return buffer.getvalue()


common.run_page(main)
