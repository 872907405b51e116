"""Print the README's cross-validation table from a workspace's stored pooled results.

For every complete pooled cross-validation under ``<workspace>/cv/``: the pooled out-of-fold
macro F1 with its cluster interval (from its ``metrics.json``), the image-level interval the same
table would get if its slices were independent (``metrics.bootstrap_intervals`` of the pooled
``predictions.csv``), the folds' own macro F1 (mean ± sd, from ``cv.json``), accuracy, per-class
recall and the sum of the folds' training time (from each fold's ``run.json``).

    python bench/cv_table.py WORKSPACE
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (puts the checkout on sys.path)
import pandas as pd

from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.data import classes
from kidney_lab.evaluation import cv as cv_module
from kidney_lab.evaluation import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace")
    arguments = parser.parse_args()
    print("| model | pooled macro F1 [cluster 95% CI] | image-level 95% CI (old) | folds macro F1 | accuracy | "
          "recall " + " / ".join(classes.CLASS_NAMES) + " | training |")
    for folder in runs.list_cv_results(arguments.workspace):
        summary = cv_module.read_result(folder)
        if not summary.get("complete"):
            continue
        stored = fileio.read_json(folder / runs.METRICS_FILE)
        table = pd.read_csv(folder / runs.PREDICTIONS_FILE)
        image = metrics.bootstrap_intervals(table.drop(columns=[metrics.CLUSTER_COLUMN, cv_module.FOLD_COLUMN]))
        cluster = stored["intervals"]["macro_f1"]
        recall = " / ".join(f"{stored['per_class'][name]['recall']:.2f}" for name in classes.CLASS_NAMES)
        seconds = sum(runs.read_run(entry["path"]).info.train_seconds or 0 for entry in summary["runs"])
        print(f"| {summary['display_name']} | {stored['macro_f1']:.3f} [{cluster[0]:.2f}, {cluster[1]:.2f}] | "
              f"[{image['macro_f1'][0]:.2f}, {image['macro_f1'][1]:.2f}] | "
              f"{summary['macro_f1_mean']:.3f} ± {summary['macro_f1_sd']:.3f} | {stored['accuracy']:.3f} | "
              f"{recall} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
