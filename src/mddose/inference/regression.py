"""Prediction by the Table I baselines that map the anatomy straight to a dose (C3D-like, HD-UNet-like): the
counterpart of :mod:`mddose.diffusion.sampling` for deterministic networks (their training loss is
:mod:`mddose.training.regression_loss`'s). One forward pass, clamped to [0, 1] and 0 outside the possible-dose
mask — the same post-processing MD-Dose's sampler applies to its x̂_0. A 3D baseline predicts the whole volume by
overlapping sliding windows of its ``patch_size`` (half-patch steps), blended with Gaussian weights as nnU-Net does,
so that the seams of the windows do not show.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mddose.data.cache import CachedPatient
from mddose.data.dataset import CT_CLIP_HU, DataConfig
from mddose.data.volume import mask_volume, structure_volume
from mddose.models.baselines import BaselineConfig


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
