"""Where kidney_lab keeps its runs, splits and demo data.

The workspace is ``trained_models/`` in the current folder unless ``KIDNEY_LAB_WORKSPACE`` names
another. Every path kidney_lab derives from an id stays inside it (see :func:`inside`).

The app remembers the dataset folder a user chose last in the workspace too (``app.json``), so
that restarting the app, or opening it from another browser, finds the same dataset.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kidney_lab import errors
from kidney_lab import fileio

WORKSPACE_VARIABLE = "KIDNEY_LAB_WORKSPACE"
DEMO_DATA_FOLDER = "demo_data"
CACHE_FOLDER = "cache"
# The app's remembered choices (the last dataset folder), one small JSON object.
APP_STATE_FILE = "app.json"
_DATA_FOLDER_KEY = "data_folder"


class WorkspaceError(errors.KidneyLabError):
    """The workspace cannot be used, or a name would lead outside it."""


def default_workspace() -> Path:
    """``$KIDNEY_LAB_WORKSPACE`` if set, else ``./trained_models`` (absolute)."""
    configured = os.environ.get(WORKSPACE_VARIABLE, "").strip()
    return Path(configured).expanduser().resolve() if configured else Path.cwd() / "trained_models"


def prepare_workspace(path: str | os.PathLike[str] | None = None) -> Path:
    """Create the workspace if needed and check that it is writable.

    Raises:
        WorkspaceError: It cannot be created or written to.
    """
    workspace = Path(path).expanduser().resolve() if path is not None else default_workspace()
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workspace, prefix=".write-test-"):
            pass
    except OSError as error:
        raise WorkspaceError(
            f"Workspace {workspace} is not writable ({error.strerror or error}); choose another "
            f"with --workspace or {WORKSPACE_VARIABLE}."
        ) from None
    return workspace


def inside(workspace: str | os.PathLike[str], *parts: str) -> Path:
    """Join ``parts`` onto ``workspace`` and refuse any result that leaves it.

    Raises:
        WorkspaceError: A part is absolute, contains ``..``, or a link leads outside.
    """
    base = Path(workspace).resolve()
    candidate = base.joinpath(*parts).resolve()
    if candidate != base and base not in candidate.parents:
        raise WorkspaceError(f"{'/'.join(parts)!r} is not a name inside the workspace {base}.")
    return candidate


def remember_data_folder(folder: str | os.PathLike[str], workspace: str | os.PathLike[str] | None = None) -> Path:
    """Record ``folder`` (made absolute) as the last dataset folder chosen in ``workspace``.

    The record is written atomically into ``<workspace>/app.json``; other keys there are kept.

    Returns:
        The folder as recorded.

    Raises:
        WorkspaceError: The workspace cannot be created or written to.
    """
    base = prepare_workspace(workspace)
    chosen = Path(folder).expanduser().resolve()
    state = _read_app_state(base)
    state[_DATA_FOLDER_KEY] = str(chosen)
    try:
        fileio.atomic_write_json(base / APP_STATE_FILE, state)
    except OSError as error:
        raise WorkspaceError(
            f"Cannot remember the dataset folder in {base / APP_STATE_FILE} "
            f"({error.strerror or error}); the workspace must be writable."
        ) from None
    return chosen


def last_data_folder(workspace: str | os.PathLike[str] | None = None) -> Path | None:
    """The dataset folder last recorded by :func:`remember_data_folder`, or ``None``.

    A missing, unreadable or damaged ``app.json`` counts as no record; the folder itself is not
    checked (it may have been moved since).
    """
    base = Path(workspace).expanduser().resolve() if workspace is not None else default_workspace()
    recorded = _read_app_state(base).get(_DATA_FOLDER_KEY)
    return Path(recorded) if isinstance(recorded, str) and recorded.strip() else None


def _read_app_state(base: Path) -> dict[str, object]:
    """The JSON object in ``<base>/app.json``; ``{}`` when it is absent or unreadable."""
    try:
        state = fileio.read_json(base / APP_STATE_FILE)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
