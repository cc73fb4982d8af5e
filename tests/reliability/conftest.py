"""The fault battery's shared pieces: a 64³ phantom split, its cache, a micro run, and the CLI run in-process."""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mddose import cli
from mddose.ownership import OWNER
from mddose.training.loop import train
from tests.helpers import micro_config, phantom_cache


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """The last non-empty line on stderr (progress bars aside)."""
        lines = [ln for ln in self.err.replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln
                 and "pt/s]" not in ln and "%|" not in ln]
        return lines[-1] if lines else ""


@pytest.fixture
def mddose(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``mddose(*args)`` runs the CLI's own entry point in this process and returns its exit status and output."""

    def run(*args: object) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["mddose", *map(str, args)])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def assert_clean_error(result: Outcome, *words: str, code: int = 1) -> None:
    """Exit status, one ``error: <file>: ...`` line with every word in it, no traceback."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    assert result.message.startswith("error: "), result.err
    for word in words:
        assert word in result.message, (word, result.message)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file below ``roots`` (hidden ones and links included, links not followed) with a SHA-256 of its bytes
    (of its target for a link): equal snapshots before and after mean the user's files are byte-identical."""
    files = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if path.is_symlink():
                files[str(path)] = "link -> " + str(path.readlink())
            elif path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                files[str(path)] = "folder"
    return files


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 64³ phantoms, their cache and a micro run trained 2 steps; tests copy what they edit."""
    root = tmp_path_factory.mktemp("reliability")
    data, cache = phantom_cache(root, patients=2)
    train(cache, root / "run", micro_config(val_patients=0), max_steps=2, progress=False)
    return {"root": root, "data": data, "cache": cache, "run": root / "run"}


@pytest.fixture
def data_copy(world: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the phantom split, to break; as a user's own data, without mddose's marker."""
    copy = Path(shutil.copytree(world["data"], tmp_path / "data"))
    (copy / OWNER).unlink()
    return copy
