"""Where evaluations live: reading back the faithfulness scores stored next to an evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidney_lab import fileio
from kidney_lab.evaluation import store


def test_faithfulness_is_read_from_the_folder_of_its_evaluation(tmp_path: Path) -> None:
    assert store.load_faithfulness(tmp_path) is None
    scores = {"fingerprint": "abcdef12", "methods": {"gradcam": {"pointing_game": 0.5}}}
    fileio.atomic_write_json(tmp_path / store.FAITHFULNESS_FILE, scores)
    assert store.load_faithfulness(tmp_path) == scores
    # An external folder's scores sit under its fingerprint and never replace the test split's.
    assert store.load_faithfulness(tmp_path, "abcdef12") is None
    external = {**scores, "methods": {"gradcam": {"pointing_game": 0.1}}}
    fileio.atomic_write_json(store.evaluation_folder(tmp_path, "abcdef12") / store.FAITHFULNESS_FILE, external)
    assert store.load_faithfulness(tmp_path, "abcdef12") == external
    assert store.load_faithfulness(tmp_path) == scores


@pytest.mark.parametrize("content", ["{ not json", "[1, 2]", '{"methods": 3}'])
def test_damaged_faithfulness_says_how_to_rebuild_it(tmp_path: Path, content: str) -> None:
    (tmp_path / store.FAITHFULNESS_FILE).write_text(content)
    with pytest.raises(store.EvaluationError, match="explain-eval"):
        store.load_faithfulness(tmp_path)


def test_a_source_cannot_lead_outside_the_run(tmp_path: Path) -> None:
    with pytest.raises(store.EvaluationError, match="not an evaluation source"):
        store.load_faithfulness(tmp_path, "../../etc")
