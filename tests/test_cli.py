"""The command line: results, --json files, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kidney_lab.cli import main
from kidney_lab.data.classes import CLASS_NAMES, KAGGLE_FOLDER_NAME

PROJECT = Path(__file__).resolve().parents[1]


def run(arguments: list[str], capsys) -> tuple[int, str, str]:
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_module_entry_point_and_help():
    result = subprocess.run([sys.executable, "-m", "kidney_lab", "--help"], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("data", "demo"):
        assert command in result.stdout


def test_phantom_audit_split_round_trip(tmp_path, capsys):
    code, out, _ = run(["data", "phantom", "--out", str(tmp_path / "ph"), "--per-class", "6",
                        "--size", "64", "--seed", "2", "--json", str(tmp_path / "phantom.json")], capsys)
    assert code == 0 and "Wrote 24 phantoms" in out
    root = Path(json.loads((tmp_path / "phantom.json").read_text())["root"])
    assert root.is_absolute() and root.name == KAGGLE_FOLDER_NAME

    code, out, _ = run(["data", "audit", str(tmp_path / "ph"), "--json", str(tmp_path / "audit.json")], capsys)
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert code == 0 and "Exact duplicates" in out
    assert audit["images"] == 24 and audit["per_class"] == {name: 6 for name in CLASS_NAMES}
    for field in ("skipped", "exact_duplicate_groups", "label_conflicts", "near_duplicate_clusters",
                  "near_duplicate_threshold"):
        assert field in audit

    workspace = tmp_path / "ws"
    code, out, _ = run(["data", "split", str(root), "--strategy", "grouped", "--seed", "1",
                        "--workspace", str(workspace), "--json", str(tmp_path / "split.json")], capsys)
    split = json.loads((tmp_path / "split.json").read_text())
    assert code == 0 and "Test images with a duplicate in train: 0" in out
    assert split["strategy"] == "grouped"
    assert sum(split["counts"].values()) == 24 and set(split["counts"]) == {"train", "val", "test"}
    assert split["test_with_duplicate_in_train"] == 0
    assert Path(split["manifest"]).is_absolute() and Path(split["manifest"]).is_file()
    assert split["split_id"] in split["manifest"]
    assert set(split["clusters"]) == {"train", "val", "test"} and isinstance(split["warnings"], list)
    assert sum(split["clusters"]["test"].values()) >= 2 * len(CLASS_NAMES) and "Clusters" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["data", "audit", "/no/such/folder"], "does not exist"),
        (["data", "split", "/no/such/folder", "--strategy", "grouped", "--seed", "0"], "does not exist"),
        (["data", "audit", "{empty}"], "No class folders"),
        (["data", "phantom", "--out", "{empty}", "--size", "8"], "size"),
    ],
)
def test_failures_print_one_line_and_no_traceback(tmp_path, capsys, arguments, message):
    arguments = [argument.replace("{empty}", str(tmp_path)) for argument in arguments]
    code, _, err = run(arguments, capsys)
    assert code != 0
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_failure_writes_no_json(tmp_path, capsys):
    code, _, _ = run(["data", "audit", str(tmp_path), "--json", str(tmp_path / "out.json")], capsys)
    assert code != 0 and not (tmp_path / "out.json").exists()


def test_unwritable_workspace(tmp_path, capsys, phantom_root):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["data", "split", str(phantom_root), "--workspace", str(blocker / "ws")], capsys)
    assert code != 0 and "not writable" in err


def test_fetch_without_kagglehub_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    code, _, err = run(["data", "fetch", "--out", str(tmp_path)], capsys)
    assert code != 0 and "pip install kagglehub" in err and str(tmp_path) in err
    assert len(err.strip().splitlines()) == 1


def test_fetch_offline_says_where_to_put_a_manual_download(tmp_path, capsys, monkeypatch):
    def offline(handle: str) -> str:
        raise ConnectionError("Failed to resolve host\nmore detail")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=offline))
    code, _, err = run(["data", "fetch", "--out", str(tmp_path / "data")], capsys)
    assert code != 0
    assert "Could not download" in err and "Failed to resolve host" in err
    assert "kaggle.com/datasets" in err and str(tmp_path / "data") in err
    assert len(err.strip().splitlines()) == 1


def test_fetch_copies_a_download_into_out(tmp_path, capsys, monkeypatch, make_dataset_folder):
    downloaded = make_dataset_folder(per_class=1, root=tmp_path / "cache" / "versions" / "1")
    monkeypatch.setitem(sys.modules, "kagglehub",
                        types.SimpleNamespace(dataset_download=lambda handle: str(downloaded.parent)))
    code, out, _ = run(["data", "fetch", "--out", str(tmp_path / "data"), "--json", str(tmp_path / "f.json")], capsys)
    assert code == 0
    root = Path(json.loads((tmp_path / "f.json").read_text())["root"])
    assert root == tmp_path / "data" / KAGGLE_FOLDER_NAME
    assert sorted(path.name for path in root.iterdir()) == sorted(CLASS_NAMES)


def test_demo_builds_a_complete_study(tmp_path, capsys):
    code, out, _ = run(["demo", "--workspace", str(tmp_path), "--per-class", "10", "--size", "32",
                        "--epochs", "1", "--models", "vit", "--json", str(tmp_path / "demo.json")], capsys)
    result = json.loads((tmp_path / "demo.json").read_text())
    assert code == 0, out
    (run_result,) = result["runs"]
    assert run_result["model"] == "vit" and run_result["status"] == "completed"
    run_folder = Path(run_result["path"])
    for name in ("model.keras", "predictions.csv", "metrics.json", "history.csv"):
        assert (run_folder / name).is_file()
    info = json.loads((run_folder / "run.json").read_text())
    assert info["split_strategy"] == "grouped" and info["test_with_duplicate_in_train"] == 0
    assert info["data_root"].startswith(str(tmp_path / "demo_data"))
    assert result["models"]["vit"]["test_accuracy"] == run_result["test_accuracy"]
    assert "streamlit run streamlit_app.py" in out

    # The phantoms are reused, and a finished demo trains a new study when run again.
    parameters = tmp_path / "demo_data" / "phantoms.json"
    written = parameters.stat().st_mtime_ns
    code, _, _ = run(["demo", "--workspace", str(tmp_path), "--per-class", "10", "--size", "32",
                      "--epochs", "1", "--models", "vit"], capsys)
    assert code == 0 and parameters.stat().st_mtime_ns == written
    from kidney_lab.demo import demo_studies

    assert len(demo_studies(tmp_path)) == 2


def test_unexpected_errors_are_one_line(monkeypatch, capsys, tmp_path):
    import kidney_lab.data.discover as discover

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(discover, "scan_dataset", broken)
    code, _, err = run(["data", "audit", str(tmp_path)], capsys)
    assert code == 1 and "unexpected RuntimeError: boom" in err and "KIDNEY_LAB_DEBUG" in err


def test_demo_trains_its_two_lanes_in_two_processes_into_one_study(tmp_path, capsys):
    from kidney_lab.demo import lanes

    first, second = lanes()[0][-1], lanes()[1][0]  # EfficientNetB0 here, MobileNetV2 in the second process.
    code, out, err = run(["demo", "--workspace", str(tmp_path), "--per-class", "10", "--size", "32",
                          "--epochs", "1", "--models", f"{first},{second}", "--json", str(tmp_path / "demo.json")],
                         capsys)
    assert code == 0, out + err
    result = json.loads((tmp_path / "demo.json").read_text())
    assert [run_result["model"] for run_result in result["runs"]] == [
        name for name in ("efficientnetb0", "mobilenetv2", "resnet50", "inceptionv3", "vit") if name in (first, second)]
    assert {run_result["status"] for run_result in result["runs"]} == {"completed"}
    infos = [json.loads((Path(run_result["path"]) / "run.json").read_text()) for run_result in result["runs"]]
    assert len({info["study_id"] for info in infos}) == 1 and len({info["split_id"] for info in infos}) == 1
    statuses = [json.loads((Path(run_result["path"]) / "status.json").read_text()) for run_result in result["runs"]]
    assert len({status["pid"] for status in statuses}) == 2, "each lane trains in its own process"
    assert out.count("Demo finished") == 1
