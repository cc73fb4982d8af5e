"""Atomic file writing: readers never see a half-written file or folder.

A file is written to a temporary sibling and moved into place with :func:`os.replace`, which is atomic on
POSIX file systems. A folder is built under a temporary sibling name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mddose.errors import MddoseError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 → the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    Replacing an existing folder takes two renames (old aside, new in place); a process killed between them
    leaves ``.<name>.old-<pid>``, which :func:`recover_dir` puts back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 → the usual permissions
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(path: str | Path) -> Path:
    """Put back a folder that :func:`atomic_dir` had moved aside when its process was killed mid-swap."""
    path = Path(path)
    if not path.exists() and path.parent.is_dir():
        aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if aside:
            os.replace(aside[-1], path)
    return path


#: Left in an output folder while a command fills it file by file (predict, baseline, prepare); its presence
#: means the command did not finish, and the readers of that folder refuse it.
INCOMPLETE = ".mddose-incomplete"


def check_output_dir(path: str | Path) -> Path:
    """Refuse, before any work starts, an output folder that is a file or cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MddoseError("output exists and is not a folder", path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise MddoseError(f"cannot create the output folder: {probe} is a file", path)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MddoseError(f"cannot write into {probe} (permission denied)", path)
    return path


@contextlib.contextmanager
def filling(folder: str | Path, command: str) -> Iterator[Path]:
    """Mark ``folder`` unfinished (:data:`INCOMPLETE`) while ``command`` writes into it; unmark on success only."""
    folder = check_output_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / INCOMPLETE
    write_text(marker, f"{command} did not finish writing this folder; run it again to complete it\n")
    yield folder
    marker.unlink()


def check_finished(folder: str | Path) -> None:
    """Refuse a folder a command did not finish (:func:`filling` left its marker)."""
    marker = Path(folder) / INCOMPLETE
    if marker.is_file():
        raise MddoseError(f"unfinished: {marker.read_text(encoding='utf-8').strip()}", folder)
