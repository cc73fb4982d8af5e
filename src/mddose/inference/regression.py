"""The deterministic objective of the Table I baselines (C3D-like, HD-UNet-like): the counterpart of
:mod:`mddose.diffusion` for networks that map the anatomy straight to a dose.

Training: a voxel-wise loss (MSE or L1, the config's ``loss``) between every supervised output and the dose
scaled to [0, 1], summed over outputs (the cascade supervises its coarse and refined doses), over the whole image
or, with the config's ``loss_region="mask"``, inside the possible-dose mask only. Prediction: one
forward pass, clamped to [0, 1] and 0 outside the possible-dose mask — the same post-processing MD-Dose's
sampler applies to its x̂_0. A 3D baseline predicts the whole volume by overlapping sliding windows of its
``patch_size`` (half-patch steps), blended with Gaussian weights as nnU-Net does, so that the seams of the
windows do not show.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mddose.data.cache import CachedPatient
from mddose.data.dataset import CT_CLIP_HU, DataConfig
from mddose.data.volume import mask_volume, structure_volume
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


@torch.no_grad()
def regress(model: torch.nn.Module, cond: Tensor, mask: Tensor | None = None) -> Tensor:
    """One forward pass: ``cond`` (B, C, H, W) → normalised dose (B, 1, H, W) in [0, 1], 0 outside ``mask``."""
    dose = model(cond).clamp(0.0, 1.0)
    return dose if mask is None else dose * (mask > 0.5)


def window_starts(length: int, patch: int) -> list[int]:
    """Window origins along one axis: half-patch steps, the last window flush with the end."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch, max(1, patch // 2)))
    return starts + [length - patch]


def _gaussian(patch: tuple[int, ...], device: torch.device) -> Tensor:
    """Separable Gaussian window (σ = patch / 8 per axis, as nnU-Net), floored so edges still count."""
    w = torch.ones((), device=device)
    for p in patch:
        x = torch.arange(p, device=device, dtype=torch.float32) - (p - 1) / 2
        w = w[..., None] * torch.exp(-0.5 * (x / (p / 8)) ** 2)
    return (w / w.max()).clamp_min(1e-3)


@torch.no_grad()
def regress_volume(model: torch.nn.Module, cond: Tensor, mask: Tensor, patch: tuple[int, int, int],
                   ct_channels: int, batch_size: int = 4) -> Tensor:
    """Whole-volume prediction: ``cond`` (C, X, Y, Z) → normalised dose (1, X, Y, Z) in [0, 1], 0 outside ``mask``.

    A volume smaller than the patch along an axis is padded (CT with air, everything else with 0) and cropped back.
    """
    shape = cond.shape[1:]
    pad = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pad):
        fill = torch.zeros(cond.shape[0], 1, 1, 1, device=cond.device, dtype=cond.dtype)
        fill[:ct_channels] = CT_CLIP_HU[0] / 1000.0
        padded = fill.expand(-1, *[s + q for s, q in zip(shape, pad)]).clone()
        padded[:, :shape[0], :shape[1], :shape[2]] = cond
        cond = padded
    full = cond.shape[1:]
    out = torch.zeros(full, device=cond.device)
    weight = torch.zeros(full, device=cond.device)
    window = _gaussian(patch, cond.device)
    origins = [(x, y, z) for x in window_starts(full[0], patch[0]) for y in window_starts(full[1], patch[1])
               for z in window_starts(full[2], patch[2])]
    for i in range(0, len(origins), batch_size):
        chunk = origins[i:i + batch_size]
        boxes = [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in chunk]
        pred = model(torch.stack([cond[(slice(None), *box)] for box in boxes])).float()
        for box, p in zip(boxes, pred):
            out[box] += p[0] * window
            weight[box] += window
    dose = (out / weight)[: shape[0], : shape[1], : shape[2]][None].clamp(0.0, 1.0)
    return dose * (mask > 0.5)


def predict_volume_3d(model: torch.nn.Module, cfg: BaselineConfig, data: DataConfig, vol: CachedPatient,
                      device: torch.device) -> np.ndarray:
    """One patient with a 3D baseline: dose in Gy on the full (X, Y, Z) grid, 0 outside the possible-dose mask."""
    cond = torch.from_numpy(structure_volume(vol, data)).to(device)
    mask = torch.from_numpy(mask_volume(vol)).to(device)
    dose = regress_volume(model, cond, mask, cfg.patch_size, data.n_ct_channels)
    return dose[0].cpu().numpy() * data.dose_norm_gy
