"""A model card per run: what was trained on what, how well it did, and what it is not for.

The card (Markdown, after Mitchell et al., 2019, "Model Cards for Model Reporting") is written
only from the run's stored files: ``run.json`` (model, data, split, training settings),
the stored split manifest (class counts per subset), ``predictions.csv`` of each evaluation
(every score is recomputed from it, with its bootstrap interval), ``metrics.json`` (inference
time, the kept epoch) and, when present, ``faithfulness.json``. Nothing in it is typed by hand,
so regenerating it after a new evaluation brings it up to date.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.data import phantom
from kidney_lab.data import split as split_module
from kidney_lab.evaluation import metrics as metrics_module
from kidney_lab.evaluation import stats
from kidney_lab.evaluation import store
from kidney_lab.models import registry

MODEL_CARD_FILE = "model_card.md"

INTENDED_USE = (
    "Research and teaching: comparing deep-learning classifiers of kidney CT slices (Normal, "
    "Cyst, Stone, Tumor) and studying what they look at. **Not for diagnosis**: it is not a "
    "medical device, it was not validated on patients, and no clinical decision may rest on it."
)


def model_card(run_dir: str | os.PathLike[str]) -> str:
    """The Markdown model card of a run, generated from its stored files.

    Raises:
        kidney_lab.runs.RunNotFoundError: no readable run folder there.
    """
    folder = Path(run_dir)
    record = runs.read_run(folder)
    if not record.info_readable:
        raise runs.RunNotFoundError(f"No readable run at {folder}: {record.problem}.")
    info = record.info
    spec = _spec(info)
    name = spec.display_name if spec is not None else str(info.model)
    lines = [
        f"# Model card: {name}, run {record.run_id}",
        "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by kidney_lab "
        f"from the files in `{folder.absolute()}`. Status: {record.state}"
        + (f" ({record.problem})" if record.problem else "") + ".",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
    ]
    test, test_problem = _evaluation(folder, runs.TEST_SOURCE)
    lines += _model_section(info, spec, test)
    lines += _data_section(info)
    lines += _training_section(info, test)
    lines += _test_section(test, test_problem)
    external = _external_evaluations(folder)
    lines += _external_section(external)
    lines += _faithfulness_section(folder)
    lines += _limits_section(info, test, external)
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(run_dir: str | os.PathLike[str]) -> Path:
    """Write :func:`model_card` to ``<run>/model_card.md`` (atomically) and return its path."""
    path = Path(run_dir) / MODEL_CARD_FILE
    fileio.atomic_write_text(path, model_card(run_dir))
    return path.absolute()


def _spec(info: runs.RunInfo) -> registry.ModelSpec | None:
    try:
        return registry.get_spec(info.model or "")
    except errors.ConfigError:
        return None


def _evaluation(folder: Path, source: str) -> tuple[dict[str, Any] | None, str | None]:
    """Scores recomputed from the stored predictions, merged over the stored metrics."""
    try:
        predictions = store.load_predictions(folder, source)
    except (store.EvaluationError, metrics_module.PredictionsError) as error:
        return None, str(error)
    try:
        stored = store.load_metrics(folder, source)
    except store.EvaluationError:
        stored = {}
    scores = stats.metrics_with_intervals(predictions, store.split_kind(folder, source, stored))
    return {**stored, **scores}, None


def _model_section(info: runs.RunInfo, spec: registry.ModelSpec | None, test: dict[str, Any] | None) -> list[str]:
    lines = ["## Model", ""]
    if spec is not None:
        lines.append(f"- Architecture: {spec.display_name} (`{spec.name}`, {spec.family}; {spec.reference})")
        lines.append(f"- Preprocessing inside the model: {spec.preprocessing}")
    lines.append(f"- Input: {info.image_size} x {info.image_size} pixels, raw 0-255 grayscale repeated to RGB")
    lines.append(f"- Classes (output order): {', '.join(info.class_names or classes.CLASS_NAMES)}")
    weights = info.weights or "unknown"
    lines.append(f"- Weights: {weights} (asked for: {info.weights_requested or 'unknown'})")
    if info.weights_note:
        lines.append(f"- Weights note: {info.weights_note}")
    lines.append(f"- Parameters: {_number(info.parameters)}")
    if test is not None and test.get("model_bytes") is not None:
        lines.append(f"- Model file: {test['model_bytes'] / 1e6:.1f} MB")
    if test is not None and test.get("ms_per_image_batch_1") is not None:
        lines.append(
            f"- Inference ({test.get('timing_device', 'unknown device')}, warm, median of "
            f"{test.get('timing_repeats')}): {test['ms_per_image_batch_1']:.1f} ms per image at batch 1, "
            f"{test['ms_per_image_batch_32']:.2f} ms per image at batch 32"
        )
    return lines + [""]


def _data_section(info: runs.RunInfo) -> list[str]:
    lines = ["## Data", ""]
    lines.append(f"- Folder: `{info.data_root}`")
    lines.append(f"- Fingerprint: `{info.dataset_fingerprint}`, {_number(info.dataset_images)} images")
    if phantom.is_phantom_data(info.data_root):
        lines.append("- Kind: synthetic phantoms made by kidney_lab (not patient scans)")
    lines += ["", "## Split", ""]
    try:
        data_split = split_module.load_split(info.workspace, info.split_id, root=info.data_root)
    except (errors.SplitError, TypeError) as error:
        lines.append(f"- Split `{info.split_id}` ({info.split_strategy}): manifest unreadable ({error}).")
        counts = info.split_counts or {}
        lines.append("- Images: " + ", ".join(f"{subset} {count}" for subset, count in counts.items()))
        return lines + [""]
    leakage = data_split.leakage("test")
    lines.append(
        f"- `{data_split.split_id}`: {data_split.strategy} split, seed {data_split.seed}"
        + (" (near-duplicate clusters kept whole on one side)" if data_split.strategy == "grouped"
           else " (image level: near-duplicate slices can land on both sides)")
    )
    lines.append(
        f"- Test images with a duplicate in training: {leakage['exact_or_near']} "
        f"({leakage['exact']} exact; perceptual-hash threshold {data_split.threshold} bits)"
    )
    lines += ["", "| subset | " + " | ".join(classes.CLASS_NAMES) + " | total |",
              "|---" * (len(classes.CLASS_NAMES) + 2) + "|"]
    per_class = data_split.counts_per_class
    for subset in split_module.SUBSETS:
        counts = per_class[subset]
        lines.append(f"| {subset} | " + " | ".join(str(counts[name]) for name in classes.CLASS_NAMES)
                     + f" | {data_split.counts[subset]} |")
    totals = [sum(per_class[subset][name] for subset in split_module.SUBSETS) for name in classes.CLASS_NAMES]
    lines.append("| all | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    return lines + [""]


def _training_section(info: runs.RunInfo, test: dict[str, Any] | None) -> list[str]:
    config = info.config or {}
    lines = ["## Training", ""]
    lines.append(
        f"- Epochs: {_number(info.epochs_trained)} trained of at most {config.get('epochs', 'unknown')} "
        f"(early-stopping patience {config.get('patience', 'unknown')})"
    )
    lines.append(
        f"- Optimiser: Adam, learning rate {config.get('learning_rate', 'unknown')}, schedule "
        f"{config.get('lr_schedule', 'unknown')}, batch {config.get('batch_size', 'unknown')}, "
        f"augmentation {'on' if config.get('augmentation') else 'off'}, seed {config.get('seed', 'unknown')}"
    )
    if info.train_seconds is not None:
        lines.append(f"- Time: {info.train_seconds:.0f} s on {info.device or 'an unknown device'}")
    kept = (test or {}).get("kept_epoch") or info.kept_epoch
    if kept:
        lines.append(
            f"- Kept checkpoint: epoch {kept.get('epoch')} (lowest validation loss): train accuracy "
            f"{_score(kept.get('train_accuracy', kept.get('accuracy')))}, loss {_score(kept.get('train_loss', kept.get('loss')))}; "
            f"validation accuracy {_score(kept.get('val_accuracy'))}, loss {_score(kept.get('val_loss'))}"
        )
    return lines + [""]


def _test_section(test: dict[str, Any] | None, problem: str | None) -> list[str]:
    lines = ["## Test metrics", ""]
    if test is None:
        return lines + [f"No usable test evaluation: {problem}", ""]
    intervals = test["intervals"]
    level = f"{intervals['level']:.0%}"
    lines.append(
        f"On {test['images']} test images ({test.get('split_kind', 'unknown')} split); "
        f"{level} intervals from {intervals['resamples']} bootstrap resamples (seed {intervals['seed']}) "
        f"{stats.resampling_words(intervals)}."
    )
    lines += [f"- Warning: {sentence}" for sentence in stats.few_cluster_warnings(test.get("clusters_per_class"))]
    lines += [
        "",
        f"- Accuracy: {_score(test['accuracy'])} [{_score(intervals['accuracy'][0])}, {_score(intervals['accuracy'][1])}]",
        f"- Macro F1: {_score(test['macro_f1'])} [{_score(intervals['macro_f1'][0])}, {_score(intervals['macro_f1'][1])}]",
        f"- Balanced accuracy: {_score(test['balanced_accuracy'])}",
        f"- Macro ROC AUC (one-vs-rest): {_score(test['macro_roc_auc'])}; macro average precision: "
        f"{_score(test['macro_average_precision'])}",
        f"- Expected calibration error ({test['calibration']['bins']} bins): {_score(test['ece'])}",
        f"- Loss (cross-entropy): {_score(test['loss'])}",
        "",
        "| class | precision | recall | specificity | F1 | ROC AUC | AP | support |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in test["per_class"].items():
        lines.append(
            f"| {name} | {_score(row['precision'])} | {_score(row['recall'])} | {_score(row['specificity'])} | "
            f"{_score(row['f1'])} | {_score(row['roc_auc'])} | {_score(row['average_precision'])} | {row['support']} |"
        )
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              "| true \\ predicted | " + " | ".join(test["classes"]) + " |",
              "|---" * (len(test["classes"]) + 1) + "|"]
    for name, counts in zip(test["classes"], test["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(count) for count in counts) + " |")
    return lines + [""]


def _external_evaluations(folder: Path) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """``(source, scores, problem)`` of every evaluation of an external folder."""
    return [
        (item["source"], *_evaluation(folder, item["source"]))
        for item in store.list_evaluations(folder)
        if item["source"] != runs.TEST_SOURCE
    ]


def _external_section(external: list[tuple[str, dict[str, Any] | None, str | None]]) -> list[str]:
    lines = ["## External evaluations", ""]
    if not external:
        return lines + ["None yet (`python -m kidney_lab evaluate RUN_DIR --data FOLDER`).", ""]
    lines += ["| folder | fingerprint | images | accuracy [95% CI] | macro F1 [95% CI] | duplicates of training images |",
              "|---|---|---|---|---|---|"]
    for source, scores, problem in external:
        if scores is None:
            lines.append(f"| | `{source}` | unreadable: {problem} | | | |")
            continue
        intervals = scores["intervals"]
        lines.append(
            f"| `{scores.get('data')}` | `{source}` | {scores['images']} | "
            f"{_score(scores['accuracy'])} [{_score(intervals['accuracy'][0])}, {_score(intervals['accuracy'][1])}] | "
            f"{_score(scores['macro_f1'])} [{_score(intervals['macro_f1'][0])}, {_score(intervals['macro_f1'][1])}] | "
            f"{_number(scores.get('test_with_duplicate_in_train'))} |"
        )
    return lines + [""]


def _faithfulness_section(folder: Path) -> list[str]:
    try:
        payload = runs.read_faithfulness(folder)
    except runs.EvaluationError:
        return []
    if payload is None:
        return []
    methods = payload["methods"]
    lines = ["## Explanation faithfulness", "",
             f"From `{runs.FAITHFULNESS_FILE}` ({_number(payload.get('images'))} images of `{payload.get('data')}`).", "",
             "| method | pointing game | energy in lesion mask | deletion AUC (random) | insertion AUC (random) |",
             "|---|---|---|---|---|"]
    for method, values in methods.items():
        if not isinstance(values, dict):
            continue
        lines.append(
            f"| {method} | {_score(values.get('pointing_game'))} | {_score(values.get('energy_in_mask'))} | "
            f"{_score(values.get('deletion_auc'))} ({_score(values.get('random_deletion_auc'))}) | "
            f"{_score(values.get('insertion_auc'))} ({_score(values.get('random_insertion_auc'))}) |"
        )
    return lines + [""]


def _limits_section(
    info: runs.RunInfo,
    test: dict[str, Any] | None,
    external: list[tuple[str, dict[str, Any] | None, str | None]],
) -> list[str]:
    lines = ["## Limits", ""]
    if phantom.is_phantom_data(info.data_root):
        lines.append(
            "- Trained and tested on synthetic phantoms: scores say how well the model separates "
            "drawn lesions, not how it would do on patient scans (evaluate it on real slices "
            "with `--data`)."
        )
    if info.device == "CPU" or (info.epochs_trained or 0) < 10:
        lines.append(
            f"- A short run ({_number(info.epochs_trained)} epochs on {info.device or 'an unknown device'}, "
            f"weights {info.weights or 'unknown'}): a sketch of what the architecture can do, not its best."
        )
    duplicates = (test or {}).get("test_with_duplicate_in_train", info.test_with_duplicate_in_train)
    if duplicates:
        lines.append(
            f"- {duplicates} test images have an exact or near duplicate in training: the test scores are "
            "inflated by leakage; a grouped split gives an honest estimate."
        )
    elif info.split_strategy == "grouped":
        lines.append("- Grouped split: no test image has a near duplicate in training (as far as the perceptual hash sees).")
    if test is not None:
        low, high = test["intervals"]["accuracy"]
        lines.append(
            f"- {test['images']} test images: the accuracy is known only to within [{_score(low)}, {_score(high)}]."
        )
    for source, scores, _ in external:
        if scores is not None and test is not None and scores["accuracy"] < test["intervals"]["accuracy"][0]:
            lines.append(
                f"- On the external folder `{source}` ({scores['images']} images) the accuracy falls to "
                f"{_score(scores['accuracy'])} from {_score(test['accuracy'])} on the test split: the model "
                "does not carry over to that data."
            )
    lines.append("- One seed, one split: differences between models smaller than the intervals may be chance "
                 "(compare runs with McNemar's test on the same images).")
    lines.append("- For research and teaching only, never for diagnosis (see Intended use).")
    return lines + [""]


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _number(value: Any) -> str:
    return "unknown" if value is None else f"{value:,}"
