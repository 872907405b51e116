"""The messages kidney_lab builds from exceptions it did not raise itself."""

from __future__ import annotations

import pytest

from kidney_lab import errors


@pytest.mark.parametrize(
    ("error", "limit", "empty", "expected"),
    [
        (ValueError("\n  first line  \nsecond line"), None, None, "first line"),
        (OSError("x" * 50), 10, None, "x" * 10),
        (ValueError(""), None, None, "ValueError"),
        (KeyError(), 5, "", ""),
        (RuntimeError("   "), None, "nothing said", "nothing said"),
    ],
)
def test_first_line_of_an_exception(error, limit, empty, expected):
    assert errors.first_line(error, limit, empty) == expected
