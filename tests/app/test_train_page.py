"""The Train page with AppTest: a finished job's degenerate model is flagged."""

from __future__ import annotations

import sys

from kidney_lab import runs
from kidney_lab.evaluation import metrics
from kidney_lab.training import jobs
from tests.app.helpers import wait_for
from tests.evaluation.helpers import STUDY, clustered_table, fake_run, write_evaluation

PAGE = "pages/train.py"


def test_a_finished_jobs_degenerate_model_is_flagged(open_app, tmp_path):
    workspace = tmp_path / "workspace"
    table = clustered_table({"Cyst": 3, "Normal": 3, "Stone": 3, "Tumor": 3}, seed=2)
    table[metrics.probability_columns()] = [0.7, 0.1, 0.1, 0.1]
    table["predicted_label"] = "Cyst"
    good = clustered_table({"Cyst": 3, "Normal": 3, "Stone": 3, "Tumor": 3}, skill=5.0)
    for model, predictions in (("vit", table), ("resnet50", good)):
        # The scores a real evaluation stores, beside the predictions.
        write_evaluation(fake_run(workspace, model, None), runs.TEST_SOURCE, predictions,
                         **metrics.compute_metrics(predictions, intervals=False))
    job = jobs.start_job([], workspace, command=[sys.executable, "-c", "pass"], study_id=STUDY,
                         details={"models": ["vit", "resnet50"]})
    wait_for(lambda: not jobs.read_job(job.job_id, workspace).is_active, 30, "the job's end")
    app = open_app(workspace, page=PAGE)
    assert not app.exception, [element.value for element in app.exception]
    warnings = [element.value for element in app.warning]
    assert any("**vit**: Degenerate model: it predicts Cyst for 100%" in text for text in warnings), warnings
    assert not any("resnet50" in text for text in warnings)
