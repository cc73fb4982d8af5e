"""The 3D refinement stage: a light 3D U-Net over the stacked slice predictions of a 2D model.

A 2D (or 2.5D) network predicts every axial slice on its own, so neighbouring slices carry independent errors and
the targets' upper and lower edges are only guessed from a few slices. C3D (the OpenKBP challenge's winner)
answers with a cascade: a second network refines the first one's dose. Here the second stage is 3D and reads the
first stage's dose stacked over the whole patient, beside the same structures (CT, target levels, OARs, beam
prior), and adds a correction to it. Its last layer starts at zero, so an untrained refiner returns the first
stage's dose unchanged. It replaces the fixed smoothing across slices (:mod:`mddose.inference.smoothing`);
whether it beats that smoothing is measured in docs/experiments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mddose.models.baselines import PlainUNet


@dataclass
class RefinerConfig:
    """The refiner's network. ``cond_channels``: the structure channels it reads (its first stage's, without slice
    context); the first stage's dose is one more. ``patch``: training crop and sliding window (X, Y, Z voxels)."""

    cond_channels: int = 10
    widths: tuple[int, ...] = (8, 16, 32, 64)  # light: one conv per level, a 64³ patch reaches across it
    depth: int = 1
    patch: tuple[int, int, int] = (64, 64, 64)

    def __post_init__(self) -> None:
        self.widths, self.patch = tuple(self.widths), tuple(self.patch)  # type: ignore[assignment]
        if self.cond_channels < 1 or self.depth < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"a refiner needs channels, widths and depth of at least 1, not {self}")
        step = self.size_step
        if len(self.patch) != 3 or any(p < step or p % step for p in self.patch):
            raise ValueError(f"the refiner's patch is 3 sizes, each a multiple of {step} (its {len(self.widths)} "
                             f"levels halve it), not {self.patch}")

    @property
    def size_step(self) -> int:
        """What every side of its input must be a multiple of: its levels halve it."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Refiner(nn.Module):
    """The first stage's dose plus a learned 3D correction; the correction's last layer starts at zero."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.unet = PlainUNet(cfg.cond_channels + 1, 1, cfg.widths, cfg.depth, dims=3)
        nn.init.zeros_(self.unet.head.weight)
        nn.init.zeros_(self.unet.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C + 1, X, Y, Z), the structures then the first stage's normalised dose -> (B, 1, X, Y, Z)."""
        return x[:, -1:] + self.unet(x)


def first_stage_input(structures: Tensor, dose01: Tensor) -> Tensor:
    """The refiner's input: the structure channels (C, …) and the first stage's normalised dose (1, …) stacked."""
    return torch.cat([structures, dose01.to(structures.dtype)], dim=0)
