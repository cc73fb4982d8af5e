"""SIGINT and SIGKILL in the middle of predict, prepare and train: the next command resumes or refuses the
unfinished folder in one line, and nothing is ever scored or trained from a partial folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mddose.atomic import INCOMPLETE
from tests.helpers import micro_config
from tests.reliability.conftest import assert_clean_error


def _interrupt(args: list[object], wait_for: Path, sig: int, timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Start ``mddose args``, send ``sig`` once ``wait_for`` exists (the command is mid-way), wait for the end.

    ``timeout`` only bounds a hung command: the signal goes as soon as ``wait_for`` appears, however slow the
    machine (a fixed 120 s once ran out on a busy CI machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT at its default in the child: a shell that starts the tests in the background ignores it, and a Python
    # that starts with SIGINT ignored never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "mddose.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    try:
        while not wait_for.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not wait_for.exists():
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"{wait_for.name} did not appear within {timeout:.0f} s (exit {proc.returncode}): {err[-500:]}")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)  # a signalled command ends within seconds
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_predict_is_never_scored(sig: int, world: dict[str, Path], tmp_path: Path, mddose) -> None:
    out = tmp_path / "p"
    done = _interrupt(["predict", world["run"], world["data"], out, "--steps", "400", "--sampler", "ddim",
                       "--device", "cpu"], out / INCOMPLETE, sig)
    assert done.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), done.stderr
    if sig == signal.SIGINT:
        assert "interrupted" in done.stderr and "Traceback" not in done.stderr
    _marked_or_gone(out, sig)
    assert not (out / "prediction.json").exists()
    result = mddose("evaluate", world["data"], out, "--out", tmp_path / "e")
    assert_clean_error(result, "unfinished" if out.exists() else "does not exist")


def _marked_or_gone(folder: Path, sig: int) -> None:
    """A killed command leaves its folder marked unfinished; an interrupted one too, or removes it when nothing
    but its own markers was in it yet (as after an error)."""
    assert (folder / INCOMPLETE).is_file() or (sig == signal.SIGINT and not folder.exists())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_prepare_is_resumed_and_refused_meanwhile(sig: int, world: dict[str, Path], tmp_path: Path,
                                                               mddose) -> None:
    cache = tmp_path / "cache"
    _interrupt(["prepare", world["data"], cache], cache / INCOMPLETE, sig)
    _marked_or_gone(cache, sig)
    result = mddose("train", cache, tmp_path / "run", "--max-steps", "1")
    assert_clean_error(result, "unfinished" if cache.exists() else "not an mddose cache")
    assert mddose("prepare", world["data"], cache).code == 0  # the next prepare completes it
    assert not (cache / INCOMPLETE).exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_train_resumes_from_its_last_checkpoint(sig: int, world: dict[str, Path], tmp_path: Path,
                                                             mddose) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(micro_config(val_patients=0, checkpoint_every_s=0.5).to_dict()))
    first = run / "checkpoints" / "last" / "trainer.json"
    _interrupt(["train", world["cache"], run, "--config", cfg, "--max-steps", "100000", "--device", "cpu"], first,
               sig)
    step = json.loads(first.read_text())["step"]
    resumed = mddose("train", world["cache"], run, "--resume", "--max-steps", str(step + 2), "--device", "cpu")
    assert resumed.code == 0, resumed.err
    assert json.loads(first.read_text())["step"] == step + 2
