"""The package's house plan, read from its imports (every ``import``, inside functions too): no module imports
itself through others, and no stage imports a later one. The stage order is the README's "Folders"."""

from __future__ import annotations

import ast
from pathlib import Path

import mddose

PACKAGE = Path(mddose.__file__).parent
# Lower floors first: a folder (or a top-level module) imports its own floor or lower ones, never a higher one.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "atomic", "ownership", "typecheck", "device", "__init__"),  # infrastructure every stage uses
    ("data", "models", "diffusion"),
    ("io", "evaluate", "runs"),
    ("inference", "viz"),
    ("training", "qa", "bench"),
    ("experiments",),
    ("cli_options", "cli_bench", "cli_dicom", "cli_qa"),
    ("cli",),  # the entry point registers the other command files
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports (``from mddose.x import y`` counts y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_has_a_floor() -> None:
    assert {room(m) for m in modules()} == set(FLOOR)


def test_no_stage_imports_a_later_one() -> None:
    known = modules()
    upward = sorted(f"{m} -> {i}" for m, p in known.items() for i in imports(p, known)
                    if FLOOR[room(i)] > FLOOR[room(m)])
    assert upward == []


def test_no_import_circle() -> None:
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    # a package's __init__ re-exporting its own modules is not a circle through them
    graph = {m: {i for i in deps if not (m.startswith(i + ".") and known[i].name == "__init__.py")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(graph[m]):
            if state.get(i) == 1:
                circles.append(" -> ".join(path[path.index(i):] + [i]) if i in path else f"{m} -> {i}")
            elif i not in state:
                visit(i, path + [i])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []
