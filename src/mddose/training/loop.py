"""Training MD-Dose (``mddose train CACHE_DIR RUN_DIR``), top to bottom: setup, data, model, optimizer,
helpers, loop. The deterministic baselines train in the same loop with their voxel-wise loss
(:mod:`mddose.training.regression_loss`) in place of the diffusion loss (a 3D one on random volume crops). Single
process by default; under ``torchrun`` it trains with PyTorch DDP (NCCL on GPUs, gloo on CPUs), each rank taking
its share of every global batch.

The run folder it writes is :mod:`mddose.runs.layout`'s: ``checkpoints/last`` every ``checkpoint_every_s`` and
at the end, ``checkpoints/best`` at each better validation, ``history.json`` and ``loss.png`` as it runs.

Determinism: batches come from a per-epoch permutation seeded by (seed, epoch); augmentation, t and ε come
from torch's global RNG, whose state the checkpoint keeps. A run stopped at any point (SIGKILL included)
resumes from its last checkpoint with ``--resume`` and continues as if never stopped: the same steps give
bit-identical weights in a single process.
"""

from __future__ import annotations

import contextlib
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

from mddose.atomic import write_json
from mddose.data.cache import Cache
from mddose.data.dataset import SliceDataset
from mddose.data.volume import VolumeDataset
from mddose.device import ThreadTuner, bf16_pays, prediction_batch, resolve_device, slowdown
from mddose.diffusion.process import DiffusionLoss
from mddose.errors import MddoseError
from mddose.evaluate.challenge import dose_score
from mddose.inference.bounds import input_voxel_mm
from mddose.inference.slicewise import predict_volume
from mddose.inference.scope import profile_of, write_profile
from mddose.models.build import build_model, count_parameters
from mddose.ownership import claim
from mddose.runs.checkpoint import (load_trainer_state, load_weights, load_widened, save_checkpoint,
                                    warm_start_weights, weights_lineage)
from mddose.runs.layout import CONFIG, TRAINER, RunFolder
from mddose.runs.run_config import RunConfig, checkpoint_run_config, new_horizon, run_preset, warm_start_config
from mddose.training.optimizer import build_optimizer
from mddose.training.regression_loss import RegressionLoss
from mddose.viz.training import plot_history

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate at ``step`` (a pure function of the step): warm-up, then the chosen schedule. A warm start
    (``train.restart_step``) warms up again from its first step and decays from there to ``decay_steps``."""
    t = cfg.train
    begin = t.restart_step + t.warmup_steps
    if step < begin:
        return t.lr * (step - t.restart_step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - begin) / max(1, t.decay_steps - begin))
    if t.lr_schedule == "cosine":
        return t.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
    # "paper": constant for the first half, then linear decay to 1 % of the initial rate (1e-2 → 1e-4)
    return t.lr if progress < 0.5 else t.lr * (1 - (progress - 0.5) / 0.5 * 0.99)


def training_loss(cfg: RunConfig) -> DiffusionLoss | RegressionLoss:
    """The objective of ``cfg``: the diffusion loss, or a baseline's voxel-wise loss."""
    return DiffusionLoss(cfg.diffusion) if cfg.objective == "diffusion" else RegressionLoss(cfg.model)


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
        pred = predict_volume(ema, cfg, vol, sampler=cfg.train.val_sampler, steps=cfg.train.val_steps,
                              batch_size=prediction_batch(device), device=device).mean
        patient = vol.to_patient(cache.rois)
        scores.append(dose_score(patient.dose, pred, patient.possible_dose_mask))
    return float(np.mean(scores))


