"""The forward process and the training objective (paper Sec. II-A, eqs. 1–3).

MD-Dose is trained as a DDPM: ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε`` with the paper's linear β from 1e-4
to 0.02 over T = 1000 steps; the network predicts ε (default), x_0 or v, and the loss is the mean squared
error against that target (eq. 3 with λ(t) = 1, the "simple" DDPM loss), or its mean absolute error with
``loss="l1"`` (the OpenKBP dose score is a mean absolute error; an x_0-predicting network trained with L1 aims
at the conditional median rather than the mean). The schedule itself is diffusers'
:class:`~diffusers.DDPMScheduler` (``add_noise``, ``get_velocity``), the same object the samplers derive from.

Dose scaling: the dataset gives dose / ``dose_norm_gy`` ∈ [0, 1]. ``data_range="symmetric"`` (default) maps it
to [-1, 1] as DDPM does for images, which uses the noise's full range; ``"unit"`` keeps [0, 1] as the
published MD-Dose code does. Either way x_0 is clamped to the range while sampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mddose.typecheck import check_fields

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

PredictionType = Literal["epsilon", "sample", "v_prediction"]
SamplerName = Literal["ddpm", "ddim", "dpm++"]
LossName = Literal["mse", "l1"]
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


def region_loss(loss: Callable[[Tensor, Tensor], Tensor], pred: Tensor, target: Tensor,
                mask: Tensor | None = None) -> Tensor:
    """``loss`` of ``pred`` against ``target`` over the whole image, or only where ``mask`` (B, 1, …) is set; a
    batch whose mask is empty counts 0 (with a gradient, so every rank of a DDP step still reduces)."""
    if mask is None:
        return loss(pred, target)
    inside = (mask > 0.5).expand_as(pred)
    return loss(pred[inside], target[inside]) if inside.any() else pred.sum() * 0.0


@dataclass
class DiffusionConfig:
    """The diffusion process. Defaults are the paper's (T = 1000, linear β 1e-4 → 0.02, ε-prediction)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: PredictionType = "epsilon"  # "sample" = x0-prediction, "v_prediction" = v
    data_range: Literal["symmetric", "unit"] = "symmetric"  # x0 in [-1, 1] or in [0, 1] (published code)
    # how this model is sampled unless a command says otherwise (measured per model: docs/experiments)
    sampler: SamplerName = "dpm++"
    sampler_steps: int = 10
    loss: LossName = "mse"  # eq. 3's squared error, or the absolute error
    # where a few-step sampler puts its steps: each diffusers scheduler's own default (DDIM and DDPM with 3
    # steps: t = 666, 333, 0) or "trailing" (t = 999, 666, 332: the first step sees the pure noise it starts
    # from, as Lin et al. 2024 recommend)
    timestep_spacing: Literal["default", "trailing"] = "default"
    # share of each training batch drawn at t = T − 1 (pure noise) instead of uniformly: the one step a
    # one-step trailing sampler takes, where the network is a regressor of the dose from the anatomy
    final_t_fraction: float = 0.0
    # where the loss is counted: the whole image (eq. 3), or only the possible-dose mask, the voxels the OpenKBP
    # dose score averages over and the only ones a prediction keeps (it is 0 Gy outside)
    loss_region: Literal["image", "mask"] = "image"

    def __post_init__(self) -> None:
        check_fields(self)  # the allowed values are the annotations' (Literal): an error lists them
        if not 0.0 <= self.final_t_fraction < 1.0:
            raise ValueError(f"final_t_fraction must be in [0, 1), not {self.final_t_fraction}")

    @property
    def x0_bounds(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.data_range == "symmetric" else (0.0, 1.0)

    def to_model_space(self, dose01: Tensor) -> Tensor:
        """Normalised dose in [0, 1] → the diffusion's x_0."""
        return dose01 * 2.0 - 1.0 if self.data_range == "symmetric" else dose01

    def to_dose(self, x0: Tensor) -> Tensor:
        """The diffusion's x_0 → normalised dose in [0, 1]."""
        return (x0 + 1.0) / 2.0 if self.data_range == "symmetric" else x0

    def sampling(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The sampler and step count to use: the ones asked for, else this model's own."""
        return sampler or self.sampler, steps or self.sampler_steps

    def scheduler_kwargs(self) -> dict[str, Any]:
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
        )

    def train_scheduler(self) -> DDPMScheduler:
        from diffusers import DDPMScheduler  # imported on use: diffusers takes seconds to import (torch._dynamo)

        return DDPMScheduler(**self.scheduler_kwargs(), clip_sample=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        return cls(**d)


class DiffusionLoss:
    """Draws t and ε, noises x_0 and scores the network's prediction with eq. 3's MSE (or the config's L1)."""

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.scheduler = config.train_scheduler()
        self.loss = LOSSES[config.loss]

    def __call__(self, model: torch.nn.Module, dose01: Tensor, cond: Tensor, generator: torch.Generator | None = None,
                 mask: Tensor | None = None) -> Tensor:
        """Loss for one batch: ``dose01`` (B, 1, H, W) in [0, 1], ``cond`` (B, C, H, W), ``mask`` (B, 1, H, W)
        the possible-dose mask (needed when the config counts the loss inside it)."""
        if self.config.loss_region == "mask" and mask is None:
            raise ValueError("loss_region='mask' needs the possible-dose mask of the batch")
        x0 = self.config.to_model_space(dose01)
        b = x0.shape[0]
        last = self.config.num_train_timesteps - 1
        t = torch.randint(0, last + 1, (b,), device=x0.device, generator=generator)
        if self.config.final_t_fraction > 0:
            final = torch.rand(b, device=x0.device, generator=generator) < self.config.final_t_fraction
            t = torch.where(final, torch.full_like(t, last), t)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.scheduler.add_noise(x0, noise, t)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = x0
        else:
            target = self.scheduler.get_velocity(x0, noise, t)
        region = mask if self.config.loss_region == "mask" else None
        return region_loss(self.loss, model(x_t, t, cond).float(), target.float(), region)
