"""Whose output is this folder: the one rule every command's output follows, and one writer at a time.

A command writes only what it owns. Its output folder carries a marker, ``.mddose-owner`` (JSON: the command
that made it, the files it made there, the folders of the commands it ran inside), and while it writes, a lock
(:func:`mddose.atomic.lock_folder`, naming the writer's pid). :func:`claim` is the one door every command that
writes a folder goes through. It

* refuses an output that is, holds or lies inside one of the command's inputs;
* refuses a folder another process is writing, naming it (a dead process's lock never blocks);
* refuses a folder that holds files the command did not make (no marker, another command's marker, or files its
  own marker does not list), naming them; an empty folder is fine;
* continues a folder the same command made before where the command resumes (``resume``: prepare, train,
  experiment), else replaces it only when told (``overwrite``, the ``--overwrite`` option) or when that run never
  finished; replacing removes only the files the marker lists;
* with ``whole`` builds the new folder aside and swaps it in at the end, cleaning what a killed run left there;
* on failure, removes the folder again when it made it and it holds nothing but its own markers.

Files written through :mod:`mddose.atomic` inside a claimed folder are recorded in its marker as they land, so a
killed run's files stay its own. Subfolders another mddose command marked (``report`` in an evaluation) are left
alone. Folders made before markers existed are taken over when they hold only what the command writes
(:data:`LEGACY`). :func:`check_output_file` is the same rule for a command that writes one file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mddose.atomic import (
    INCOMPLETE,
    LOCK,
    check_output_dir,
    lock_folder,
    recover_dir,
    removed_on_failure,
    replace_dir,
    unlock_folder,
    watch,
    write_json,
    write_text,
)
from mddose.errors import MddoseError

OWNER = ".mddose-owner"
OWNER_FORMAT = "mddose-owner/1"
CONTROL = frozenset({OWNER, LOCK, INCOMPLETE})  # the markers themselves: always the writer's own
#: Folders written before markers existed: (the file that shows the command wrote it, the files it writes).
LEGACY: dict[str, tuple[str, tuple[str, ...]]] = {
    "mddose prepare": ("cache.json", ("cache.json", "*.npz.xz")),
    "mddose train": ("config.json", ("config.json", "history.json", "loss.png", "checkpoints/*/*",
                                     "experiment_done.json")),
    "mddose predict": ("prediction.json", ("*.csv*", "prediction.json", "uncertainty/*", "nifti/*.nii.gz")),
    "mddose evaluate": ("summary.json", ("summary.json", "per_*.csv", "comparison.md", "figures/*_dose.png",
                                         "figures/*_comparison.png", "figures/*_dvh.png")),
    "mddose experiment": ("table.json", ("table.json", "experiment.json", "*.md", "runs/*", "preds/*", "eval/*",
                                         "timing/*")),
    "mddose demo": ("demo.json", ("demo.json", "data/*", "cache/*", "run/*", "predictions/*", "evaluation/*",
                                  "report/*")),
    "mddose qa": ("qa.json", ("qa.json", "qa.csv", "qa.html", "figures/*.png", "prediction/*", "patient/*")),
    "mddose report": ("report.html", ("report.html", "figures/*.png")),
    "mddose import-dicom": ("dicom_geometry.json", ("*.csv", "dicom_geometry.json")),
    "mddose export-nifti": ("ct.nii.gz", ("*.nii.gz", "*.nii")),
}


def _is_temp(name: str) -> bool:
    """A temporary of :mod:`mddose.atomic` (``.NAME.XXXXXXXX.tmp``) that a killed write left behind."""
    return name.startswith(".") and name.endswith(".tmp") and len(name.split(".")) >= 4


def read_owner(folder: Path) -> dict[str, Any] | None:
    """The folder's marker, or None (no marker, or one that cannot be read: then nothing in it is known as ours)."""
    try:
        data = json.loads((folder / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("command"), str)
    return {"files": [], "dirs": [], **data} if ok else None


def _walk(folder: Path, rel: str = "", temps: bool = False) -> Iterator[tuple[str, bool]]:
    """(relative path, is a subfolder with its own marker) of every file below ``folder``; marked subfolders are
    not entered; markers are skipped, and temporaries unless ``temps``. Links are files: never followed."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        name = f"{rel}{entry.name}"
        if entry.name in CONTROL or (_is_temp(entry.name) and not temps):
            continue
        if entry.is_dir(follow_symlinks=False):
            if (Path(entry.path) / OWNER).is_file():
                yield name, True
            else:
                yield from _walk(Path(entry.path), f"{name}/", temps)
        else:
            yield name, False


def _legacy(folder: Path, command: str) -> set[str] | None:
    """The files the command wrote in a folder made before markers existed (None when it is not one): those its
    patterns match; any other file there is not its own."""
    sign, patterns = LEGACY.get(command, ("", ()))
    files = [rel for rel, marked in _walk(folder) if not marked]
    if not sign or sign not in files:
        return None
    return {f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns)}


def foreign_files(folder: Path, command: str, whole: bool = False) -> list[str]:
    """What ``folder`` holds that ``command`` did not make (relative paths); [] when everything is its own.

    Subfolders marked by another mddose command are other outputs, left alone, and temporaries a killed write
    left are its own, except for a ``whole`` swap, which would take them along."""
    owner = read_owner(folder)
    if owner is None or owner["command"] != command:
        legacy = _legacy(folder, command) if owner is None else None
        owner = {"files": sorted(legacy), "dirs": []} if legacy is not None else {"files": [], "dirs": []}
    files, dirs = set(owner["files"]), set(owner["dirs"])
    alien = []
    for rel, marked in _walk(folder, temps=whole):
        if marked and rel in dirs:
            sub = read_owner(folder / rel)
            alien += [f"{rel}/{f}" for f in foreign_files(folder / rel, sub["command"] if sub else "", whole)]
        elif (marked and not whole) or (not marked and rel in files):
            continue
        else:
            alien.append(f"{rel}/" if marked else rel)
    return alien


def made_files(folder: Path, command: str) -> bool:
    """Whether ``folder`` holds any file an earlier run of ``command`` made."""
    owner = read_owner(folder)
    if owner is None:
        return _legacy(folder, command) is not None
    own = owner["command"] == command
    return own and any((folder / f).exists() for f in [*owner["files"], *owner["dirs"]])


def check_inputs(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is one of the inputs, holds one, or lies inside an input folder."""
    out = Path(os.path.realpath(output))
    for given in inputs:
        if given is None:
            continue
        path = Path(os.path.realpath(given))
        if out == path:
            raise MddoseError(f"is also an input of this command ({given}): choose another output", output)
        if path.is_relative_to(out):
            raise MddoseError(f"holds an input of this command ({given}): choose another output", output)
        if out.is_relative_to(path) and path.is_dir():
            raise MddoseError(f"lies inside an input of this command ({given}): choose another output", output)


def check_output_file(path: str | Path, command: str, inputs: Iterable[str | Path | None],
                      is_own: Callable[[Path], bool], overwrite: bool = False) -> Path:
    """The rule for a command that writes one file: never one of its inputs nor inside an input folder; an
    existing file only when ``is_own`` recognises it as this command's (and then with ``overwrite``)."""
    path = Path(path)
    if path.is_dir():
        raise MddoseError("output is a folder; give a file name", path)
    check_output_dir(path.parent)
    check_inputs(path, inputs)
    if os.path.lexists(path):
        if not path.is_file() or not is_own(path):
            raise MddoseError(f"exists and was not written by {command}: choose a new file name", path)
        if not overwrite:
            raise MddoseError(f"holds the output of an earlier {command}: pass --overwrite to replace it, or "
                              "choose a new file name", path)
    return path


def json_with(key: str, value: str) -> Callable[[Path], bool]:
    """Recognises a JSON file a command wrote by one of its fields (``{"benchmark": "networks", ...}``)."""
    def is_own(path: Path) -> bool:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get(key) == value

    return is_own


def _refusal(folder: Path, command: str, alien: list[str]) -> MddoseError:
    owner = read_owner(folder)
    shown = ", ".join(alien[:3]) + (f" and {len(alien) - 3} more" if len(alien) > 3 else "")
    maker = f"; {owner['command']} made this folder" if owner is not None and owner["command"] != command else ""
    return MddoseError(f"holds files that {command} did not make ({shown}){maker}: move them away or choose a new "
                       "or empty folder", folder)


@dataclass
class Claim:
    """A folder one command is writing in this process, and what it made there so far."""

    folder: Path  # absolute
    command: str
    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    whole: bool = False

    def save(self) -> None:
        _write_owner(self.folder, self.command, self.files, self.dirs)


_ACTIVE: list[Claim] = []  # this process's claims, outermost first


def _write_owner(folder: Path, command: str, files: Iterable[str], dirs: Iterable[str]) -> None:
    write_json(folder / OWNER, {"format": OWNER_FORMAT, "command": command, "pid": os.getpid(),
                                "files": sorted(files), "dirs": sorted(dirs)})


def _inside(path: Path) -> tuple[Claim, str] | None:
    """The innermost active (not ``whole``) claim holding ``path``, and the path relative to its folder."""
    for c in reversed(_ACTIVE):
        if not c.whole and path != c.folder and path.is_relative_to(c.folder):
            return c, path.relative_to(c.folder).as_posix()
    return None


def note_written(path: str | Path, built: Path | None = None) -> None:
    """Record a file (or every file of the folder ``built`` aside, about to land at ``path``) written or about to
    land as made by the claim that holds it; a write into a subfolder another command made
    there (a run inside an experiment) goes in that one's marker."""
    path = Path(os.path.abspath(path))
    found = _inside(path)
    if found is None or path.name in CONTROL:
        return
    claim, rel = found
    if any(_is_temp(part) for part in rel.split("/")):
        return  # built aside, by a command that records it where it lands
    names = [f"{rel}/{f}" for f, marked in _walk(built) if not marked] if built else [rel]
    for d in sorted(claim.dirs, key=len, reverse=True):
        if rel.startswith(f"{d}/") and (owner := read_owner(claim.folder / d)) is not None:
            cut = len(d) + 1
            _write_owner(claim.folder / d, owner["command"], {*owner["files"], *(n[cut:] for n in names)},
                         owner["dirs"])
            return
    claim.files.update(names)
    claim.save()


def check_replace(path: str | Path) -> None:
    """Refuse to replace, inside a claimed folder, a subfolder holding files its claim did not make."""
    path = Path(os.path.abspath(path))
    found = _inside(path)
    if found is None:
        return
    claim, rel = found
    alien = [f"{rel}/{f}" for f, marked in _walk(path) if marked or f"{rel}/{f}" not in claim.files]
    if alien:
        raise _refusal(claim.folder, claim.command, alien)


def _remove_made(folder: Path, owner: dict[str, Any]) -> None:
    """Delete what the marker lists (files, and the nested commands' folders by their own markers), then the
    folders that this left empty; nothing else."""
    for rel in owner["files"]:
        (folder / rel).unlink(missing_ok=True)
    for rel in owner["dirs"]:
        sub = read_owner(folder / rel)
        if sub is not None:
            _remove_made(folder / rel, sub)
            (folder / rel / OWNER).unlink(missing_ok=True)
    for rel in sorted({str(Path(r).parent) for r in [*owner["files"], *owner["dirs"]]} | set(owner["dirs"]),
                      key=lambda r: r.count("/"), reverse=True):
        for parent in [folder / rel, *(folder / rel).parents]:
            if parent == folder or not parent.is_relative_to(folder):
                break
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when empty
    (folder / INCOMPLETE).unlink(missing_ok=True)


def _clean_stale(folder: Path, command: str) -> None:
    """Remove the temporary build a killed ``whole`` run of this command left beside ``folder`` (marked by it,
    its process gone); nothing else of that name."""
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        owner = read_owner(tmp) if tmp.is_dir() and _is_temp(tmp.name) else None
        if owner is not None and owner["command"] == command and not _alive(owner.get("pid")):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: Any) -> bool:
    try:
        os.kill(pid, 0) if isinstance(pid, int) and pid > 0 else None
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    return isinstance(pid, int) and pid > 0


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, innermost first."""
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _undo(created: list[Path]) -> None:
    """Remove the folders a failed claim made, when they hold nothing but its markers."""
    for folder in created:
        if folder.is_dir() and all(p.name in CONTROL for p in folder.iterdir()):
            for p in folder.iterdir():
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def claim(path: str | Path, command: str, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
          resume: bool = False, whole: bool = False) -> Iterator[Path]:
    """Own ``path`` for ``command`` while the block writes it (see the module doc); yields the folder to write,
    or with ``whole`` a temporary folder that replaces ``path`` when the block succeeds."""
    folder = Path(os.path.abspath(check_output_dir(path)))
    if any(c.folder == folder and c.command == command and not c.whole for c in _ACTIVE):
        yield folder  # claimed, inputs checked, by this process for this command (finetune's run, train fills it)
        return
    check_inputs(folder, inputs)
    if whole:
        recover_dir(folder)
    created = _make_dirs(folder)
    lock, current = None, None
    try:
        lock = lock_folder(folder, command)
        current = _start(folder, command, overwrite, resume, whole)
        if whole:
            _clean_stale(folder, command)
            with _built_aside(current) as tmp:
                yield tmp
        else:
            yield folder
    except BaseException:
        _undo(created)
        raise
    finally:
        if current in _ACTIVE:
            _ACTIVE.remove(current)
        if lock is not None:
            unlock_folder(folder, lock)


@contextlib.contextmanager
def filling(folder: str | Path, command: str, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
            resume: bool = False) -> Iterator[Path]:
    """:func:`claim` ``folder`` and mark it unfinished (:data:`~mddose.atomic.INCOMPLETE`) while ``command`` fills
    it file by file (predict, baseline, prepare); the mark goes on success only, and readers refuse it meanwhile."""
    with claim(folder, command, inputs, overwrite=overwrite, resume=resume) as out, unfinished(out, command):
        yield out


@contextlib.contextmanager
def unfinished(folder: Path, command: str) -> Iterator[None]:
    """Mark a claimed ``folder`` unfinished while the block fills it; the mark goes on success only."""
    marker = folder / INCOMPLETE
    write_text(marker, f"{command} did not finish writing this folder; run it again to complete it\n")
    yield
    marker.unlink()


def _start(folder: Path, command: str, overwrite: bool, resume: bool, whole: bool) -> Claim:
    """Check the folder (now locked) and register the claim: continue, replace or start afresh."""
    alien = foreign_files(folder, command, whole)
    if alien:
        raise _refusal(folder, command, alien)
    earlier, never_ended = made_files(folder, command), (folder / INCOMPLETE).is_file()
    if earlier and not (resume or overwrite or never_ended):
        raise MddoseError(f"holds the output of an earlier {command}: pass --overwrite to replace it, or choose a "
                          "new folder", folder)
    owner = read_owner(folder)
    if owner is None or owner["command"] != command:  # new, or an empty folder another command had marked
        owner = {"files": sorted(_legacy(folder, command) or ()) if owner is None else [], "dirs": []}
    if earlier and not resume and not whole:
        _remove_made(folder, owner)
    keep = resume or whole
    current = Claim(folder, command, set(owner["files"]) if keep else set(), set(owner["dirs"]) if keep else set(),
                    whole)
    if not whole:
        current.save()
    outer = _inside(folder)
    if outer is not None:  # a command run inside another's folder: the outer one made this subfolder
        outer[0].dirs.add(outer[1])
        outer[0].save()
    _ACTIVE.append(current)
    return current


@contextlib.contextmanager
def _built_aside(current: Claim) -> Iterator[Path]:
    """A temporary sibling marked as ours (so a later run can clean it up); on success it replaces the folder."""
    folder = current.folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    with removed_on_failure(tmp, folder):
        _write_owner(tmp, current.command, (), ())
        yield tmp
        files = [rel for rel, marked in _walk(tmp) if not marked]
        dirs = [rel for rel, marked in _walk(tmp) if marked]
        _write_owner(tmp, current.command, files, dirs)
        alien = foreign_files(folder, current.command, whole=True)
        if alien:  # written there while we worked: refuse rather than take it along
            raise _refusal(folder, current.command, alien)
        replace_dir(tmp, folder)


watch(note_written, check_replace)  # every atomic write tells the claim holding it
