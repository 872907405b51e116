"""Small helpers of the app tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from typing import Callable


def texts(app) -> str:
    """Every title, markdown, caption, alert and progress text of an AppTest run, joined."""
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts.extend(str(element.value) for element in getattr(app, kind))
    parts.extend(progress_texts(app))
    return "\n".join(parts)


def progress_texts(app) -> list[str]:
    """The texts of the progress bars of an AppTest run (AppTest has no accessor for them)."""
    return [element.proto.text for element in app.get("progress")]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.25)
