"""The rule of whose output a folder is (:mod:`mddose.ownership`): markers, what replacing removes, nested
commands, folders from before markers, inputs, the one writer's lock, output files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mddose.atomic import LOCK, atomic_dir, write_text
from mddose.data.cache import prepare_cache
from mddose.data.phantom import write_phantoms
from mddose.errors import MddoseError
from mddose.ownership import (
    OWNER,
    check_inputs,
    check_output_file,
    claim,
    json_with,
    read_owner,
)


def test_a_claim_records_what_it_writes_and_replaces_only_that(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with claim(out, "mddose x") as folder:
        write_text(folder / "a.txt", "1")
        with atomic_dir(folder / "sub") as tmp:
            (tmp / "b.txt").write_text("2")
    assert read_owner(out)["files"] == ["a.txt", "sub/b.txt"] and not (out / LOCK).exists()
    with pytest.raises(MddoseError, match="earlier mddose x: pass --overwrite"), claim(out, "mddose x"):
        pass
    made_by_x = "mddose y did not make .a.txt, sub/b.txt.; mddose x made this folder"
    with pytest.raises(MddoseError, match=made_by_x), claim(out, "mddose y"):
        pass
    (out / "sub" / "mine.txt").write_text("user")
    with (pytest.raises(MddoseError, match="mddose x did not make .sub/mine.txt"),
          claim(out, "mddose x", overwrite=True)):
        pass
    (out / "sub" / "mine.txt").unlink()
    with claim(out, "mddose x", resume=True) as folder, pytest.raises(MddoseError, match="sub/mine.txt"):
        (out / "sub" / "mine.txt").write_text("user")  # added while the command runs
        with atomic_dir(folder / "sub") as tmp:  # a subfolder holding it is not replaced
            (tmp / "b.txt").write_text("3")
    assert (out / "sub" / "mine.txt").read_text() == "user" and (out / "sub" / "b.txt").read_text() == "2"
    (out / "sub" / "mine.txt").unlink()
    with claim(out, "mddose x", overwrite=True) as folder:
        assert sorted(p.name for p in folder.iterdir()) == [LOCK, OWNER]  # its own files went, nothing else


def test_a_write_is_owned_before_it_lands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt right after a file or folder lands (CI once sent SIGINT to a training just as its checkpoint
    swapped in) leaves it the claim's own, so the next run resumes instead of refusing it."""
    import mddose.atomic as atomic

    landing: list[tuple[str, list[str]]] = []
    real_replace, real_replace_dir = atomic.os.replace, atomic.replace_dir

    def interrupted(real):
        def land(src: Path, dst: Path) -> None:
            if (out / OWNER).exists():
                landing.append((Path(dst).name, read_owner(out)["files"]))
            real(src, dst)
            if Path(dst).name in ("a.txt", "sub"):
                raise KeyboardInterrupt  # the signal, just after the rename
        return land

    out = tmp_path / "out"
    monkeypatch.setattr(atomic.os, "replace", interrupted(real_replace))
    monkeypatch.setattr(atomic, "replace_dir", interrupted(real_replace_dir))
    for write in (lambda f: write_text(f / "a.txt", "1"), _write_sub):
        with pytest.raises(KeyboardInterrupt), claim(out, "mddose x", resume=True) as folder:
            write(folder)
    assert ("a.txt", ["a.txt"]) in landing and ("sub", ["a.txt", "sub/b.txt"]) in landing
    monkeypatch.undo()
    with claim(out, "mddose x", resume=True):  # resumed, not refused
        pass
    assert read_owner(out)["files"] == ["a.txt", "sub/b.txt"]


def _write_sub(folder: Path) -> None:
    with atomic_dir(folder / "sub") as tmp:
        (tmp / "b.txt").write_text("2")


