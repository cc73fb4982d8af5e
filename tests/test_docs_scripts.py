"""The measurement scripts and configs under docs/ (the commands behind their numbers) still work: every
``from mddose.… import …`` they hold resolves and every config loads. They are not run (each is minutes of CPU);
this catches the rename or the preset change that would leave a documented command failing."""

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


CONFIGS = sorted([*DOCS.rglob("*config*.json"), *(DOCS.parent / "recipes").glob("*.json")])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(DOCS.parent)))
def test_a_docs_config_loads(config: Path) -> None:
    """The configs the docs' commands and the training script pass to ``--config`` still load (a preset that grew
    an input broke one)."""
    from mddose.runs.run_config import load_run_config

    assert load_run_config(config).to_dict()
