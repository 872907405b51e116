"""Where the app works: the workspace and the dataset folder, and where that choice came from.

The workspace is ``$KIDNEY_LAB_WORKSPACE`` or ``./trained_models``; the dataset folder is the
one chosen last in the app (remembered in the workspace), else ``$KIDNEY_LAB_DATA``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from kidney_lab import workspace as workspace_module
from kidney_lab import errors

DATA_VARIABLE = "KIDNEY_LAB_DATA"
# Source labels of the dataset folder, as the sidebar shows them.
CHOSEN_IN_APP = "chosen in the app"


def workspace() -> Path:
    """The workspace: ``$KIDNEY_LAB_WORKSPACE`` or ``./trained_models`` (absolute)."""
    return workspace_module.default_workspace()


@dataclasses.dataclass(frozen=True)
class DataChoice:
    """The dataset folder the app works on, and where that choice came from.

    Attributes:
        folder: The folder (absolute), or ``None`` when none is chosen.
        source: :data:`CHOSEN_IN_APP`, :data:`DATA_VARIABLE`, or ``""`` without a folder.
    """

    folder: Path | None
    source: str


def data_choice(base: Path | None = None) -> DataChoice:
    """The folder chosen last in the app (kept in the workspace), else ``$KIDNEY_LAB_DATA``."""
    remembered = workspace_module.last_data_folder(base or workspace())
    if remembered is not None:
        return DataChoice(remembered, CHOSEN_IN_APP)
    configured = os.environ.get(DATA_VARIABLE, "").strip()
    if configured:
        return DataChoice(Path(configured).expanduser().resolve(), DATA_VARIABLE)
    return DataChoice(None, "")


def choose_data_folder(folder: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Check that ``folder`` holds a dataset and remember it as the app's dataset folder.

    Returns:
        The dataset root (the folder holding the class folders).

    Raises:
        kidney_lab.errors.DatasetError: no dataset there (the message says what is missing).
        kidney_lab.workspace.WorkspaceError: the workspace cannot be written.
    """
    from kidney_lab.data import discover

    text = os.fspath(folder).strip()
    if not text:
        raise errors.KidneyLabError("Type the path of a dataset folder first.")
    root, _ = discover.find_root(text)
    workspace_module.remember_data_folder(root, base or workspace())
    return root


def demo_data_folder(base: Path | None = None) -> Path | None:
    """The workspace's demo phantoms (written by the demo), or ``None`` when there are none."""
    from kidney_lab.data import phantom

    folder = (base or workspace()) / workspace_module.DEMO_DATA_FOLDER
    return folder if phantom.phantom_root(folder) == folder.resolve() else None
