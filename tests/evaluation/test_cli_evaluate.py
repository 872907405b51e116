"""The evaluate, leaderboard and model-card commands: results, --json files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from kidney_lab import runs
from kidney_lab.cli import main
from tests.evaluation.helpers import snapshot


def run(arguments: list[str], capsys) -> tuple[int, str, str]:
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_the_test_split_and_an_external_folder(run_copy: Path, external_folder: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(["evaluate", str(run_copy), "--json", str(tmp_path / "test.json")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "test.json").read_text())
    for field in ("run_id", "model", "images", "accuracy", "macro_f1", "predictions", "metrics"):
        assert field in result
    assert result["run_id"] == run_copy.name and result["model"] == "vit"
    assert Path(result["predictions"]).is_absolute() and Path(result["predictions"]) == run_copy / runs.PREDICTIONS_FILE
    assert Path(result["metrics"]).is_file()
    low, high = result["accuracy_ci"]
    assert f"accuracy {result['accuracy']:.3f} [{low:.3f}, {high:.3f}]" in out
    assert "95% bootstrap intervals" in out and "duplicate in training: 0" in out
    intervals = result["intervals"]
    assert intervals["resampling"] == "cluster" and intervals["accuracy"] == [low, high]
    assert f"over {intervals['clusters']} near-duplicate clusters" in out
    assert set(result["clusters_per_class"]) == {"Cyst", "Normal", "Stone", "Tumor"}
    assert result["few_clusters"] == [name for name, count in result["clusters_per_class"].items() if count < 3]
    for name in result["few_clusters"]:
        assert f"warning: {name} rests on" in out

    code, out, err = run(["evaluate", str(run_copy), "--data", str(external_folder),
                          "--json", str(tmp_path / "external.json")], capsys)
    assert code == 0, err
    external = json.loads((tmp_path / "external.json").read_text())
    assert external["split_kind"] == "external" and external["images"] == 12
    assert Path(external["predictions"]).parent == run_copy / runs.EXTERNAL_FOLDER / external["fingerprint"]
    assert "(external)" in out


def test_evaluate_failures_are_one_line_without_traceback(run_copy: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(["evaluate", str(run_copy), "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and err.startswith("error: ") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    (run_copy / runs.MODEL_FILE).unlink()
    before = snapshot(run_copy)
    code, out, err = run(["evaluate", str(run_copy), "--json", str(tmp_path / "no.json")], capsys)
    assert code == 1 and "no model.keras" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no.json").exists() and snapshot(run_copy) == before

    code, _, err = run(["evaluate", str(tmp_path)], capsys)
    assert code == 1 and "No run folder" in err


def test_leaderboard_and_model_card_commands(run_copy: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(["leaderboard", "--workspace", str(run_copy.parent), "--json", str(tmp_path / "board.json"),
                          "--csv", str(tmp_path / "board.csv")], capsys)
    assert code == 0, err
    board = json.loads((tmp_path / "board.json").read_text())
    assert [row["run_id"] for row in board["rows"]] == [run_copy.name]
    assert board["rows"][0]["rank"] == 1 and "one comparable group" in board["note"]
    assert "Vision Transformer" in out and (tmp_path / "board.csv").is_file()

    code, out, err = run(["model-card", str(run_copy), "--json", str(tmp_path / "card.json")], capsys)
    assert code == 0, err
    card = Path(json.loads((tmp_path / "card.json").read_text())["model_card"])
    assert card == run_copy / "model_card.md" and "Not for diagnosis" in card.read_text()
