"""The deterministic objective: the voxel-wise loss over every output, one clamped and masked forward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mddose.models.baselines import BaselineConfig
from mddose.models.config import build_model
from mddose.regression import RegressionLoss, regress


def test_loss_sums_every_supervised_output() -> None:
    cfg = BaselineConfig(arch="cascade", cond_channels=3, image_size=16, widths=(4, 8), loss="l1")
    model = build_model(cfg, seed=0)
    cond, dose = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    coarse, fine = model(cond, all_outputs=True)
    expected = F.l1_loss(coarse, dose) + F.l1_loss(fine, dose)
    torch.testing.assert_close(RegressionLoss(cfg)(model, dose, cond), expected)
    mse = RegressionLoss(cfg.replace(loss="mse"))(model, dose, cond)
    torch.testing.assert_close(mse, F.mse_loss(coarse, dose) + F.mse_loss(fine, dose))


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
