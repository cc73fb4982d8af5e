"""The baselines' prediction: one clamped and masked forward pass, sliding windows over a volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mddose.inference.regression import regress, regress_volume, window_starts
from mddose.models.baselines import BaselineConfig
from mddose.models.build import build_model


def test_regress_clamps_and_masks() -> None:
    class Constant(torch.nn.Module):
        def forward(self, cond: torch.Tensor) -> torch.Tensor:
            return cond[:, :1] * 3.0  # values far outside [0, 1] on both sides

    cond = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    dose = regress(Constant(), cond, mask)
    assert dose.min() >= 0 and dose.max() <= 1 and dose.max() > 0
    assert torch.all(dose[mask == 0] == 0)


class _FirstChannel(torch.nn.Module):
    """Translation-equivariant stand-in: outputs its first input channel, so blending must reproduce it exactly."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, 1:2]


def test_window_starts_cover_every_voxel() -> None:
    assert window_starts(64, 64) == [0] and window_starts(20, 32) == [0]
    assert window_starts(128, 64) == [0, 32, 64] and window_starts(100, 64) == [0, 32, 36]
    for length, patch in ((128, 48), (77, 16), (33, 32)):
        starts = window_starts(length, patch)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all() and starts[-1] + patch == length


@pytest.mark.parametrize("shape", [(40, 36, 20), (12, 40, 8)])
def test_sliding_windows_blend_to_the_exact_volume(shape: tuple[int, int, int]) -> None:
    cond = torch.rand(3, *shape)
    mask = torch.ones(1, *shape)
    mask[..., :2] = 0
    out = regress_volume(_FirstChannel(), cond, mask, (16, 16, 16), ct_channels=1, batch_size=3)
    assert out.shape == (1, *shape)
    torch.testing.assert_close(out[mask > 0], cond[1:2][mask > 0])
    assert torch.all(out[mask == 0] == 0)
