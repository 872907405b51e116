"""The command line: ``python -m kidney_lab <command> ...``.

Each command prints a readable result; ``--json FILE`` also writes a machine-readable one (paths
absolute). Exit status 0 on success; on failure one line on stderr and a non-zero status, never
a traceback (set ``KIDNEY_LAB_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from kidney_lab import __version__
from kidney_lab.errors import KidneyLabError
from kidney_lab.fileio import atomic_write_json
from kidney_lab.training import config

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if not hasattr(arguments, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        result = arguments.handler(arguments)
        if getattr(arguments, "json", None):
            atomic_write_json(arguments.json, result)
        return getattr(arguments, "exit_status", 0)
    except KidneyLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("KIDNEY_LAB_DEBUG"):
            raise
        print(
            f"error: unexpected {type(error).__name__}: {error} "
            "(this is a bug; rerun with KIDNEY_LAB_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="python -m kidney_lab",
        description="Compare deep-learning classifiers of kidney CT slices honestly.",
    )
    parser.add_argument("--version", action="version", version=f"kidney_lab {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    data = commands.add_parser("data", help="make, audit, split or fetch a dataset")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")

    phantom = data_commands.add_parser(
        "phantom", help="write synthetic CT-like phantoms in the Kaggle folder layout"
    )
    phantom.add_argument("--out", required=True, type=Path, help="output folder")
    phantom.add_argument("--per-class", type=_positive_int, default=100, help="images per class (100)")
    phantom.add_argument("--size", type=_positive_int, default=256, help="image side in pixels (256)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (0)")
    phantom.add_argument("--field-of-view", choices=("abdomen", "kidneys"), default="abdomen",
                         help="abdomen: the whole slice (default); kidneys: zoomed onto both kidneys")
    _add_json(phantom)
    phantom.set_defaults(handler=_run_phantom)

    audit = data_commands.add_parser("audit", help="find duplicates, label conflicts and near-duplicates")
    audit.add_argument("dir", type=Path, help="dataset folder (or any folder above it)")
    audit.add_argument("--threshold", type=int, default=None, help="near-duplicate Hamming threshold in bits of 256 (20)")
    _add_workspace(audit)
    _add_json(audit)
    audit.set_defaults(handler=_run_audit)

    split = data_commands.add_parser("split", help="split into train/val/test and store the manifest")
    split.add_argument("dir", type=Path, help="dataset folder (or any folder above it)")
    split.add_argument("--strategy", choices=("random", "grouped"), default="grouped",
                       help="grouped keeps near-duplicate clusters on one side (default); random is image-level")
    split.add_argument("--seed", type=int, default=0, help="random seed (0)")
    split.add_argument("--val-fraction", type=float, default=0.15, help="validation fraction (0.15)")
    split.add_argument("--test-fraction", type=float, default=0.15, help="test fraction (0.15)")
    _add_workspace(split)
    _add_json(split)
    split.set_defaults(handler=_run_split)

    fetch = data_commands.add_parser("fetch", help="download the Kaggle dataset (needs kagglehub and internet)")
    fetch.add_argument("--out", type=Path, default=Path("data"), help="output folder (./data)")
    _add_json(fetch)
    fetch.set_defaults(handler=_run_fetch)

    train = commands.add_parser("train", help="train models on one split and evaluate them on its test images")
    config.add_arguments(train, config.TrainConfig)
    _add_workspace(train)
    _add_json(train)
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser(
        "evaluate", help="predict a run's test split, or an external folder, and store predictions and metrics"
    )
    evaluate.add_argument("run", metavar="RUN_DIR", help="run folder, or run id in the workspace")
    evaluate.add_argument("--data", type=Path, default=None,
                          help="external dataset folder (Kaggle layout); default: the run's own test split")
    _add_workspace(evaluate)
    _add_json(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)

    fit_ood = commands.add_parser(
        "fit-ood", help="fit a run's out-of-distribution detector and calibration, then re-evaluate its test split"
    )
    fit_ood.add_argument("run", metavar="RUN_DIR", help="run folder, or run id in the workspace")
    _add_workspace(fit_ood)
    _add_json(fit_ood)
    fit_ood.set_defaults(handler=_run_fit_ood)

    board = commands.add_parser("leaderboard", help="rank evaluated runs, only against runs tested on the same images")
    board.add_argument("--study", default=None, help="only runs of this study id")
    board.add_argument("--split", choices=("random", "grouped", "external", "cv"), default=None,
                       help="only rows evaluated on this kind of split")
    board.add_argument("--fingerprint", default=None, help="only rows evaluated on the dataset with this fingerprint")
    board.add_argument("--no-external", action="store_true", help="leave out evaluations of external folders")
    board.add_argument("--folds", action="store_true",
                       help="also each cross-validation fold's own row (by default only the pooled cv row)")
    board.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV to FILE")
    _add_workspace(board)
    _add_json(board)
    board.set_defaults(handler=_run_leaderboard)

    pooled = commands.add_parser(
        "ensemble", help="combine a study's runs into a calibrated ensemble and score it on their test images"
    )
    pooled.add_argument("--study", required=True, help="the study id (see `train --json` or the Leaderboard)")
    pooled.add_argument("--weights", choices=("equal", "fitted"), default="equal",
                        help="equal (default), or fitted on the runs' validation predictions (never on test images)")
    _add_workspace(pooled)
    _add_json(pooled)
    pooled.set_defaults(handler=_run_ensemble)

    card = commands.add_parser("model-card", help="write a run's model card (Markdown) from its stored files")
    card.add_argument("run", metavar="RUN_DIR", help="run folder, or run id in the workspace")
    _add_workspace(card)
    _add_json(card)
    card.set_defaults(handler=_run_model_card)

    explain = commands.add_parser(
        "explain", help="predict one image with one or more runs and save each run's heat map and overlay as PNG"
    )
    explain.add_argument("image", metavar="IMAGE", type=Path, help="the scan (PNG, JPEG, BMP, TIFF, GIF or DICOM)")
    explain.add_argument("--runs", required=True, help="comma-separated run folders or run ids")
    explain.add_argument("--method", default="gradcam", action=_MethodOption, help="{methods} (default gradcam)")
    explain.add_argument("--target", default=None,
                         help="class every heat map explains (Cyst, Normal, Stone, Tumor); default: each model's prediction")
    explain.add_argument("--opacity", type=float, default=0.4, help="weight of the heat map in the overlay, 0 to 1 (0.4)")
    explain.add_argument("--colormap", default="turbo", help="turbo (default), jet, viridis or inferno")
    explain.add_argument("--out", type=Path, default=Path("explanations"), help="folder for the PNG files (./explanations)")
    _add_workspace(explain)
    _add_json(explain)
    explain.set_defaults(handler=_run_explain)

    explain_eval = commands.add_parser(
        "explain-eval", help="measure how faithful a run's heat maps are and store it in the run (faithfulness.json)"
    )
    explain_eval.add_argument("run", metavar="RUN_DIR", help="run folder, or run id in the workspace")
    explain_eval.add_argument("--data", type=Path, default=None,
                              help="dataset folder (Kaggle layout); default: the run's own test split")
    explain_eval.add_argument("--methods", default="gradcam", action=_MethodOption,
                              help="comma-separated methods ({methods}), or all (gradcam)")
    explain_eval.add_argument("--max-images", type=_positive_int, default=200,
                              help="at most this many images, spread over the classes (200)")
    explain_eval.add_argument("--steps", type=_positive_int, default=20, help="points of each deletion/insertion curve (20)")
    explain_eval.add_argument("--no-curves", action="store_true", help="skip the deletion and insertion curves (much faster)")
    explain_eval.add_argument("--no-sanity-check", action="store_true",
                              help="skip the model-randomisation check (Spearman correlation with random weights)")
    explain_eval.add_argument("--seed", type=int, default=0, help="seed of the image choice and random orders (0)")
    _add_workspace(explain_eval)
    _add_json(explain_eval)
    explain_eval.set_defaults(handler=_run_explain_eval)

    models = commands.add_parser("models", help="list the registry's models and their facts")
    _add_json(models)
    models.set_defaults(handler=_run_models)

    demo = commands.add_parser(
        "demo", help="build the demo study: phantoms in the workspace and every registry model trained on them"
    )
    config.add_arguments(demo, config.DemoSettings)
    demo.add_argument("--study-id", default=None, help=argparse.SUPPRESS)
    # The second process of a demo, started by the first, which holds the training lock.
    demo.add_argument("--inside-demo", action="store_true", help=argparse.SUPPRESS)
    _add_workspace(demo)
    _add_json(demo)
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_phantom(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.phantom import write_phantom_dataset

    started = time.perf_counter()
    root = write_phantom_dataset(arguments.out, arguments.per_class, size=arguments.size, seed=arguments.seed,
                                 field_of_view=arguments.field_of_view)
    images = 4 * arguments.per_class
    print(f"Wrote {images} phantoms ({arguments.size}x{arguments.size}) to {root} "
          f"in {time.perf_counter() - started:.1f} s; masks in {root.parent / 'masks'}")
    return {"root": str(root.resolve()), "masks": str((root.parent / "masks").resolve()),
            "images": images, "per_class": arguments.per_class, "size": arguments.size, "seed": arguments.seed}


def _run_audit(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.audit import NEAR_DUPLICATE_THRESHOLD, audit_dataset
    from kidney_lab.workspace import WorkspaceError, prepare_workspace

    try:
        workspace = prepare_workspace(arguments.workspace)
    except WorkspaceError:
        workspace = None  # An audit only reads; without a workspace it just has no cache.
    report = audit_dataset(_scan(arguments.dir, workspace), threshold=_threshold(arguments, NEAR_DUPLICATE_THRESHOLD))
    print(report.format_report())
    return report.to_dict()


def _run_split(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.audit import audit_dataset
    from kidney_lab.data.split import get_or_make_split
    from kidney_lab.workspace import prepare_workspace

    workspace = prepare_workspace(arguments.workspace)
    report = audit_dataset(_scan(arguments.dir, workspace))
    split, manifest = get_or_make_split(
        report, workspace, arguments.strategy, seed=arguments.seed,
        val_fraction=arguments.val_fraction, test_fraction=arguments.test_fraction,
    )
    print(split.format_report())
    print(f"Manifest {manifest}")
    return split.to_dict(manifest.resolve())


def _start_tensorflow_quietly() -> None:
    """Import TensorFlow and look for devices with stderr muted at the file-descriptor level.

    TensorFlow's C++ start-up messages (oneDNN, CUDA stubs, "failed call to cuInit" on a machine
    without a GPU) are written before its log settings take effect, so they would bury the one
    line a failing command prints. Python exceptions still propagate.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow

            tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _run_train(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.training.engine import train

    settings = config.from_arguments(config.TrainConfig, arguments, workspace=arguments.workspace)
    result = train(settings, listener=_TrainingProgress())
    print(_format_study(result))
    if not result.ok:
        arguments.exit_status = EXIT_FAILURE
    return result.to_dict()


def _format_study(result) -> str:
    from kidney_lab.runs import read_run

    lines = [f"Study {result.study_id} (split {result.split_id})"]
    for outcome in result.runs:
        score = ""
        if outcome.metrics:
            score = f"test accuracy {outcome.metrics['accuracy']:.3f} on {outcome.metrics['images']} images"
            peak = read_run(outcome.path).info.peak_rss_mb
            if peak is not None:
                score += f", peak memory {peak:.0f} MB while training"
        fold = read_run(outcome.path).info.fold
        label = outcome.model if fold is None else f"{outcome.model} f{fold}"
        lines.append(f"  {label:<15} {outcome.status:<10} {score or outcome.error or ''}  {outcome.path}")
    if result.cv_folds is not None:
        lines.append(f"{result.cv_folds}-fold grouped cross-validation, out-of-fold predictions pooled:")
        for entry in result.pooled:
            if not entry.get("complete"):
                waiting = [str(run["fold"]) for run in entry["runs"] if run["status"] != "completed"]
                lines.append(f"  {entry['model']:<15} waiting for fold(s) {', '.join(waiting)}")
                continue
            low, high = entry["macro_f1_interval"]
            spread = "" if entry.get("macro_f1_sd") is None else f" ± {entry['macro_f1_sd']:.3f}"
            lines.append(
                f"  {entry['model']:<15} macro F1 {entry['macro_f1']:.3f} [{low:.3f}, {high:.3f}] "
                f"(95% interval resampling {entry['clusters']} clusters) on {entry['images']} images; "
                f"folds {entry['macro_f1_mean']:.3f}{spread}  {entry['metrics']}"
            )
        warnings = next((entry.get("warnings") for entry in result.pooled if entry.get("warnings")), None)
        for warning in warnings or []:
            lines.append(f"  warning: {warning}")
    return "\n".join(lines)


class _TrainingProgress:
    """Draws one progress line per model: redrawn in place on a terminal, per epoch otherwise."""

    def __init__(self) -> None:
        self.terminal = sys.stderr.isatty()
        self.last: dict[str, tuple] = {}

    def __call__(self, run_id: str, status: dict[str, Any]) -> None:
        model = status.get("model") or run_id
        state, phase = status.get("state"), status.get("phase", "")
        epoch, epochs = status.get("epoch"), status.get("epochs")
        step, steps = status.get("step") or 0, status.get("steps") or 0
        if state not in ("running", "queued"):
            line = f"{model}: {state}" + (f" ({status['error']})" if status.get("error") else "")
        else:
            line = f"{model}: {phase}"
            if epoch and epochs:
                done = ((epoch - 1) * steps + step) / max(1, epochs * steps) if steps else 0
                bar = "#" * int(done * 20)
                line += f" [{bar:<20}] epoch {epoch}/{epochs} step {step}/{steps}"
                if status.get("loss") is not None:
                    line += f" loss {status['loss']:.3f} acc {status.get('accuracy') or 0:.3f}"
                if status.get("images_per_second"):
                    line += f" {status['images_per_second']:.0f} img/s"
                if status.get("eta_seconds") is not None:
                    line += f" ETA {status['eta_seconds']:.0f}s"
        key = (state, phase, status.get("epochs_finished"))
        if self.terminal:
            final = state not in ("running", "queued")
            print(f"\r{line[:150]:<150}", end="\n" if final else "", file=sys.stderr, flush=True)
        elif self.last.get(run_id) != key:
            self.last[run_id] = key
            print(line, file=sys.stderr, flush=True)


def _run_evaluate(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.evaluation import stats
    from kidney_lab.evaluation.evaluate import evaluate

    result = evaluate(arguments.run, arguments.data, workspace=arguments.workspace)
    intervals = result["intervals"]
    where = "test split" if result["evaluated_on"] == "test" else f"folder {result['data']}"
    print(f"Run {result['run_id']} ({result['display_name']}) on {result['images']} images of the "
          f"{where} ({result['split_kind']})")
    print(f"  accuracy {result['accuracy']:.3f} [{intervals['accuracy'][0]:.3f}, {intervals['accuracy'][1]:.3f}]"
          f"  macro F1 {result['macro_f1']:.3f} [{intervals['macro_f1'][0]:.3f}, {intervals['macro_f1'][1]:.3f}]"
          f"  ({intervals['level']:.0%} bootstrap intervals, {intervals['resamples']} resamples, "
          f"{stats.resampling_words(intervals)})")
    per_class = result["clusters_per_class"]
    if per_class is not None:
        print("  clusters " + "  ".join(f"{name} {count}" for name, count in per_class.items()))
    for sentence in stats.few_cluster_warnings(per_class):
        print(f"  warning: {sentence}")
    auc = "n/a" if result["macro_roc_auc"] is None else f"{result['macro_roc_auc']:.3f}"
    print(f"  balanced accuracy {result['balanced_accuracy']:.3f}  macro AUC {auc}  "
          f"ECE {result['ece']:.3f}  loss {result['loss']:.3f}")
    print("  recall " + "  ".join(f"{name} {row['recall']:.2f}" for name, row in result["per_class"].items()))
    duplicates = result["test_with_duplicate_in_train"]
    print(f"  images with a duplicate in training: {duplicates if duplicates is not None else 'not counted'}")
    for line in _trust_lines(result):
        print(f"  {line}")
    print(f"Predictions {result['predictions']}\nMetrics {result['metrics']}")
    fields = ("run_id", "model", "images", "accuracy", "macro_f1", "predictions", "metrics", "evaluated_on",
              "split_kind", "data", "fingerprint", "balanced_accuracy", "macro_roc_auc", "ece", "loss",
              "test_with_duplicate_in_train", "intervals", "clusters_per_class", "few_clusters",
              "ood_flagged_share", "ood_threshold", "calibration")
    return {**{field: result[field] for field in fields},
            "accuracy_ci": intervals["accuracy"], "macro_f1_ci": intervals["macro_f1"]}


def _trust_lines(result: dict[str, Any]) -> list[str]:
    """The OOD and calibration lines of an evaluation's printout."""
    from kidney_lab.evaluation import trust

    share, figures = result.get("ood_flagged_share"), trust.test_figures(result)
    lines = [
        "out of distribution: no detector (python -m kidney_lab fit-ood RUN fits one)" if share is None else
        f"out of distribution: {share:.1%} of the images flagged (score > {result['ood_threshold']:.3f})"
    ]
    if figures is None:
        lines.append("calibration: none (python -m kidney_lab fit-ood RUN fits it)")
    else:
        lines.append(
            f"calibration: temperature {figures['temperature']:.3f} (fitted on {figures['fitted_on']}); "
            f"NLL {figures['nll_before']:.3f} -> {figures['nll_after']:.3f}, Brier {figures['brier_before']:.3f} -> "
            f"{figures['brier_after']:.3f}, ECE {figures['ece_before']:.3f} -> {figures['ece_after']:.3f}"
        )
    return lines


def _run_fit_ood(arguments: argparse.Namespace) -> dict[str, Any]:
    """Fit the run's OOD detector (and store its validation predictions), then evaluate its test
    split again so that its predictions, metrics and calibration.json carry both."""
    _start_tensorflow_quietly()
    from kidney_lab.evaluation import evaluate as evaluate_module
    from kidney_lab.evaluation import trust

    fitted, result = evaluate_module.fit_ood(arguments.run, workspace=arguments.workspace)
    print(f"Run {result['run_id']} ({result['display_name']}): OOD detector fitted on {fitted['training_images']} "
          f"training images, threshold {fitted['threshold']:.3f} (the {fitted['percentile']:g}th percentile of "
          f"{fitted['validation_images']} validation scores) in {fitted['seconds']:.1f} s")
    print(f"  test split re-evaluated: {result['images']} images, accuracy {result['accuracy']:.3f}")
    for line in _trust_lines(result):
        print(f"  {line}")
    print(f"Detector {fitted['detector']}\nValidation predictions {fitted['validation_predictions']}\n"
          f"Calibration {fitted['calibration']}\nPredictions {result['predictions']}")
    return {**fitted, "predictions": result["predictions"],
            "metrics": result["metrics"], "ood_flagged_share": result["ood_flagged_share"],
            "ood_threshold": result["ood_threshold"], "test_calibration": trust.test_figures(result)}


def _run_leaderboard(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.evaluation.leaderboard import leaderboard

    table = leaderboard(arguments.workspace, study_id=arguments.study, split=arguments.split,
                        fingerprint=arguments.fingerprint, include_external=not arguments.no_external,
                        include_folds=arguments.folds)
    shown = table[["comparable_group", "rank", "display_name", "split", "images", "accuracy", "accuracy_ci_low",
                   "accuracy_ci_high", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "interval_resampling",
                   "macro_f1_fold_mean", "macro_f1_fold_sd", "p_vs_best", "p_test", "run_id"]].assign(
        clusters_per_class=[_clusters_text(value) for value in table["clusters_per_class"]])
    print(shown.to_string(index=False, float_format=lambda value: f"{value:.3f}") if len(shown) else "No evaluated runs.")
    print(table.attrs["note"])
    for row in table[table["cluster_warning"].notna()].itertuples(index=False):
        print(f"warning: {row.display_name or row.model} ({row.run_id}, {row.split}): {row.cluster_warning}")
    for entry in table.attrs["skipped"]:
        print(f"skipped {entry['run_id']}: {entry['reason']}", file=sys.stderr)
    if arguments.csv:
        from kidney_lab.fileio import atomic_path

        with atomic_path(arguments.csv) as temporary:
            table.to_csv(temporary, index=False)
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return {"rows": rows, "note": table.attrs["note"], "groups": table.attrs["groups"],
            "skipped": table.attrs["skipped"]}


def _clusters_text(per_class: Any) -> str:
    """Clusters per class in a table cell, "Cyst 4/Normal 1/Stone 3/Tumor 2"; "-" when not known."""
    if not isinstance(per_class, dict):
        return "-"
    return "/".join(f"{name} {count}" for name, count in per_class.items())


def _run_ensemble(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.evaluation import stats, study_ensemble
    from kidney_lab.workspace import default_workspace

    result = study_ensemble.build(arguments.workspace or default_workspace(), arguments.study, arguments.weights)
    recipe, intervals = result["ensemble"], result["intervals"]
    print(f"{result['display_name']} of study {result['study_id']} on {result['images']} test images "
          f"({result['split_kind']}), weights {recipe['weights_method']}")
    for run_id, model, weight, temperature in zip(recipe["members"], recipe["models"], recipe["weights"],
                                                  recipe["temperatures"]):
        print(f"  {model:<15} weight {weight:.3f}  temperature {temperature:.3f}  {run_id}")
    for note in recipe["temperature_notes"]:
        print(f"  note: {note}")
    for entry in recipe["excluded"]:
        print(f"  left out {entry['run_id']}: {entry['reason']}")
    print(f"  accuracy {result['accuracy']:.3f} [{intervals['accuracy'][0]:.3f}, {intervals['accuracy'][1]:.3f}]"
          f"  macro F1 {result['macro_f1']:.3f} [{intervals['macro_f1'][0]:.3f}, {intervals['macro_f1'][1]:.3f}]"
          f"  ({intervals['level']:.0%} bootstrap intervals, {stats.resampling_words(intervals)})")
    print(f"Ensemble {result['folder']}; compare it with the best single model: "
          f"python -m kidney_lab leaderboard --study {result['study_id']}")
    fields = ("study_id", "run_id", "model", "images", "accuracy", "macro_f1", "split_kind", "members",
              "intervals", "predictions", "metrics", "recipe", "folder", "ensemble")
    return {field: result[field] for field in fields}


def _run_model_card(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.evaluation.model_card import write_model_card
    from kidney_lab.runs import resolve_run

    folder = resolve_run(arguments.run, arguments.workspace)
    path = write_model_card(folder)
    print(f"Model card {path}")
    return {"run_id": folder.name, "model_card": str(path)}


def _run_explain(arguments: argparse.Namespace) -> dict[str, Any]:
    """Explain IMAGE with every run. Exit 0 when at least one run was explained (the others'
    errors go to stderr as warnings and into the JSON); 1 when none was, or the image is
    unreadable."""
    _start_tensorflow_quietly()
    from kidney_lab.errors import ConfigError
    from kidney_lab.explain import cam, compare, render
    from kidney_lab.fileio import atomic_write_bytes
    from kidney_lab.runs import resolve_run

    references = [part.strip() for part in arguments.runs.split(",") if part.strip()]
    if not references:
        raise ConfigError("--runs names no run; give run folders or run ids separated by commas.")
    method = cam.check_method(arguments.method)
    render.colormap_table(arguments.colormap)
    if not 0.0 <= arguments.opacity <= 1.0:
        raise ConfigError(f"--opacity must be between 0 and 1; got {arguments.opacity}.")
    resolved: list[Any] = []
    for reference in references:
        try:
            resolved.append(resolve_run(reference, arguments.workspace))
        except KidneyLabError:
            resolved.append(reference)  # explain() reports it for this run alone.
    report = compare.explain(resolved, arguments.image, method, arguments.target)
    for warning in report.warnings:
        print(f"WARNING: {warning['message']}")
    out = arguments.out.resolve()
    paths: dict[str, dict[str, str]] = {}
    for result in report.results:
        stem = f"{result.run_id}-{method.replace('++', 'pp')}-{result.target.lower()}"
        files = {"heatmap": out / f"{stem}-heatmap.png", "overlay": out / f"{stem}-overlay.png"}
        atomic_write_bytes(files["heatmap"], render.to_png(result.heatmap))
        drawn = render.overlay(report.scan, result.heatmap, arguments.opacity, arguments.colormap)
        atomic_write_bytes(files["overlay"], render.to_png(drawn))
        paths[result.run_id] = {name: str(path) for name, path in files.items()}
        probability = result.calibrated_probabilities[result.predicted]
        caveats = compare.trust(result, report.scan_is_phantom)
        flagged = compare.out_of_distribution_text(result.ood) + "  " if result.flagged else ""
        print(f"{result.display_name:<19} {flagged}predicted {result.predicted:<6} ({probability:.2f}"
              f"{', calibrated' if result.temperature != 1.0 else ''})  "
              f"{cam.get_method(method).display_name} for {result.target:<6} {result.seconds:.2f} s  {files['overlay']}")
        for caveat in caveats[1 if result.flagged else 0:]:
            print(f"{'':<19} caveat: {caveat}")
    for failure in report.errors:
        print(f"warning: run {failure['run_id']}: {failure['message']}", file=sys.stderr)
    if not report.ok:
        print(f"error: none of the {len(references)} runs could be explained; see the warnings above",
              file=sys.stderr)
        arguments.exit_status = EXIT_FAILURE
    else:
        print(compare.agreement(report.results).text.replace("**", ""))
    ensemble = _explain_ensemble(report, resolved, arguments, out)
    return {"image": str(arguments.image.resolve()), **compare.report_to_dict(report, paths), **ensemble}


def _explain_ensemble(report: Any, resolved: list[Any], arguments: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The calibrated ensemble of the explained runs (two or more): printed, its combined overlay
    written, and ``{"ensemble": ...}`` for the JSON; ``{}`` for fewer than two runs."""
    from kidney_lab.explain import cam, compare, render
    from kidney_lab.fileio import atomic_write_bytes

    folders = {Path(reference).name: reference for reference in resolved if isinstance(reference, Path)}
    verdict = compare.ensemble_result(
        report, compare.run_temperatures(list(folders.values())), arguments.target,
        lambda result, label: cam.load_explainer(folders[result.run_id], report.method).explain(report.scan, label),
    )
    if verdict is None:
        return {}
    entry = verdict.to_dict()
    entry["overlay"] = None
    if verdict.heatmap is not None:
        path = out / f"ensemble-{report.method.replace('++', 'pp')}-{verdict.map_class.lower()}-overlay.png"
        atomic_write_bytes(path, render.to_png(render.overlay(report.scan, verdict.heatmap, arguments.opacity,
                                                              arguments.colormap)))
        entry["overlay"] = str(path)
    print(f"{'Ensemble':<19} predicted {verdict.predicted:<6} ({verdict.probabilities[verdict.predicted]:.2f})  "
          f"calibrated mean of {len(verdict.members)} runs, map of {verdict.map_class}  {entry['overlay'] or ''}")
    for note in verdict.notes:
        print(f"  note: {note}")
    return {"ensemble": entry}


def _run_explain_eval(arguments: argparse.Namespace) -> dict[str, Any]:
    _start_tensorflow_quietly()
    from kidney_lab.explain import cam
    from kidney_lab.explain.faithfulness import evaluate_faithfulness
    from kidney_lab.runs import resolve_run

    folder = resolve_run(arguments.run, arguments.workspace)
    text = arguments.methods.strip().lower()
    methods = cam.method_names() if text == "all" else [part for part in text.split(",") if part.strip()]
    result = evaluate_faithfulness(
        folder, arguments.data, methods, arguments.max_images, curves=not arguments.no_curves,
        sanity_check=not arguments.no_sanity_check, steps=arguments.steps, seed=arguments.seed,
        progress=_progress_printer("Explaining"),
    )
    baselines = result["baselines"]

    def number(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.3f}"

    print(f"Run {result['run_id']} ({result['model']}) on {result['images']} images of "
          f"{'the test split' if result['data'] == 'test' else result['data']}")
    print(f"{'method':<11} {'pointing':>8} {'(random weights)':>16} {'energy':>7} {'deletion':>8} {'random':>7} "
          f"{'insertion':>9} {'random':>7} {'rho(random weights)':>19} {'seconds':>8}")
    print(f"{'(chance)':<11} {number(baselines['pointing_game']):>8} {'':>16} {number(baselines['energy_in_mask']):>7}")
    for method, row in result["methods"].items():
        print(f"{method:<11} {number(row['pointing_game']):>8} {number(row['random_weights_pointing_game']):>16} "
              f"{number(row['energy_in_mask']):>7} {number(row['deletion_auc']):>8} {number(row['random_deletion_auc']):>7} "
              f"{number(row['insertion_auc']):>9} {number(row['random_insertion_auc']):>7} "
              f"{number(row['randomization_spearman']):>19} {row['seconds']:8.1f}")
    print(f"Faithfulness {result['path']}")
    return result


def _run_models(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.models.registry import REGISTRY, describe

    print(f"{'name':<15} {'model':<19} {'size':>4} {'min':>4}  {'Grad-CAM layer':<18} {'demo recipe':<26} preprocessing")
    for spec in REGISTRY.values():
        recipe = f"{spec.demo_epochs} epochs, lr {spec.demo_learning_rate:g}, lane {spec.demo_lane}"
        print(f"{spec.name:<15} {spec.display_name:<19} {spec.default_size:>4} {spec.min_size:>4}  "
              f"{spec.cam_layer:<18} {recipe:<26} {spec.preprocessing}")
    return {"models": [describe(spec) for spec in REGISTRY.values()]}


def _run_fetch(arguments: argparse.Namespace) -> dict[str, Any]:
    from kidney_lab.data.fetch import fetch_dataset

    root = fetch_dataset(arguments.out)
    print(f"Dataset ready in {root}")
    return {"root": str(root)}


def _run_demo(arguments: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    _start_tensorflow_quietly()

    from kidney_lab.demo import lanes, run_demo, summary

    inside = arguments.inside_demo
    settings = config.from_arguments(config.DemoSettings, arguments)
    if inside:
        settings = dataclasses.replace(settings, parallel=False)
    started = time.perf_counter()
    if not inside:
        processes = len(lanes(settings.models)) if settings.parallel else 1
        how = f"{processes} processes at once" if processes > 1 else "one after the other"
        print(f"Demo: {4 * settings.per_class} phantoms ({settings.image_size} px, {settings.field_of_view} view), "
              f"{len(settings.models)} models trained from scratch on this machine, {how}.", file=sys.stderr)
    result = run_demo(settings, arguments.workspace, listener=_TrainingProgress(), study_id=arguments.study_id,
                      take_lock=not inside)
    seconds = time.perf_counter() - started
    if not result.ok:
        arguments.exit_status = EXIT_FAILURE
    if inside:
        return dict(result.to_dict(), seconds=round(seconds, 1))
    print(_format_study(result))
    print(f"Demo finished in {seconds:.0f} s. Start the app with: streamlit run streamlit_app.py")
    return dict(result.to_dict(), seconds=round(seconds, 1), models=summary(result))


def _scan(folder: Path, workspace: Path | None):
    """Scan a dataset, with the workspace's scan cache when there is a workspace."""
    from kidney_lab.data.discover import scan_dataset
    from kidney_lab.workspace import CACHE_FOLDER

    cache = workspace / CACHE_FOLDER if workspace is not None else None
    return scan_dataset(folder, progress=_progress_printer("Reading images"), cache=cache)


def _threshold(arguments: argparse.Namespace, default: int) -> int:
    threshold = default if arguments.threshold is None else arguments.threshold
    if not 0 <= threshold < 256:
        raise KidneyLabError(f"--threshold must be between 0 and 255 bits, got {threshold}.")
    return threshold


def _progress_printer(label: str) -> Callable[[int, int], None] | None:
    """A progress line on stderr, redrawn in place, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.2:
            last[0] = now
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


class _MethodOption(argparse.Action):
    """``--method``/``--methods``: an option stored as given whose help names the CAM methods.

    ``{methods}`` in the help becomes the method registry's names
    (:func:`kidney_lab.explain.cam.method_names`) when the help is shown, not when the parser
    is built: the registry imports TensorFlow, which most commands never need. The handlers
    check the value against the same registry, so an unknown method fails with the choices.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)

    @property
    def help(self) -> str:
        """The help text, with the registered methods' names."""
        _start_tensorflow_quietly()
        from kidney_lab.explain import cam

        return self._help_template.format(methods=", ".join(cam.method_names()))

    @help.setter
    def help(self, template: str) -> None:
        self._help_template = template


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON to FILE")


def _add_workspace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace folder (default: $KIDNEY_LAB_WORKSPACE or ./trained_models)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
