"""Atomic file writing: readers never see a half-written file or folder; and the lock of one writer per folder.

A file is written to a temporary sibling and moved into place with :func:`os.replace`, which is atomic on
POSIX file systems. A folder is built under a temporary sibling name and renamed when complete. A write that
fails for the system's reason (a full disk, a read-only folder) is one line naming the file. Whoever
:func:`watch` es is told of every file and folder written here, and asked before a folder is replaced:
:mod:`mddose.ownership` does, so that a folder a command claimed lists its files and loses only those.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mddose.errors import MddoseError

#: (told of a file, or of a folder with the folder it is built in, about to land; asked before a folder is
#: replaced: raises to refuse)
_watchers: list[tuple[Callable[[Path, Path | None], None], Callable[[Path], None]]] = []


def watch(written: Callable[[Path, Path | None], None], replacing: Callable[[Path], None]) -> None:
    """Be told of every file (``written(path, None)``) and folder (``written(path, built)``, its
    files still in the folder ``built`` aside) about to land here, just before it lands, and be asked before an
    existing folder is replaced (``replacing(path)``, which refuses by raising)."""
    _watchers.append((written, replacing))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def io_failure(error: BaseException) -> str | None:
    """The system's reason when ``error`` is a failed read or write: an OSError, or a library's wrapper of one
    (pydicom re-raises it with a traceback in the message, safetensors names only ``os error N``)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        found = re.search(r"os error (\d+)", str(seen))
        if found:
            return os.strerror(int(found.group(1)))
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _one_line(path: Path) -> Iterator[None]:
    """A write that fails for the system's reason becomes one line naming ``path``."""
    try:
        yield
    except MddoseError:
        raise
    except Exception as e:
        reason = io_failure(e)
        if reason is None:
            raise
        raise MddoseError(f"cannot write ({reason})", path) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on error remove it."""
    path = Path(path)
    with _one_line(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _one_line(path):
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 → the usual permissions
            for written, _ in _watchers:  # told before it lands: a signal between the two never leaves it unowned
                written(path, None)
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


def read_json_object(path: str | Path, what: str = "the file", example: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; else one line naming the file and ``what`` it should hold (``example``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MddoseError(f"cannot read {what} ({type(e).__name__}: {e})", path) from None
    if not isinstance(data, dict):
        raise MddoseError(f"{what} must be a JSON object{' ' + example if example else ''}", path)
    return data


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def removed_on_failure(tmp: Path, final: Path) -> Iterator[None]:
    """Remove the temporary folder ``tmp`` built for ``final`` when the block fails; a user error then names
    ``final``, not ``tmp``."""
    try:
        yield
    except MddoseError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise e.moved(tmp, final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    An existing ``path`` is replaced only when no watcher refuses (:func:`watch`: inside a claimed folder, when it
    holds nothing its claim did not make).
    """
    path = Path(path)
    with _one_line(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    with removed_on_failure(tmp, path), _one_line(path):
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            for _, replacing in _watchers:
                replacing(path)
        for written, _ in _watchers:  # told before it lands, with the files it brings (see atomic_path)
            written(path, tmp)
        replace_dir(tmp, path)


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the folder ``tmp`` onto ``path``, replacing what is there as a whole.

    Replacing an existing folder takes two renames (old aside, new in place); a process killed between them
    leaves ``.<name>.old-<pid>``, which :func:`recover_dir` puts back.
    """
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 → the usual permissions
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


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


def check_finished(folder: str | Path) -> None:
    """Refuse a folder a command did not finish (:func:`filling` left its marker)."""
    marker = Path(folder) / INCOMPLETE
    if marker.is_file():
        raise MddoseError(f"unfinished: {marker.read_text(encoding='utf-8').strip()}", folder)


#: The lock of the one process writing a folder (an ``flock`` the system drops when its holder dies); its text
#: names the holder.
LOCK = ".mddose-lock"


def lock_folder(folder: Path, command: str) -> int:
    """Take ``folder``'s writer lock for ``command`` (a file descriptor to :func:`unlock_folder`); refuse in one
    line, naming the process, when another holds it."""
    path = folder / LOCK
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise MddoseError(f"cannot write into the folder ({e.strerror})", folder) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(path)
            raise MddoseError(f"{holder} is writing into this folder: wait until it ends, or choose another "
                              "folder", folder) from None
        if _same_file(fd, path):  # not a file its last holder removed while we waited
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {command}\n".encode())
            return fd
        os.close(fd)
    raise MddoseError("cannot take the folder's lock (it keeps being replaced)", folder)


def unlock_folder(folder: Path, fd: int) -> None:
    """Release the lock and remove its file (when it is still ours)."""
    if _same_file(fd, folder / LOCK):
        (folder / LOCK).unlink(missing_ok=True)
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_holder(path: Path) -> str:
    try:
        pid, _, command = path.read_text(encoding="utf-8").strip().partition(" ")
    except OSError:
        pid, command = "", ""
    return f"{command or 'another mddose command'} (pid {pid})" if pid.isdigit() else "another mddose command"
