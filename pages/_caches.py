"""Bounded caches of what the pages read again and again: dataset scans, audits, split
previews, thumbnails, training curves, and the signature of the stored evaluations.

Imports of kidney_lab modules that pull in pandas or TensorFlow are made inside the functions
that need them, so the Home page and the sidebar start fast.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from kidney_lab import runs as runs_module

if TYPE_CHECKING:
    from kidney_lab.data.audit import AuditReport
    from kidney_lab.data.discover import DatasetScan

THUMBNAIL_SIDE = 128


def folder_signature(root: Path, class_folders: dict[str, Path]) -> tuple[tuple[str, int], ...]:
    """Modification times of the dataset root and its class folders.

    A file added, removed or renamed changes its folder's time, so a cached scan keyed on this
    is read again; a file rewritten in place does not (the Dataset page has a rescan button).
    """
    folders = [root, *class_folders.values()]
    stamps = []
    for folder in folders:
        try:
            stamps.append((str(folder), folder.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(folder), -1))
    return tuple(stamps)


@st.cache_data(max_entries=4, ttl=3600, show_spinner=False)
def scan_folder(root: str, signature: tuple[tuple[str, int], ...], cache_folder: str | None) -> DatasetScan:
    """Scan a dataset (see :func:`kidney_lab.data.discover.scan_dataset`), with a progress bar.

    ``signature`` (see :func:`folder_signature`) is part of the cache key only.
    """
    from kidney_lab.data import discover

    bar = st.progress(0.0, text="Reading images ...")
    shown = [-1]

    def report(done: int, total: int) -> None:
        percent = int(100 * done / max(total, 1))
        if percent != shown[0]:
            shown[0] = percent
            bar.progress(percent / 100, text=f"Reading images: {done:,} of {total:,}")

    try:
        return discover.scan_dataset(root, progress=report, cache=cache_folder)
    finally:
        bar.empty()


@st.cache_data(max_entries=4, ttl=3600, show_spinner="Looking for duplicates ...")
def audit_of(_scan: DatasetScan, key: tuple[Any, ...]) -> AuditReport:
    """The audit of a scan (exact and near duplicates, label conflicts); ``key`` names the scan."""
    from kidney_lab.data import audit

    return audit.audit_dataset(_scan)


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Splitting ...")
def split_preview(_audit: AuditReport, key: tuple[Any, ...], strategy: str, seed: int) -> dict[str, Any]:
    """What a split of the audited dataset would hold (``Split.to_dict()``), without storing it."""
    from kidney_lab.data import split

    return split.make_split(_audit, strategy, seed=seed).to_dict()


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, mtime_ns: int, side: int = THUMBNAIL_SIDE) -> bytes:
    """A PNG thumbnail of a dataset image, at most ``side`` pixels on a side.

    ``mtime_ns`` is part of the cache key only. The image is read with the scan reader, so
    16-bit and TIFF files show as the models see them.

    Raises:
        kidney_lab.errors.ScanReadError: the file cannot be read.
    """
    import io

    from PIL import Image

    from kidney_lab.data.scan import read_scan

    image = Image.fromarray(read_scan(path).to_uint8())
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnails(paths: list[str]) -> list[bytes]:
    """Thumbnails of ``paths`` (see :func:`thumbnail`)."""
    return [thumbnail(path, Path(path).stat().st_mtime_ns) for path in paths]


@st.cache_data(max_entries=64, show_spinner=False)
def history_rows(path: str, mtime_ns: int) -> list[dict[str, Any]]:
    """The rows of a run's ``history.csv``; ``mtime_ns`` is part of the cache key only."""
    return runs_module.read_history(path)


def evaluation_signature(base: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of every file that evaluation writes in the workspace's run folders.

    Part of the cache key of tables built from stored evaluations (leaderboard, scores): a run
    trained, evaluated, re-evaluated on another folder or deleted, or a study's ensemble built
    again, changes it, so nothing shown
    is older than the files. Reading it costs a few ``stat`` calls per run.
    """
    names = (runs_module.RUN_FILE, runs_module.PREDICTIONS_FILE, runs_module.METRICS_FILE, runs_module.FAITHFULNESS_FILE)
    stamps: list[tuple[str, int]] = []
    for folder in runs_module.list_ensembles(base):
        for name in (runs_module.ENSEMBLE_FILE, runs_module.PREDICTIONS_FILE, runs_module.METRICS_FILE):
            with contextlib.suppress(OSError):
                stamps.append((str(folder / name), os.stat(folder / name).st_mtime_ns))
    for record_folder in sorted(_run_folders(base)):
        folders = [record_folder]
        with contextlib.suppress(OSError):
            external = Path(record_folder) / runs_module.EXTERNAL_FOLDER
            folders += sorted(entry.path for entry in os.scandir(external) if entry.is_dir())
        for folder in folders:
            for name in names:
                with contextlib.suppress(OSError):
                    stamps.append((os.path.join(folder, name), os.stat(os.path.join(folder, name)).st_mtime_ns))
    return tuple(stamps)


def _run_folders(base: Path) -> list[str]:
    """The paths of the folders in ``base`` named like runs (none when it does not exist)."""
    try:
        return [entry.path for entry in os.scandir(base)
                if runs_module.RUN_ID_PATTERN.fullmatch(entry.name) and entry.is_dir()]
    except OSError:
        return []



def read_metrics(path: Path) -> dict[str, Any] | None:
    """A run's ``metrics.json`` (computed from its stored predictions), or ``None`` without one."""
    from kidney_lab.fileio import read_json

    try:
        metrics = read_json(path / runs_module.METRICS_FILE)
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None
