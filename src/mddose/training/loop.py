"""Training MD-Dose (``mddose train CACHE_DIR RUN_DIR``), top to bottom: setup, data, model, optimizer,
helpers, loop. The deterministic baselines train in the same loop with their voxel-wise loss
(:mod:`mddose.inference.regression`) in place of the diffusion loss (a 3D one on random volume crops). Single
process by default; under ``torchrun`` it trains with PyTorch DDP (NCCL on GPUs, gloo on CPUs), each rank taking its share
of every global batch.

The run folder it writes is :mod:`mddose.runs.layout`'s: ``checkpoints/last`` every ``checkpoint_every_s`` and
at the end, ``checkpoints/best`` at each better validation, ``history.json`` and ``loss.png`` as it runs.

Determinism: batches come from a per-epoch permutation seeded by (seed, epoch); augmentation, t and ε come
from torch's global RNG, whose state the checkpoint keeps. A run stopped at any point (SIGKILL included)
resumes from its last checkpoint with ``--resume`` and continues as if never stopped: the same steps give
bit-identical weights in a single process.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from mddose.atomic import check_output_dir, write_json
from mddose.data.cache import Cache
from mddose.data.dataset import SliceDataset
from mddose.data.volume import VolumeDataset
from mddose.device import ThreadTuner, prediction_batch, resolve_device, slowdown
from mddose.diffusion.process import DiffusionLoss
from mddose.errors import MddoseError
from mddose.evaluate.openkbp import dose_score
from mddose.inference.predict import predict_volume
from mddose.inference.regression import RegressionLoss
from mddose.models.build import build_model, count_parameters
from mddose.runs.checkpoint import load_trainer_state, load_weights, save_checkpoint
from mddose.runs.layout import TRAINER, RunFolder
from mddose.runs.run_config import RunConfig, checkpoint_run_config, run_preset
from mddose.viz.training import plot_history

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate at ``step`` (a pure function of the step): warm-up, then the chosen schedule."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.decay_steps - t.warmup_steps))
    if t.lr_schedule == "cosine":
        return t.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
    # "paper": constant for the first half, then linear decay to 1 % of the initial rate (1e-2 → 1e-4)
    return t.lr if progress < 0.5 else t.lr * (1 - (progress - 0.5) / 0.5 * 0.99)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def split_patients(cache: Cache, n_val: int) -> tuple[list[str], list[str]]:
    """Hold out the last ``n_val`` patients of the cache (in natural order) for validation."""
    ids = cache.patient_ids
    if n_val >= len(ids):
        n_val = max(0, len(ids) - 1)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


def batch_indices(n: int, batch: int, seed: int, epoch: int, pos: int) -> tuple[list[int], int, int]:
    """The next global batch from the (seed, epoch) permutation; returns (indices, epoch, pos) after it."""
    if pos + batch > n:
        epoch, pos = epoch + 1, 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[pos:pos + batch].tolist(), epoch, pos + batch


def validate(ema: torch.nn.Module, cfg: RunConfig, cache: Cache, ids: list[str], device: torch.device) -> float:
    """Mean OpenKBP dose score (Gy) of the EMA model on held-out patients, with the fast sampler (if any)."""
    scores = []
    ema.eval()
    for pid in ids:
        vol = cache.get(pid)
        pred, _ = predict_volume(ema, cfg, vol, cfg.train.val_sampler, cfg.train.val_steps, 1,
                                 prediction_batch(device), 0, device)
        patient = vol.to_patient(cache.rois)
        scores.append(dose_score(patient.dose, pred, patient.possible_dose_mask))
    return float(np.mean(scores))


def _ddp() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(
    cache_dir: str | Path,
    run_dir: str | Path,
    config: RunConfig | None = None,
    max_steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    planned_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run; stops at ``max_steps`` total steps or after ``minutes`` of this invocation.

    ``planned_steps``: the steps this invocation is expected to make (the demo's plan); far fewer, or steps far
    slower than the run's best, end in a warning (terminal, history.json, the result's ``warning``).
    """
    run_dir = check_output_dir(run_dir)
    run, last = RunFolder(run_dir), RunFolder(run_dir).last
    if resume:
        if not (last / TRAINER).is_file():
            raise MddoseError("nothing to resume: no checkpoints/last in the run folder", run_dir)
        cfg = checkpoint_run_config(last)
    else:
        if (last / "config.json").is_file():
            raise MddoseError("run folder already has a checkpoint: pass --resume or choose a new folder", run_dir)
        cfg = config or run_preset("default")
    stop_step = max_steps if max_steps is not None else (None if minutes is not None else cfg.train.max_steps)
    deadline = time.monotonic() + minutes * 60 if minutes is not None else None
    rank, world = _ddp()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    torch.manual_seed(cfg.train.seed + rank)

    # data
    cache = Cache(cache_dir)
    if cache.rois.all != cfg.data.rois.all:
        raise MddoseError("the cache's ROI configuration differs from the run's", cache_dir)
    train_ids, val_ids = split_patients(cache, cfg.train.val_patients)
    volumes = cfg.volumetric  # a 3D baseline trains on random crops
    dataset = (VolumeDataset(cache, cfg.data, cfg.model.patch_size, train_ids) if volumes
               else SliceDataset(cache, cfg.data, train_ids))
    if len(dataset) < cfg.train.batch_size:
        kind = "crops" if volumes else "slices"
        raise MddoseError(f"only {len(dataset)} training {kind} for batch size {cfg.train.batch_size}", cache_dir)

    # model, EMA, optimizer
    model = build_model(cfg.model).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "pos": 0, "history": [], "validation": [], "best": None,
                             "train_ids": train_ids, "val_ids": val_ids, "seconds": 0.0}
    if resume:
        load_weights(model, last / "model.safetensors")
        load_weights(ema, last / "ema.safetensors")
        state.update(load_trainer_state(last, optimizer))
        state.pop("optimizer", None)
        if world > 1:  # ranks draw different augmentations; only rank 0's RNG state was saved
            torch.manual_seed(cfg.train.seed + rank + 7919 * state["step"])
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    diffusion = cfg.objective == "diffusion"
    loss_fn = DiffusionLoss(cfg.diffusion) if diffusion else RegressionLoss(cfg.model)
    curve_labels = (f"Training: {cfg.model.name}", "diffusion loss (MSE)" if diffusion else f"{cfg.model.loss} loss")
    autocast = cfg.train.bf16
    if rank == 0:
        write_json(run.config, cfg.to_dict())
        n_params = count_parameters(model)
        log.info("training %s parameters on %s (%d slices, %d validation patients, world %d)",
                 f"{n_params:,}", dev, len(dataset), len(val_ids), world)

    def checkpoint(folder: str) -> None:
        save_checkpoint(run.checkpoint(folder), cfg.to_dict(), model, ema, optimizer,
                        {k: v for k, v in state.items()})

    start, last_ckpt, running = time.monotonic(), time.monotonic(), []
    seconds_before, first_step, step_times = state["seconds"], state["step"], []
    if planned_steps is None and minutes is not None and max_steps is not None:
        planned_steps = max_steps - first_step
    tuner = ThreadTuner(dev) if world == 1 else None
    bar = tqdm(total=stop_step, initial=state["step"], desc="train", unit="step", disable=not progress or rank > 0)
    while (stop_step is None or state["step"] < stop_step) and (deadline is None or time.monotonic() < deadline):
        step, step_start = state["step"], time.perf_counter()
        idx, state["epoch"], state["pos"] = batch_indices(
            len(dataset), cfg.train.batch_size, cfg.train.seed, state["epoch"], state["pos"]
        )
        items = [dataset[i] for i in idx[rank::world]]
        cond = torch.stack([c for c, _ in items]).to(dev)
        dose = torch.stack([d for _, d in items]).to(dev)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(net, dose, cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        ema_update(ema, model, step, cfg.train.ema_decay)
        state["step"] = step + 1
        running.append(float(loss.detach()))
        step_times.append(time.perf_counter() - step_start)
        if tuner is not None:
            tuner.step_done(step_times[-1])
        bar.update(1)
        if state["step"] % cfg.train.log_every == 0 and rank == 0:
            state["history"].append({"step": state["step"], "loss": float(np.mean(running)), "lr": lr_at(step, cfg)})
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if rank == 0 and val_ids and cfg.train.val_every > 0 and state["step"] % cfg.train.val_every == 0:
            _validate_and_keep(ema, cfg, cache, val_ids, dev, state, checkpoint)
        if rank == 0 and time.monotonic() - last_ckpt > cfg.train.checkpoint_every_s:
            state["seconds"] = seconds_before + time.monotonic() - start
            checkpoint("last")
            plot_history(state, run.loss_plot, *curve_labels)
            last_ckpt = time.monotonic()
    bar.close()
    if tuner is not None:
        tuner.restore()
    warning = slowdown(step_times, planned_steps, state["step"] - first_step)
    if warning and rank == 0:
        log.warning("%s", warning)
        state.setdefault("warnings", []).append({"step": state["step"], "warning": warning})
    if rank == 0:
        validated = state["validation"] and state["validation"][-1]["step"] == state["step"]
        if val_ids and not validated:
            _validate_and_keep(ema, cfg, cache, val_ids, dev, state, checkpoint)
        state["seconds"] = seconds_before + time.monotonic() - start
        checkpoint("last")
        plot_history(state, run.loss_plot, *curve_labels)
        write_json(run.history,
                   {k: state.get(k, []) for k in ("history", "validation", "best", "seconds", "warnings")})
    if world > 1:
        dist.barrier()
    return {"step": state["step"], "seconds": state["seconds"], "best": state["best"], "warning": warning,
            "threads": (tuner.chosen if tuner is not None else torch.get_num_threads()) if dev.type == "cpu" else None,
            "last_loss": state["history"][-1]["loss"] if state["history"] else None}


def _validate_and_keep(ema, cfg, cache, val_ids, dev, state, checkpoint) -> None:
    score = validate(ema, cfg, cache, val_ids, dev)
    state["validation"].append({"step": state["step"], "dose_score": score})
    log.info("step %d: validation dose score %.3f Gy (%s, %d steps, %d patients)",
             state["step"], score, cfg.train.val_sampler, cfg.train.val_steps, len(val_ids))
    if state["best"] is None or score < state["best"]["dose_score"]:
        state["best"] = {"step": state["step"], "dose_score": score}
        checkpoint("best")
