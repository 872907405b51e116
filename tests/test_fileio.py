"""Atomic writes and workspace paths."""

from __future__ import annotations

import datetime
import json

import pytest

from kidney_lab import fileio
from kidney_lab.fileio import atomic_path, atomic_write_json, read_json
from kidney_lab.workspace import WorkspaceError, default_workspace, inside, prepare_workspace


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "status.json"
    atomic_write_json(target, {"phase": "train", "epoch": 1})
    atomic_write_json(target, {"phase": "done"})
    assert read_json(target) == {"phase": "done"}
    assert [path.name for path in target.parent.iterdir()] == ["status.json"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("{half")
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"ok": True}
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]


def test_default_workspace_honours_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KIDNEY_LAB_WORKSPACE", str(tmp_path / "ws"))
    assert default_workspace() == tmp_path / "ws"
    monkeypatch.delenv("KIDNEY_LAB_WORKSPACE")
    monkeypatch.chdir(tmp_path)
    assert default_workspace() == tmp_path / "trained_models"


def test_prepare_workspace_creates_it(tmp_path):
    assert prepare_workspace(tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../b"])
def test_names_cannot_leave_the_workspace(tmp_path, name):
    with pytest.raises(WorkspaceError):
        inside(tmp_path, name)


def test_names_inside_are_allowed(tmp_path):
    assert inside(tmp_path, "runs", "abc") == (tmp_path / "runs" / "abc").resolve()


def test_now_iso_is_utc_at_the_asked_precision():
    before = datetime.datetime.now(datetime.timezone.utc)
    stamp = datetime.datetime.fromisoformat(fileio.now_iso())
    assert stamp.utcoffset() == datetime.timedelta(0) and abs((stamp - before).total_seconds()) < 5
    assert len(fileio.now_iso().split("T")[1].split("+")[0]) == len("10:15:12.345")
    assert len(fileio.now_iso("seconds").split("T")[1].split("+")[0]) == len("10:15:12")

