"""The training loss of the Table I baselines that map the anatomy straight to a dose (C3D-like, HD-UNet-like):
the counterpart of :class:`mddose.diffusion.process.DiffusionLoss` for deterministic networks.

A voxel-wise loss (MSE or L1, the config's ``loss``) between every supervised output and the dose scaled to
[0, 1], summed over outputs (the cascade supervises its coarse and refined doses), over the whole image or, with
the config's ``loss_region="mask"``, inside the possible-dose mask only. Their prediction is
:mod:`mddose.inference.regression`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mddose.diffusion.process import LOSSES, region_loss
from mddose.models.baselines import BaselineConfig


class RegressionLoss:
    """Voxel-wise loss of every output of a baseline against the dose; same call as the diffusion loss."""

    def __init__(self, config: BaselineConfig) -> None:
        self.loss = LOSSES[config.loss]
        self.region = config.loss_region

    def __call__(self, model: torch.nn.Module, dose01: Tensor, cond: Tensor, generator: torch.Generator | None = None,
                 mask: Tensor | None = None) -> Tensor:
        """Loss for one batch: ``dose01`` (B, 1, H, W) in [0, 1], ``cond`` (B, C, H, W); over the whole image, as
        the baselines' papers train, or inside ``mask`` (B, 1, H, W) with ``loss_region="mask"``."""
        if self.region == "mask" and mask is None:
            raise ValueError("loss region 'mask' needs the possible-dose mask of the batch")
        region = mask if self.region == "mask" else None
        return sum(region_loss(self.loss, out.float(), dose01.float(), region) for out in model(cond, all_outputs=True))
