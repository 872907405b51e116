"""The memory figure: each run's peak resident memory is measured while that model trains.

``ru_maxrss`` only ever grows over a process's life, so in a study it would credit every model
with the peak of the models before it. The engine samples the resident set instead; these tests
allocate known amounts and check that the figure follows them.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import pytest

from kidney_lab.training import engine

MIB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="samples /proc/self/statm (Linux)")
def test_each_model_gets_its_own_peak_not_the_process_peak() -> None:
    with engine._PeakMemory(interval=0.02) as first:
        block = np.ones(200 * MIB // 8)  # 200 MiB, every page touched
        time.sleep(0.2)
        del block
    with engine._PeakMemory(interval=0.02) as second:
        time.sleep(0.1)
    big, small = first.summary(), second.summary()
    assert big["peak_rss_mb"] - big["rss_start_mb"] >= 180
    assert small["peak_rss_mb"] < big["peak_rss_mb"] - 150
    # The process-wide peak still remembers the first allocation; the second run's figure does not.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 >= big["peak_rss_mb"] - 1
    assert small["peak_rss_measure"] == "resident set sampled every 0.02 s while this model trained"


def test_without_proc_the_figure_says_it_is_the_process_peak(monkeypatch) -> None:
    monkeypatch.setattr(engine, "_resident_mb", lambda: None)
    with engine._PeakMemory() as memory:
        pass
    summary = memory.summary()
    assert summary["rss_start_mb"] is None and summary["peak_rss_mb"] > 0
    assert "whole process" in summary["peak_rss_measure"]
