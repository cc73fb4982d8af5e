"""Configs, checkpoints and devices: each bad value is one line naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.reliability.conftest import assert_clean_error

CONFIGS = {
    "batch size not a number": ('{"train": {"batch_size": "sixteen"}}', "train.batch_size: expected an integer"),
    "negative learning rate": ('{"train": {"lr": -1}}', "train.lr must be positive"),
    "zero batch size": ('{"train": {"batch_size": 0}}', "train.batch_size must be at least 1"),
    "EMA decay of 1": ('{"train": {"ema_decay": 1.0}}', "train.ema_decay must be in [0, 1)"),
    "bool for an integer": ('{"train": {"max_steps": true}}', "train.max_steps: expected an integer"),
    "top-level list": ("[1, 2]", "not a list"),
    "section not an object": ('{"train": 5}', "section 'train' must be a JSON object"),
    "unknown section": ('{"trian": {}}', "unknown config section 'trian'"),
    "widths not a list": ('{"model": {"enc_widths": "abc"}}', "model.enc_widths: expected a list of integers"),
    "unknown model key": ('{"model": {"widths": [1]}}', "unknown model config keys"),
    "unknown preset": ('{"preset": "huge"}', "unknown preset 'huge'"),
    "bad prediction type": ('{"diffusion": {"prediction_type": "noise"}}', "prediction_type"),
    "not JSON": ("{train: 1", "cannot read config"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_file(case: str, world: dict[str, Path], tmp_path: Path, mddose) -> None:
    text, problem = CONFIGS[case]
    (tmp_path / "cfg.json").write_text(text)
    result = mddose("train", world["cache"], tmp_path / "run", "--config", tmp_path / "cfg.json", "--max-steps", "1")
    assert_clean_error(result, "cfg.json", problem)
    assert not (tmp_path / "run").exists()


def _run_copy(world: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    run = Path(shutil.copytree(world["run"], tmp_path / "run"))
    return run, run / "checkpoints" / "last"


def test_corrupt_checkpoints(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    run, last = _run_copy(world, tmp_path)
    (last / "trainer.json").write_text("{bad")
    assert_clean_error(mddose("train", world["cache"], run, "--resume", "--max-steps", "3"), "trainer.json",
                       "corrupt training state")
    config = json.loads((last / "config.json").read_text())
    (last / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "train"}))
    assert_clean_error(mddose("train", world["cache"], run, "--resume", "--max-steps", "3"), "config.json",
                       "does not describe an mddose run")
    assert_clean_error(mddose("predict", run, world["data"], tmp_path / "p", "--steps", "1"), "config.json",
                       "does not describe an mddose run")
    (last / "config.json").write_text("{")
    assert_clean_error(mddose("predict", run, world["data"], tmp_path / "p", "--steps", "1"), "corrupt config")
    assert not (tmp_path / "p").exists()


def test_diverged_and_truncated_weights(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    run, last = _run_copy(world, tmp_path)
    ema = load_file(last / "ema.safetensors")
    first = next(k for k, v in ema.items() if v.is_floating_point())
    save_file({**ema, first: torch.full_like(ema[first], float("nan"))}, last / "ema.safetensors")
    assert_clean_error(mddose("predict", run, world["data"], tmp_path / "p", "--steps", "1"), "ema.safetensors",
                       "NaN or infinite")
    (last / "ema.safetensors").write_bytes((last / "model.safetensors").read_bytes()[:100])
    assert_clean_error(mddose("predict", run, world["data"], tmp_path / "p", "--steps", "1"), "ema.safetensors")
    assert not (tmp_path / "p").exists()


def test_sampler_and_resume_usage(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    assert_clean_error(mddose("predict", world["run"], world["data"], tmp_path / "p", "--sampler", "euler"),
                       "unknown sampler")
    assert_clean_error(mddose("train", world["cache"], tmp_path / "new", "--resume"), "nothing to resume")
    assert_clean_error(mddose("train", world["cache"], world["run"], "--max-steps", "1"), "pass --resume")
    usage = mddose("predict")
    assert usage.code == 2 and "Traceback" not in usage.err and "Missing argument" in usage.err
