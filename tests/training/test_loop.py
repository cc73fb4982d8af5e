"""Training: the loss falls, checkpoints round-trip, resume is bit-exact (also after SIGKILL), DDP runs."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mddose.data.cache import Cache
from mddose.data.dataset import SliceDataset
from mddose.diffusion.process import DiffusionLoss
from mddose.errors import MddoseError
from mddose.inference.predictor import load_model
from mddose.models.build import build_model
from mddose.models.config import preset
from mddose.runs.checkpoint import load_weights, save_checkpoint
from mddose.runs.run_config import method_config
from mddose.training.loop import Trainer, train
from mddose.training.regression_loss import RegressionLoss
from tests.helpers import micro_config, phantom_cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_cache(tmp_path_factory.mktemp("train"))[1]


def _fixed_batch_loss(model: torch.nn.Module, cache_dir: Path) -> float:
    cfg = micro_config()
    ds = SliceDataset(Cache(cache_dir), cfg.data.__class__(image_size=32))
    items = [ds[i] for i in range(0, len(ds), max(1, len(ds) // 16))][:16]
    cond, dose = torch.stack([c for c, _ in items]), torch.stack([d for _, d in items])
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return float(torch.stack([DiffusionLoss(cfg.diffusion)(model.eval(), dose, cond, g) for _ in range(4)]).mean())


def test_training_reduces_loss(cache_dir: Path, tmp_path: Path) -> None:
    cfg = micro_config()
    before = _fixed_batch_loss(build_model(cfg.model, seed=cfg.train.seed), cache_dir)
    train(cache_dir, tmp_path / "run", cfg, max_steps=60, progress=False)
    _, trained, _ = load_model(tmp_path / "run", torch.device("cpu"), weights="model")
    after = _fixed_batch_loss(trained, cache_dir)
    assert after < 0.6 * before, (before, after)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["validation"] and history["validation"][-1]["step"] == 60
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert (tmp_path / "run" / "checkpoints" / "best" / "ema.safetensors").is_file()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    last = run / "checkpoints" / "last"
    return {**load_file(str(last / "model.safetensors")), **{f"ema.{k}": v for k, v in load_file(str(last / "ema.safetensors")).items()}}


def test_resume_is_bit_exact(cache_dir: Path, tmp_path: Path) -> None:
    cfg = micro_config(val_patients=0)
    train(cache_dir, tmp_path / "straight", cfg, max_steps=6, progress=False)
    train(cache_dir, tmp_path / "split", cfg, max_steps=3, progress=False)
    with pytest.raises(MddoseError, match="already has a checkpoint"):
        train(cache_dir, tmp_path / "split", cfg, max_steps=6, progress=False)
    train(cache_dir, tmp_path / "split", max_steps=6, resume=True, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_later_schedule_end_raises_the_lr_again(cache_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "restart"
    cfg = micro_config(val_patients=0, decay_steps=3, max_steps=4)
    train(cache_dir, run, cfg, progress=False)  # one step past the end of its schedule: at the floor
    train(cache_dir, run, resume=True, decay_steps=9, max_steps=5, progress=False)
    saved = json.loads((run / "checkpoints" / "last" / "config.json").read_text())["train"]
    assert (saved["decay_steps"], saved["max_steps"]) == (9, 9)
    lrs = {row["step"]: row["lr"] for row in json.loads((run / "history.json").read_text())["history"]}
    floor = 0.05 * cfg.train.lr
    assert lrs[4] == pytest.approx(floor)  # the row of a step holds the lr that step used
    restarted = cfg.train.lr * (0.05 + 0.475 * (1 + math.cos(math.pi * 4 / 9)))
    assert lrs[5] == pytest.approx(restarted) and lrs[5] > 5 * floor
    train(cache_dir, run, resume=True, progress=False)  # without --decay-steps the run keeps its new horizon
    assert json.loads((run / "history.json").read_text())["history"][-1]["step"] == 9


def test_sigkill_then_resume(cache_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    cfg = micro_config(val_patients=0, checkpoint_every_s=0.0)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "mddose.cli", "train", str(cache_dir), str(run), "--config", str(tmp_path / "cfg.json"),
           "--max-steps", "100000", "--device", "cpu"]
    # one thread there as here (conftest), so that both processes add up floating-point sums in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    trainer = run / "checkpoints" / "last" / "trainer.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (trainer.is_file() and json.loads(trainer.read_text())["step"] >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads(trainer.read_text())["step"]
    assert step >= 3
    result = train(cache_dir, run, max_steps=step + 2, resume=True, progress=False)
    assert result["step"] == step + 2
    # and the resumed run equals one that was never stopped
    train(cache_dir, tmp_path / "clean", cfg, max_steps=step + 2, progress=False)
    a, b = _weights(run), _weights(tmp_path / "clean")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_errors(tmp_path: Path) -> None:
    cfg = micro_config()
    model = build_model(cfg.model, seed=0)
    save_checkpoint(tmp_path / "ck", cfg.to_dict(), model, model)
    other = build_model(preset("tiny", image_size=32), seed=0)
    with pytest.raises(MddoseError, match="weights do not fit this architecture"):
        load_weights(other, tmp_path / "ck" / "model.safetensors")
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (tmp_path / "ck" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MddoseError, match="truncated or corrupt"):
        load_weights(model, tmp_path / "ck" / "model.safetensors")
    loaded_cfg, loaded, _ = load_model(tmp_path / "ck", torch.device("cpu"))  # ema.safetensors still intact
    assert loaded_cfg.model == cfg.model


def test_two_process_ddp_gloo(cache_dir: Path, tmp_path: Path) -> None:
    cfg = micro_config(val_patients=0)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "mddose.cli", "train", str(cache_dir), str(tmp_path / "ddp"), "--config", str(tmp_path / "cfg.json"),
           "--max-steps", "3", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trainer = json.loads((tmp_path / "ddp" / "checkpoints" / "last" / "trainer.json").read_text())
    assert trainer["step"] == 3


def record_masks(loss_class: type, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor | None]:
    """The list every call of ``loss_class`` appends its ``mask`` argument to."""
    masks: list[torch.Tensor | None] = []
    original = loss_class.__call__

    def recording(self, model, dose01, cond, generator=None, mask=None):
        masks.append(mask)
        return original(self, model, dose01, cond, generator, mask=mask)

    monkeypatch.setattr(loss_class, "__call__", recording)
    return masks


@pytest.mark.parametrize("region", ["image", "mask"])
def test_training_counts_the_loss_inside_the_mask(region: str, cache_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With loss_region 'mask' every training batch hands its possible-dose masks to the loss (and not otherwise),
    also after a resume."""
    masks = record_masks(DiffusionLoss, monkeypatch)
    cfg = micro_config(val_patients=0)
    cfg = replace(cfg, diffusion=replace(cfg.diffusion, loss_region=region))
    run = tmp_path / "run"
    train(cache_dir, run, cfg, max_steps=3, progress=False)
    train(cache_dir, run, max_steps=5, resume=True, progress=False)
    assert len(masks) == 5
    if region == "mask":
        assert all(m is not None and m.shape == (4, 1, 32, 32) and m.any() for m in masks)
    else:
        assert all(m is None for m in masks)
    losses = [row["loss"] for row in json.loads((run / "history.json").read_text())["history"]]
    assert len(losses) == 5 and all(math.isfinite(loss) and loss >= 0 for loss in losses)


