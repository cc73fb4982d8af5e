"""The baselines' training loss: the voxel-wise loss over every output, over the image or inside the mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mddose.models.baselines import BaselineConfig
from mddose.models.build import build_model
from mddose.training.regression_loss import RegressionLoss


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
