"""Atomic writes: nothing half-written, usual permissions, a folder swap survives a kill between renames."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mddose.atomic import atomic_dir, atomic_path, recover_dir, write_text


def test_atomic_file_permissions_and_failure(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not (tmp_path / "b.txt").exists() and list(tmp_path.iterdir()) == [tmp_path / "a.txt"]


def test_atomic_dir_replace_and_recover(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "ck") as d:
        (d / "x").write_text("1")
    with atomic_dir(tmp_path / "ck") as d:
        (d / "x").write_text("2")
    assert (tmp_path / "ck" / "x").read_text() == "2"
    # a kill between the two renames of a swap: the old folder sits aside, the new one never arrived
    os.replace(tmp_path / "ck", tmp_path / ".ck.old-123")
    assert (recover_dir(tmp_path / "ck") / "x").read_text() == "2"
