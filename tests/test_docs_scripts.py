"""The measurement scripts under docs/ (the commands behind their numbers) still name what the package has: every
``from mddose.… import …`` they hold resolves. They are not run (each is minutes of CPU); this catches the rename
that would leave a documented command failing with an ImportError."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCRIPTS = sorted(DOCS.rglob("*.py"))


def package_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from mddose... import name`` in the script, nested ones too."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mddose"
            for alias in node.names]


def test_docs_hold_measurement_scripts() -> None:
    assert len(SCRIPTS) >= 5 and all(package_imports(s) for s in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(DOCS)))
def test_a_docs_script_imports_what_the_package_has(script: Path) -> None:
    missing = [f"{module}.{name}" for module, name in package_imports(script)
               if not hasattr(importlib.import_module(module), name)]
    assert not missing, f"{script.name} imports what the package no longer has: {', '.join(missing)}"
