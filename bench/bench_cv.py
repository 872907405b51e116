"""Cost of grouped K-fold cross-validation: K folds in one `train --cv K` against K single folds.

Each measurement is one fresh `python -m kidney_lab train` process (TensorFlow start-up, tracing
and all), so the ratio says what one command that trains every fold costs against K commands
that each train one fold (`--cv K --fold I`, as a scheduler would run them). Both run on the same
phantoms, in fresh workspaces, in this one run. Target: the K-fold command takes at most 1.1
times the sum of the K single-fold commands.

With ``--real`` it also times the whole-sample cross-validation of the five models on the real
sample (``../shared/data/ct-kidney-sample``) at ``--real-size`` pixels (one command per model;
long: tens of minutes on two cores).

    python bench/bench_cv.py [--model mobilenetv2] [--folds 3] [--size 64] [--epochs 1] [--real]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

TARGET = 1.1


def _train(data: Path, workspace: Path, model: str, folds: int, size: int, epochs: int,
           fold: int | None = None) -> float:
    command = [sys.executable, "-m", "kidney_lab", "train", "--data", str(data), "--models", model,
               "--epochs", str(epochs), "--img-size", str(size), "--weights", "none", "--cv", str(folds),
               "--workspace", str(workspace)]
    if fold is not None:
        command += ["--fold", str(fold)]
    started = time.perf_counter()
    subprocess.run(command, cwd=common.REPO_ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=30, help="phantoms per class")
    parser.add_argument("--real", action="store_true", help="also the five models' CV on the real sample")
    parser.add_argument("--real-size", type=int, default=96)
    common.add_json_argument(parser)
    arguments = parser.parse_args()
    print(common.format_header("Cross-validation cost (bench_cv.py)", common.machine_info()))

    from kidney_lab.data import phantom

    with tempfile.TemporaryDirectory(prefix="bench-cv-") as scratch:
        base = Path(scratch)
        data = phantom.write_phantom_dataset(base / "phantoms", per_class=arguments.per_class,
                                             size=arguments.size, seed=0)
        singles = [_train(data, base / f"single-{fold}", arguments.model, arguments.folds, arguments.size,
                          arguments.epochs, fold=fold) for fold in range(arguments.folds)]
        together = _train(data, base / "together", arguments.model, arguments.folds, arguments.size, arguments.epochs)
    ratio = together / sum(singles)
    print(common.format_table(
        ["measure", "seconds"],
        [[f"{arguments.folds} single-fold commands (sum)", f"{sum(singles):.1f}"],
         [f"one --cv {arguments.folds} command", f"{together:.1f}"]],
    ))
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"CV of {arguments.model} over {arguments.folds} folds / {arguments.folds} x one fold: "
          f"{ratio:.2f} (target <= {TARGET}: {verdict})")
    payload: dict[str, object] = {"benchmark": "cv", "model": arguments.model, "folds": arguments.folds,
                                  "single_seconds": singles, "together_seconds": together, "ratio": ratio}
    if arguments.real:
        if not common.REAL_SAMPLE.is_dir():
            print(f"--real skipped: {common.REAL_SAMPLE} is absent.")
        else:
            real: dict[str, float] = {}
            with tempfile.TemporaryDirectory(prefix="bench-cv-real-") as scratch:
                for model in ("efficientnetb0", "mobilenetv2", "resnet50", "inceptionv3", "vit"):
                    real[model] = _train(common.REAL_SAMPLE, Path(scratch), model, 5, arguments.real_size, 2)
                    print(f"  real sample, 5-fold CV of {model} at {arguments.real_size} px: {real[model]:.0f} s")
            print(f"Whole-sample 5-fold CV of the five models at {arguments.real_size} px: {sum(real.values()):.0f} s")
            payload["real_seconds"] = real
    common.write_json(arguments.json, payload)


if __name__ == "__main__":
    main()
