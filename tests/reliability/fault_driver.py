"""Run ``python -m kidney_lab`` with one fault point armed, for the kill -9 tests.

    python -m tests.reliability.fault_driver POINT MARKER COMMAND...

When the process reaches POINT it creates the file MARKER and sleeps, so that the test can
kill it with SIGKILL at exactly that moment instead of guessing with timers. The points:

- ``checkpoint``: ``model.keras`` is being written: half of the new file is on disk under its
  temporary name (what a process killed during the write leaves behind).
- ``epoch``: the middle of the second epoch, right after its first batch.
- ``evaluation``: the status says that the final evaluation on the test split has started.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

POINTS = ("checkpoint", "epoch", "evaluation")


def _pause(marker: Path) -> None:
    marker.touch()
    time.sleep(3600)  # Until the test sends SIGKILL.


def arm(point: str, marker: Path) -> None:
    """Patch the code path of ``point`` so that reaching it pauses the process."""
    if point == "checkpoint":
        import keras

        save = keras.Model.save

        def half_written(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            if str(filepath).endswith(".tmp.keras"):
                os.truncate(filepath, os.path.getsize(filepath) // 2)
                _pause(marker)

        keras.Model.save = half_written
    elif point == "epoch":
        from kidney_lab.training import callbacks

        batch_end = callbacks.StatusReporter.on_train_batch_end

        def mid_epoch(self, batch, logs=None):
            batch_end(self, batch, logs)
            if self._epoch >= 1:
                _pause(marker)

        callbacks.StatusReporter.on_train_batch_end = mid_epoch
    elif point == "evaluation":
        from kidney_lab import runs

        write_status = runs.write_status

        def evaluating(run_dir, status):
            written = write_status(run_dir, status)
            if str(status.get("phase", "")).startswith("evaluating"):
                _pause(marker)
            return written

        runs.write_status = evaluating
    else:
        raise SystemExit(f"unknown fault point {point!r}; use one of {', '.join(POINTS)}")


def main() -> int:
    point, marker, *command = sys.argv[1:]
    arm(point, Path(marker))
    from kidney_lab import cli

    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
