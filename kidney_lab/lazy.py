"""Names of a package that are imported from its modules on first use.

A package that re-exports names of heavy modules (TensorFlow, pandas) sets its module
``__getattr__`` (PEP 562) to :func:`attributes`, so that importing the package loads nothing
heavy and ``package.name`` imports the module that holds ``name`` only when asked.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def attributes(owner: str, homes: Mapping[str, str], package: str | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``owner``: ``name`` is looked up in ``package.homes[name]``.

    Args:
        owner: The ``__name__`` of the module that exports the names.
        homes: Exported name -> the name of its module inside ``package``.
        package: The package holding those modules; ``owner`` itself (a package) by default.

    Returns:
        The function to assign to the package's ``__getattr__``; it raises AttributeError for
        names not in ``homes``.
    """

    def __getattr__(name: str) -> Any:
        module = homes.get(name)
        if module is None:
            raise AttributeError(f"module {owner!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package or owner}.{module}"), name)

    return __getattr__
