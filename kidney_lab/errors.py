"""Exceptions that carry a message a user can act on.

Every error kidney_lab raises on purpose derives from :class:`KidneyLabError`. The command
line prints its message as one line and exits non-zero; the app shows it in ``st.error``.
Anything else that escapes is a bug.
"""


class KidneyLabError(Exception):
    """Base class: the message says what was wrong and what to do about it."""


class DatasetError(KidneyLabError, ValueError):
    """A dataset folder cannot be used (missing, empty, missing a class, ...)."""


class ScanReadError(KidneyLabError, ValueError):
    """A single uploaded or given scan cannot be read as an image."""


class FetchError(KidneyLabError):
    """The Kaggle dataset could not be downloaded."""


class SplitError(KidneyLabError, ValueError):
    """A split cannot be made or read (too few images, bad fractions, broken manifest)."""


class ConfigError(KidneyLabError, ValueError):
    """An argument or setting is outside what it may be (a size, a count, a name)."""


def first_line(error: BaseException, limit: int | None = None, empty: str | None = None) -> str:
    """The first non-blank line of ``str(error)``, cut to ``limit`` characters: what a one-line
    message shows of an exception kidney_lab did not raise itself.

    When the message is empty this is ``empty``, or the exception's type name when ``empty`` is
    None (as for ``ValueError()``).
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__ if empty is None else empty
    line = text.splitlines()[0].rstrip()
    return line if limit is None else line[:limit]