def _ddp() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class Trainer:
    """One training session, nnU-Net style: :meth:`__init__` sets up (config, device, data, model, EMA,
    optimizer, resumed state), :meth:`step` trains one batch, :meth:`log`, :meth:`validate` and :meth:`save`
    are the hooks the loop of :func:`train` calls, :meth:`finish` writes what a session leaves behind."""

    def __init__(self, cache_dir: str | Path, run_dir: str | Path, config: RunConfig | None, resume: bool,
                 device: str, decay_steps: int | None = None, init_from: Path | None = None) -> None:
        self.run = RunFolder(run_dir)
        last = self.run.last
        if resume and not (last / TRAINER).is_file():
            raise MddoseError("nothing to resume: no checkpoints/last in the run folder", run_dir)
        if not resume and (last / CONFIG).is_file():
            raise MddoseError("run folder already has a checkpoint: pass --resume or choose a new folder", run_dir)
        if resume and init_from is not None:
            raise MddoseError("--init-from starts a new run from other weights; it cannot --resume", run_dir)
        self.lineage = weights_lineage(init_from) if init_from is not None else None
        cfg = checkpoint_run_config(last) if resume else config or (
            checkpoint_run_config(init_from) if init_from is not None else run_preset())
        cfg = cfg if self.lineage is None else warm_start_config(cfg, self.lineage["step"], decay_steps)
        self.cfg = cfg = cfg if decay_steps is None else new_horizon(cfg, decay_steps)
        self.rank, self.world = _ddp()
        self.dev = resolve_device(device)
        if self.dev.type == "cuda" and self.world > 1:
            self.dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.dev)
        torch.manual_seed(cfg.train.seed + self.rank)
        self._setup_data(cache_dir)
        self._setup_model(resume, init_from)
        if decay_steps is not None and self.state["step"] >= decay_steps and self.rank == 0:
            log.warning("step %d is already past the new horizon %d: the learning rate stays at its floor",
                        self.state["step"], decay_steps)
        self.running: list[float] = []
        self.step_times: list[float] = []
        self.tuner = ThreadTuner(self.dev) if self.world == 1 else None
        self.bf16 = cfg.train.bf16 and bf16_pays(self.dev)
        if cfg.train.bf16 and not self.bf16 and self.rank == 0:
            log.warning("bf16 autocast off: this %s has no native bf16 (torch would emulate it); training in "
                        "float32", self.dev.type.upper())

    def _setup_data(self, cache_dir: str | Path) -> None:
        cfg = self.cfg
        self.cache = Cache(cache_dir)
        if self.cache.rois.all != cfg.data.rois.all:
            raise MddoseError("the cache's ROI configuration differs from the run's", cache_dir)
        self.train_ids, self.val_ids = split_patients(self.cache, cfg.train.val_patients)
        no_dose = [pid for pid in self.cache.patient_ids if not self.cache.entries[pid].get("has_dose", True)]
        if no_dose:
            raise MddoseError(f"{', '.join(no_dose[:3])}{' …' if len(no_dose) > 3 else ''} "
                              f"{'have' if len(no_dose) > 1 else 'has'} no dose: training needs every patient's dose "
                              "(prepare a split whose patients have dose.csv)", cache_dir)
        entries = [self.cache.entries[pid] for pid in self.train_ids]
        self.input_voxel = [round(float(np.mean([input_voxel_mm(e["spacing"], e["full_shape"], cfg.data)[a]
                                                 for e in entries])), 4) for a in range(3)]
        if self.rank == 0:  # the range of anatomy this model will know (predict warns outside it)
            write_profile(self.run.root, profile_of(entries))
        volumes = cfg.volumetric  # a 3D baseline trains on random crops
        self.dataset = (VolumeDataset(self.cache, cfg.data, cfg.model.patch_size, self.train_ids) if volumes
                        else SliceDataset(self.cache, cfg.data, self.train_ids,
                                          return_mask=cfg.loss_region == "mask"))
        if len(self.dataset) < cfg.train.batch_size:
            kind = "crops" if volumes else "slices"
            raise MddoseError(f"only {len(self.dataset)} training {kind} for batch size {cfg.train.batch_size}",
                              cache_dir)

    def _setup_model(self, resume: bool, init_from: Path | None) -> None:
        cfg, last = self.cfg, self.run.last
        self.model = build_model(cfg.model).to(self.dev)
        if init_from is not None:  # a warm start: new inputs join with zero weights, so it starts as the old one
            widened = load_widened(self.model, warm_start_weights(init_from))
            log.info("warm start from %s (step %d)%s", init_from, self.lineage["step"],
                     f"; zero-initialised new inputs of {', '.join(widened)}" if widened else "")
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "pos": 0, "history": [], "validation": [],
                                      "best": None, "train_ids": self.train_ids, "val_ids": self.val_ids,
                                      "seconds": 0.0, "input_voxel_mm": self.input_voxel}
        if self.lineage is not None:  # steps and seconds go on from the weights' own
            self.state.update(self.lineage)
        if resume:
            load_weights(self.model, last / "model.safetensors")
            load_weights(self.ema, last / "ema.safetensors")
            self.state.update(load_trainer_state(last, self.optimizer))
            self.state.pop("optimizer", None)
            if self.world > 1:  # ranks draw different augmentations; only rank 0's RNG state was saved
                torch.manual_seed(cfg.train.seed + self.rank + 7919 * self.state["step"])
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        diffusion = cfg.objective == "diffusion"
        self.loss_fn = training_loss(cfg)
        where = " inside the mask" if cfg.loss_region == "mask" else ""
        self.curve_labels = (f"Training: {cfg.model.name}",
                             f"diffusion loss ({cfg.diffusion.loss.upper()}{where})" if diffusion else f"{cfg.model.loss} loss{where}")
        if self.rank == 0:
            write_json(self.run.config, cfg.to_dict())
            log.info("training %s parameters on %s (%d slices, %d validation patients, world %d) from step %d: "
                     "lr %.2e, %s to step %d", f"{count_parameters(self.model):,}", self.dev, len(self.dataset),
                     len(self.val_ids), self.world, self.state["step"], lr_at(self.state["step"], cfg),
                     cfg.train.lr_schedule, cfg.train.decay_steps)

    def step(self) -> None:
        """One optimisation step on the next batch (this rank's share of it), then the EMA."""
        cfg, state, started = self.cfg, self.state, time.perf_counter()
        step = state["step"]
        idx, state["epoch"], state["pos"] = batch_indices(
            len(self.dataset), cfg.train.batch_size, cfg.train.seed, state["epoch"], state["pos"]
        )
        items = [self.dataset[i] for i in idx[self.rank::self.world]]
        cond, dose = (torch.stack([item[k] for item in items]).to(self.dev) for k in (0, 1))
        mask = torch.stack([item[2] for item in items]).to(self.dev) if len(items[0]) > 2 else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_fn(self.net, dose, cond, mask=mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        ema_update(self.ema, self.model, step, cfg.train.ema_decay)
        state["step"] = step + 1
        self.running.append(float(loss.detach()))
        self.step_times.append(time.perf_counter() - started)
        if self.tuner is not None:
            self.tuner.step_done(self.step_times[-1])

    def log(self) -> float | None:
        """Every ``log_every`` steps: the mean loss since the last log into the history (returned)."""
        if self.state["step"] % self.cfg.train.log_every or self.rank:
            return None
        mean = float(np.mean(self.running))
        self.state["history"].append({"step": self.state["step"], "loss": mean,
                                      "lr": lr_at(self.state["step"] - 1, self.cfg)})
        self.running = []
        return mean

    def validate(self) -> None:
        """Score the EMA on the held-out patients; a better score becomes ``checkpoints/best``."""
        cfg, state = self.cfg, self.state
        score = validate(self.ema, cfg, self.cache, self.val_ids, self.dev)
        state["validation"].append({"step": state["step"], "dose_score": score})
        log.info("step %d: validation dose score %.3f Gy (%s, %d steps, %d patients)",
                 state["step"], score, cfg.train.val_sampler, cfg.train.val_steps, len(self.val_ids))
        if state["best"] is None or score < state["best"]["dose_score"]:
            state["best"] = {"step": state["step"], "dose_score": score}
            self.save("best")

    def save(self, name: str = "last", seconds: float | None = None) -> None:
        """A checkpoint folder (``last`` also refreshes the loss curve); ``seconds``: training time so far."""
        if seconds is not None:
            self.state["seconds"] = seconds
        save_checkpoint(self.run.checkpoint(name), self.cfg.to_dict(), self.model, self.ema, self.optimizer,
                        dict(self.state))
        if name == "last":
            plot_history(self.state, self.run.loss_plot, *self.curve_labels)

    def finish(self, seconds: float, warning: str | None) -> None:
        """Validate the final weights if not yet done, save them and write ``history.json`` (rank 0 only)."""
        state = self.state
        if warning:
            log.warning("%s", warning)
            state.setdefault("warnings", []).append({"step": state["step"], "warning": warning})
        validated = state["validation"] and state["validation"][-1]["step"] == state["step"]
        if self.val_ids and not validated:
            self.validate()
        self.save("last", seconds)
        write_json(self.run.history, {k: state.get(k, []) for k in ("history", "validation", "best", "seconds",
                                                                       "warnings")})


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
    decay_steps: int | None = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run; stops at ``max_steps`` total steps or after ``minutes`` of this invocation.

    ``decay_steps``: a new end for the learning-rate schedule (:func:`~mddose.runs.run_config.new_horizon`),
    kept in the run's config. ``init_from``: a checkpoint or shipped-weights folder whose (EMA) weights start a
    new run, with a fresh optimizer, a new warm-up and its steps and seconds counted on
    (:func:`~mddose.runs.run_config.warm_start_config`); ``config`` (default: the weights' own) may add input
    channels, which join with zero weights. ``planned_steps``: the steps this invocation is expected to make (the demo's
    plan); far fewer, or steps far slower than the run's best, end in a warning (terminal, history.json, the
    result's ``warning``).

    The run folder is claimed (:func:`~mddose.ownership.claim`, resumable): a folder holding anything else is
    refused, and so is one another process is training into.
    """
    if max_steps is not None and max_steps < 1:
        raise MddoseError(f"--max-steps must be at least 1, not {max_steps}")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise MddoseError(f"--minutes must be a positive number of minutes, not {minutes}")
    inputs = [cache_dir, init_from]
    owner = (claim(run_dir, "mddose train", inputs, resume=True) if int(os.environ.get("RANK", "0")) == 0
             else contextlib.nullcontext(Path(run_dir)))  # under torchrun, rank 0 writes the run folder
    with owner as folder:
        t = Trainer(cache_dir, folder, config, resume, device, decay_steps,
                    None if init_from is None else Path(init_from))
        return _loop(t, max_steps, minutes, progress, planned_steps)


def _loop(t: Trainer, max_steps: int | None, minutes: float | None, progress: bool,
          planned_steps: int | None) -> dict[str, Any]:
    """Train until the step or time budget is spent, then finish (see :func:`train`)."""
    cfg, state = t.cfg, t.state
    stop_step = max_steps if max_steps is not None else (None if minutes is not None else cfg.train.max_steps)
    deadline = time.monotonic() + minutes * 60 if minutes is not None else None
    start = last_save = time.monotonic()
    seconds_before, first_step = state["seconds"], state["step"]
    if planned_steps is None and minutes is not None and max_steps is not None:
        planned_steps = max_steps - first_step

    # the loop: step, log, validate, save
    bar = tqdm(total=stop_step, initial=first_step, desc="train", unit="step", disable=not progress or t.rank > 0)
    while (stop_step is None or state["step"] < stop_step) and (deadline is None or time.monotonic() < deadline):
        t.step()
        bar.update(1)
        if (loss := t.log()) is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
        if t.rank == 0 and t.val_ids and cfg.train.val_every > 0 and state["step"] % cfg.train.val_every == 0:
            t.validate()
        if t.rank == 0 and time.monotonic() - last_save > cfg.train.checkpoint_every_s:
            t.save("last", seconds_before + time.monotonic() - start)
            last_save = time.monotonic()
    bar.close()

    # the end: threads back, a warning if far too slow, final validation and checkpoint
    if t.tuner is not None:
        t.tuner.restore()
    warning = slowdown(t.step_times, planned_steps, state["step"] - first_step)
    if t.rank == 0:
        t.finish(seconds_before + time.monotonic() - start, warning)
    if t.world > 1:
        dist.barrier()
    threads = (t.tuner.chosen if t.tuner is not None else torch.get_num_threads()) if t.dev.type == "cpu" else None
    return {"step": state["step"], "seconds": state["seconds"], "best": state["best"], "warning": warning,
            "threads": threads, "last_loss": state["history"][-1]["loss"] if state["history"] else None}
