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
