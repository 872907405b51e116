"""Which parts of the code base may import which (DESIGN.md's data path, read from the source).

Evaluation reads what training stored through the run store and never imports training; the
library never imports the app's pages. The imports are read from the source with ``ast``, so
an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "kidney_lab"


def imported_modules(path: Path) -> set[str]:
    """Every module the file at ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def offenders(folder: Path, forbidden: str) -> list[str]:
    """``file: module`` for every import of ``forbidden`` (or a module inside it) under ``folder``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if module == forbidden or module.startswith(forbidden + "."):
                found.append(f"{path.relative_to(LIBRARY.parent)}: {module}")
    return found


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import kidney_lab.training.jobs\n"
        "from kidney_lab import training\n"
        "def late():\n    from kidney_lab.training.callbacks import save_atomically\n"
        "from . import relative\n"
    )
    assert imported_modules(source) >= {
        "kidney_lab.training.jobs", "kidney_lab.training", "kidney_lab.training.callbacks"
    }
    assert not any(module.endswith("relative") for module in imported_modules(source))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [(LIBRARY / "evaluation", "kidney_lab.training"), (LIBRARY, "pages")],
    ids=["evaluation-does-not-import-training", "library-does-not-import-pages"],
)
def test_layers_do_not_import_upwards(folder: Path, forbidden: str) -> None:
    assert folder.is_dir()
    assert offenders(folder, forbidden) == []
