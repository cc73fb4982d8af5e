"""The deterministic baselines (C3D-like cascade, HD-UNet-like dense U-Net): shapes, gradients, configs."""

from __future__ import annotations

import pytest
import torch

from mddose.models.baselines import BaselineConfig, CascadeUNet, DenseUNet, baseline_config
from mddose.models.build import build_model, count_parameters, model_config_from_dict
from mddose.models.config import preset


@pytest.mark.parametrize(("arch", "cls", "outputs"), [("cascade", CascadeUNet, 2), ("dense", DenseUNet, 1)])
@pytest.mark.parametrize("spatial", [(32, 32), (64, 64), (16, 16, 8), (32, 16, 24)])
def test_shapes_and_outputs(arch: str, cls: type, outputs: int, spatial: tuple[int, ...]) -> None:
    cfg = BaselineConfig(arch=arch, cond_channels=5, image_size=32, widths=(4, 8, 16), depth=2, growth=4,
                         dims=len(spatial), patch_size=(16, 16, 8))
    model = build_model(cfg, seed=0)
    assert isinstance(model, cls)
    cond = torch.randn(2, 5, *spatial)
    assert model(cond).shape == (2, 1, *spatial)
    all_out = model(cond, all_outputs=True)
    assert len(all_out) == outputs and all(o.shape == (2, 1, *spatial) for o in all_out)
    torch.testing.assert_close(all_out[-1], model(cond))


@pytest.mark.parametrize("arch", ["cascade", "dense"])
def test_every_parameter_gets_a_gradient(arch: str) -> None:
    model = build_model(BaselineConfig(arch=arch, cond_channels=3, image_size=16, widths=(4, 8), growth=4), seed=1)
    sum(o.square().mean() for o in model(torch.randn(2, 3, 16, 16), all_outputs=True)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_the_cascade_refines_from_the_coarse_dose() -> None:
    model = build_model(BaselineConfig(arch="cascade", cond_channels=3, image_size=16, widths=(4, 8)), seed=2)
    cond = torch.randn(1, 3, 16, 16)
    coarse, fine = model(cond, all_outputs=True)
    torch.testing.assert_close(fine, model.refine(torch.cat([cond, coarse], dim=1)))


def test_sized_like_an_md_dose_preset_and_json_round_trip() -> None:
    paper = preset("paper")
    for arch in ("cascade", "dense"):
        cfg = baseline_config(arch, paper)
        assert cfg.widths == paper.enc_widths and cfg.image_size == 128 and cfg.cond_channels == paper.cond_channels
        assert model_config_from_dict(cfg.to_dict()) == cfg
    assert model_config_from_dict(paper.to_dict()) == paper
    # parameters measured once: C3D-like 8.68 M, HD-UNet-like 4.62 M at the paper widths (MD-Dose: 28.5 M)
    assert count_parameters(build_model(baseline_config("cascade", paper))) == 8_675_474
    assert count_parameters(build_model(baseline_config("dense", paper))) == 4_621_873


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"arch": "resnet"}, "arch"), ({"loss": "huber"}, "loss"), ({"image_size": 18}, "multiple of 4"),
     ({"widths": (8,)}, "at least 2"), ({"dims": 4}, "dims 4"), ({"dims": 3, "patch_size": (32, 30, 8)}, "patch_size")],
)
def test_invalid_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BaselineConfig(widths=(8, 16, 32), image_size=32).replace(**changes)