def test_nested_commands_and_other_outputs_inside(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with claim(out, "mddose demo") as folder:
        write_phantoms(folder / "data", n_patients=1, seed=0, grid=64, progress=False)
    assert read_owner(out)["dirs"] == ["data"] and read_owner(out / "data")["command"] == "mddose phantom"
    with claim(out / "report", "mddose report", whole=True) as tmp:  # another command's output, added later
        write_text(tmp / "report.html", "<html>")
    # a command building its folder aside inside
    with (claim(out, "mddose demo", resume=True) as folder,
          claim(folder / "report2", "mddose report", whole=True) as tmp):
        write_text(tmp / "report.html", "<html>")
    assert read_owner(out)["files"] == [] and read_owner(out)["dirs"] == ["data", "report2"]
    with claim(out, "mddose demo", overwrite=True):
        assert not (out / "data").exists() and not (out / "report2").exists()
        assert (out / "report" / "report.html").is_file()
    # a swap as a whole would take it along
    with pytest.raises(MddoseError, match="report/"), claim(out, "mddose demo", whole=True, overwrite=True):
        pass


def test_a_failed_claim_leaves_nothing_and_a_whole_one_appears_at_once(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), claim(tmp_path / "a" / "b", "mddose x"):
        raise RuntimeError("failed before writing")
    assert list(tmp_path.iterdir()) == []
    with claim(tmp_path / "w", "mddose x", whole=True) as tmp:
        write_text(tmp / "f.txt", "1")
        assert not (tmp_path / "w" / "f.txt").exists()
    assert (tmp_path / "w" / "f.txt").read_text() == "1" and read_owner(tmp_path / "w")["files"] == ["f.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_folders_from_before_markers_are_taken_over_when_they_hold_only_their_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_phantoms(data, n_patients=2, seed=0, grid=64, progress=False)
    prepare_cache(data, tmp_path / "cache", progress=False)
    index = json.loads((tmp_path / "cache" / "cache.json").read_text())
    for entry in index["patients"]:  # as prepare wrote it before sources were recorded
        entry.pop("source")
    (tmp_path / "cache" / "cache.json").write_text(json.dumps(index))
    (tmp_path / "cache" / OWNER).unlink()
    summary = prepare_cache(data, tmp_path / "cache", progress=False)
    assert summary["added"] == 0 and read_owner(tmp_path / "cache")["command"] == "mddose prepare"
    assert all(e["source"]["folder"].endswith(e["id"]) for e in json.loads((tmp_path / "cache" /
                                                                            "cache.json").read_text())["patients"])
    (tmp_path / "cache" / OWNER).unlink()
    (tmp_path / "cache" / "thesis.tex").write_text("x")
    with pytest.raises(MddoseError, match="thesis.tex"):
        prepare_cache(data, tmp_path / "cache", progress=False)


def test_inputs_are_never_outputs(tmp_path: Path) -> None:
    (tmp_path / "data" / "pt_1").mkdir(parents=True)
    for out, problem in ((tmp_path / "data", "is also an input"), (tmp_path, "holds an input"),
                         (tmp_path / "data" / "preds", "lies inside an input")):
        with pytest.raises(MddoseError, match=problem):
            check_inputs(out, [None, tmp_path / "data"])
    check_inputs(tmp_path / "preds", [tmp_path / "data"])


def test_one_writer_and_a_dead_ones_lock_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mddose.ownership import claim\n"
        f"with claim({str(out)!r}, 'mddose predict'):\n"
        "    print('ready', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        busy = rf"mddose predict \(pid {holder.pid}\) is writing into this folder"
        with pytest.raises(MddoseError, match=busy), claim(out, "mddose predict"):
            pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the system drops a dead process's lock at once; allow for a slow reap
        try:
            with claim(out, "mddose predict", overwrite=True):
                break
        except MddoseError:
            time.sleep(0.1)
    else:
        pytest.fail("the dead process's lock still blocks")


def test_output_files(tmp_path: Path) -> None:
    own = json_with("benchmark", "networks")
    mine, earlier = tmp_path / "mine.json", tmp_path / "bench.json"
    mine.write_text('{"notes": 1}')
    earlier.write_text('{"benchmark": "networks"}')
    with pytest.raises(MddoseError, match="was not written by mddose bench networks"):
        check_output_file(mine, "mddose bench networks", (), own, overwrite=True)
    with pytest.raises(MddoseError, match="--overwrite"):
        check_output_file(earlier, "mddose bench networks", (), own)
    assert check_output_file(earlier, "mddose bench networks", (), own, overwrite=True) == earlier
    with pytest.raises(MddoseError, match="is also an input"):
        check_output_file(mine, "mddose x", [mine], own)
