"""Where kidney_lab keeps its runs, splits and demo data.

The workspace is ``trained_models/`` in the current folder unless ``KIDNEY_LAB_WORKSPACE`` names
another. Every path kidney_lab derives from an id stays inside it (see :func:`inside`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kidney_lab.errors import KidneyLabError

WORKSPACE_VARIABLE = "KIDNEY_LAB_WORKSPACE"
DEMO_DATA_FOLDER = "demo_data"
CACHE_FOLDER = "cache"


class WorkspaceError(KidneyLabError):
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
