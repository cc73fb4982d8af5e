"""Sampling MD-Dose (the reverse process of paper Fig. 2a) with diffusers' schedulers.

Samplers: ``ddpm`` (ancestral, posterior variance, all 1000 steps as in the paper), ``ddim`` (η = 0) and
``dpm++`` (DPM-Solver++ 2M, the default: ~10–20 steps). The loop is written out, diffusers-style::

    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(clamp_x0(net(x, t, c), x, t), t, x).prev_sample

``clamp_x0`` is the one thing we add: it rewrites the network's output so that the x_0 it implies is clamped to
the valid dose range and equals 0 Gy outside the possible-dose mask, then hands the scheduler the ε (or x_0,
v) consistent with that x_0. This is exactly "clamp x_0" for DDPM and DDIM and the data-prediction clamp of
DPM-Solver++, for every parameterisation, without touching the schedulers.

Notation map: ``alpha_bar`` = ᾱ_t, ``x0`` = x̂_0 (diffusers' ``pred_original_sample``), ``eps`` = ε̂.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mddose.diffusion.process import DiffusionConfig, SamplerName
from mddose.errors import MddoseError

SAMPLERS: tuple[str, ...] = get_args(SamplerName)


class SamplingError(MddoseError, ValueError):
    """An unknown sampler or a step count outside 1..T: a user's error (one line) and a bad argument."""


def check_sampling(config: DiffusionConfig, sampler: str, steps: int) -> None:
    """Refuse an unknown sampler or a step count outside 1..T with one clear line, before any work starts."""
    if sampler not in SAMPLERS:
        raise SamplingError(f"unknown sampler {sampler!r}: choose {', '.join(SAMPLERS)}")
    if not 1 <= steps <= config.num_train_timesteps:
        raise SamplingError(f"sampler steps must be in 1..{config.num_train_timesteps}, not {steps}")


def make_scheduler(config: DiffusionConfig, sampler: str, steps: int):
    """A fresh diffusers scheduler for ``sampler`` with ``steps`` denoising steps set."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # on use, as process.py

    check_sampling(config, sampler, steps)
    kwargs = config.scheduler_kwargs()
    if config.timestep_spacing != "default":
        kwargs["timestep_spacing"] = config.timestep_spacing
    if sampler == "ddpm":
        sched = DDPMScheduler(**kwargs, variance_type="fixed_small", clip_sample=False)
    elif sampler == "ddim":
        sched = DDIMScheduler(**kwargs, clip_sample=False, set_alpha_to_one=True)
    else:  # dpm++
        sched = DPMSolverMultistepScheduler(**kwargs, algorithm_type="dpmsolver++", solver_order=2)
    sched.set_timesteps(steps)
    return sched


def clamp_x0(output: Tensor, x_t: Tensor, t: int, alpha_bar: Tensor, config: DiffusionConfig,
             mask: Tensor | None) -> Tensor:
    """Rewrite a network output so its x̂_0 lies in the dose range and is 0 Gy outside ``mask``."""
    a = alpha_bar[t].to(x_t.dtype)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    # 1. the x̂_0 the output implies
    if config.prediction_type == "epsilon":
        x0 = (x_t - sb * output) / sa
    elif config.prediction_type == "sample":
        x0 = output
    else:  # v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0  ⇒  x_0 = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v
        x0 = sa * x_t - sb * output
    # 2. clamp to the valid range; zero dose outside the possible-dose mask
    lo, hi = config.x0_bounds
    x0 = x0.clamp(lo, hi)
    if mask is not None:
        x0 = torch.where(mask > 0.5, x0, torch.full_like(x0, lo))
    # 3. back to the scheduler's parameterisation, consistent with x_t
    if config.prediction_type == "sample":
        return x0
    eps = (x_t - sa * x0) / sb
    return eps if config.prediction_type == "epsilon" else sa * eps - sb * x0


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    cond: Tensor,
    config: DiffusionConfig,
    mask: Tensor | None = None,
    sampler: str = "dpm++",
    steps: int = 20,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Draw one dose per condition: ``cond`` (B, C, H, W) → normalised dose (B, 1, H, W) in [0, 1].

    ``mask`` (B, 1, H, W) is the possible-dose mask; the result is 0 outside it. ``generator`` makes the
    draw reproducible (the start is a standard normal, not the published code's rescaled noise).
    """
    sched = make_scheduler(config, sampler, steps)
    b, _, h, w = cond.shape
    x = torch.randn((b, 1, h, w), generator=generator, device=cond.device, dtype=cond.dtype)
    alpha_bar = sched.alphas_cumprod.to(cond.device)
    encode = getattr(model, "encode_structures", None)  # the anatomy's features: once, not once per step
    extra = {"structure": encode(cond)} if encode is not None else {}
    for t in tqdm(sched.timesteps, desc=sampler, leave=False, disable=not progress):
        t_int = int(t)
        t_batch = torch.full((b,), t_int, device=cond.device, dtype=torch.long)
        out = clamp_x0(model(x, t_batch, cond, **extra), x, t_int, alpha_bar, config, mask)
        x = sched.step(out, t, x, generator=generator).prev_sample if sampler == "ddpm" else sched.step(out, t, x).prev_sample
    dose = config.to_dose(x.clamp(*config.x0_bounds))
    return dose if mask is None else dose * (mask > 0.5)


@torch.no_grad()
def draw_samples(
    model: torch.nn.Module,
    cond: Tensor,
    config: DiffusionConfig,
    mask: Tensor | None = None,
    samples: int = 1,
    **kwargs,
) -> Tensor:
    """K independent draws per condition, one after another from the same ``generator``: (K, B, 1, H, W)."""
    if samples < 1:
        raise ValueError("samples must be ≥ 1")
    return torch.stack([sample(model, cond, config, mask, **kwargs) for _ in range(samples)])


def mean_and_spread(draws: Tensor) -> tuple[Tensor, Tensor]:
    """The mean of K draws (K, B, ...) (the prediction) and their per-voxel standard deviation (0 for K = 1)."""
    std = draws.std(dim=0, unbiased=True) if len(draws) > 1 else torch.zeros_like(draws[0])
    return draws.mean(dim=0), std
