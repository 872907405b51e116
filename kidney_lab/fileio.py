"""Small file helpers shared by every module that writes to a workspace.

Every write is atomic: the content goes to a temporary file in the destination folder and
``os.replace`` moves it into place, so a reader never sees half a file and a crash never
leaves one behind.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    The temporary file is removed when the block raises, so nothing half-written remains.
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    os.close(handle)
    # mkstemp makes the file private (0600); the workspace's files are meant to be readable.
    os.chmod(temporary, 0o644)
    try:
        yield Path(temporary)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed and fsynced before the rename)."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def short_hash(*parts: str, length: int = 12) -> str:
    """Return the first ``length`` hex digits of the SHA-256 of ``parts`` joined by newlines."""
    digest = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


def now_iso(timespec: str = "milliseconds") -> str:
    """The current time in UTC as ISO 8601 text (``2026-11-26T10:15:12.345+00:00``), the
    timestamp of every file kidney_lab writes; ``timespec`` as for ``datetime.isoformat``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=timespec)
