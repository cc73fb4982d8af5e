"""The deterministic objective of the Table I baselines (C3D-like, HD-UNet-like): the counterpart of
:mod:`mddose.diffusion` for networks that map the anatomy straight to a dose.

Training: a voxel-wise loss (MSE or L1, the config's ``loss``) between every supervised output and the dose
scaled to [0, 1], summed over outputs (the cascade supervises its coarse and refined doses). Prediction: one
forward pass, clamped to [0, 1] and 0 outside the possible-dose mask — the same post-processing MD-Dose's
sampler applies to its x̂_0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mddose.models.baselines import BaselineConfig


class RegressionLoss:
    """Voxel-wise loss of every output of a baseline against the dose; same call as the diffusion loss."""

    def __init__(self, config: BaselineConfig) -> None:
        self.loss = F.mse_loss if config.loss == "mse" else F.l1_loss

    def __call__(self, model: torch.nn.Module, dose01: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Loss for one batch: ``dose01`` (B, 1, H, W) in [0, 1], ``cond`` (B, C, H, W)."""
        outputs = model(cond, all_outputs=True)
        return sum(self.loss(out.float(), dose01.float()) for out in outputs)


@torch.no_grad()
def regress(model: torch.nn.Module, cond: Tensor, mask: Tensor | None = None) -> Tensor:
    """One forward pass: ``cond`` (B, C, H, W) → normalised dose (B, 1, H, W) in [0, 1], 0 outside ``mask``."""
    dose = model(cond).clamp(0.0, 1.0)
    return dose if mask is None else dose * (mask > 0.5)
