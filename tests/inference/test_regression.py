"""The deterministic objective: the voxel-wise loss over every output, one clamped and masked forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mddose.inference.regression import RegressionLoss, regress, regress_volume, window_starts
from mddose.models.baselines import BaselineConfig
from mddose.models.build import build_model


def test_loss_sums_every_supervised_output() -> None:
    cfg = BaselineConfig(arch="cascade", cond_channels=3, image_size=16, widths=(4, 8), loss="l1")
    model = build_model(cfg, seed=0)
    cond, dose = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    coarse, fine = model(cond, all_outputs=True)
    expected = F.l1_loss(coarse, dose) + F.l1_loss(fine, dose)
    torch.testing.assert_close(RegressionLoss(cfg)(model, dose, cond), expected)
    mse = RegressionLoss(cfg.replace(loss="mse"))(model, dose, cond)
    torch.testing.assert_close(mse, F.mse_loss(coarse, dose) + F.mse_loss(fine, dose))


def test_loss_inside_the_mask_counts_only_the_masked_voxels() -> None:
    cfg = BaselineConfig(arch="cascade", cond_channels=3, image_size=16, widths=(4, 8), loss="l1")
    model = build_model(cfg, seed=0)
    cond, dose = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:9] = 1
    coarse, fine = model(cond, all_outputs=True)
    inside = mask.bool()
    expected = F.l1_loss(coarse[inside], dose[inside]) + F.l1_loss(fine[inside], dose[inside])
    loss = RegressionLoss(cfg.replace(loss_region="mask"))
    torch.testing.assert_close(loss(model, dose, cond, mask=mask), expected)
    outside = dose + 5.0 * (1 - mask)  # what happens outside the mask does not count
    torch.testing.assert_close(loss(model, outside, cond, mask=mask), expected)
    empty = loss(model, dose, cond, mask=torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="possible-dose mask"):
        loss(model, dose, cond)
    with pytest.raises(ValueError, match="loss_region 'body'"):
        cfg.replace(loss_region="body")
    with pytest.raises(ValueError, match="volume patches carry no possible-dose mask"):
        cfg.replace(loss_region="mask", dims=3, patch_size=(16, 16, 16))


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