def test_a_baseline_trains_in_the_recipes_loss_region(cache_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2D baseline on a recipe that counts the loss inside the possible-dose mask gets every batch's masks."""
    masks = record_masks(RegressionLoss, monkeypatch)
    base = micro_config(val_patients=0)
    cfg = method_config("hd-unet", replace(base, diffusion=replace(base.diffusion, loss="l1", loss_region="mask")))
    trainer = Trainer(cache_dir, tmp_path / "run", cfg, resume=False, device="cpu")
    assert (trainer.loss_fn.region, trainer.loss_fn.loss) == ("mask", torch.nn.functional.l1_loss)
    assert cfg.model.loss_region == "mask" and cfg.diffusion.loss_region == "mask"
    # a baseline's loss region is its own: a baseline config (e.g. from before the field existed) keeps 'image'
    # whatever the diffusion section says
    assert replace(cfg, model=cfg.model.replace(loss_region="image")).loss_region == "image"
    train(cache_dir, tmp_path / "run2", cfg, max_steps=2, progress=False)
    assert len(masks) == 2 and all(m is not None and m.shape == (4, 1, 32, 32) and m.any() for m in masks)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_only_where_the_device_computes_it_natively(native: bool, cache_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("mddose.training.loop.bf16_pays", lambda device: native)
    cfg = micro_config(val_patients=0, bf16=True)
    with caplog.at_level(logging.WARNING, logger="mddose.training.loop"):
        trainer = Trainer(cache_dir, tmp_path / "run", cfg, resume=False, device="cpu")
    assert trainer.bf16 is native
    assert ("bf16 autocast off" in caplog.text) is not native
