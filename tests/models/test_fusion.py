"""The DoseDiff-like network: two convolutional encoders (condition, noisy dose) fused at every scale by windowed
attention; MD-Dose's additive fusion stays parameter-free, so its weights and configs load as before."""

from __future__ import annotations

import json

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import ModelConfig, build_model, preset
from mddose.models.blocks import ConvStack
from mddose.models.fusion import AddFusion, TransformerFusion


def _dosediff(**changes: object) -> ModelConfig:
    return preset("tiny", denoiser_block="conv", encoder_block="conv", fusion="transformer", cond_channels=11,
                  drop_path=0.0, **changes)


def _batch(size: int, cond_channels: int = 11) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 1, size, size, generator=g), torch.randint(0, 1000, (2,), generator=g),
            torch.randn(2, cond_channels, size, size, generator=g))


def test_two_conv_encoders_fused_at_every_scale() -> None:
    model = build_model(_dosediff(), seed=0)
    assert all(isinstance(s.body, ConvStack) for s in (*model.down, *model.structure_encoder.stages))
    assert len(model.fuse) == model.config.levels and all(isinstance(f, TransformerFusion) for f in model.fuse)
    x_t, t, cond = _batch(32)
    out = model(x_t, t, cond)
    assert out.shape == x_t.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    model.eval()
    with torch.no_grad():  # a sampler encodes the condition once per slice
        assert torch.equal(model(x_t, t, cond), model(x_t, t, cond, structure=model.encode_structures(cond)))
        assert not torch.allclose(model(x_t, t, cond), model(x_t, t, cond.flip(-1)))


def test_the_coarsest_fusion_attends_across_the_whole_map() -> None:
    """At 128² the deepest level is 8², one window: a change in one corner reaches the opposite one."""
    fusion = TransformerFusion(16, preset("tiny", drop_path=0.0)).eval()
    dose, cond = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    other = cond.clone()
    other[..., 0, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(fusion(dose, cond)[..., 7, 7], fusion(dose, other)[..., 7, 7])


def test_md_doses_additive_fusion_has_no_weights() -> None:
    model = build_model(preset("tiny"), seed=0)
    assert all(isinstance(f, AddFusion) for f in model.fuse)
    assert not any(name.startswith("fuse.") for name in model.state_dict())
    older = {k: v for k, v in preset("tiny").to_dict().items() if k != "fusion"}  # a config.json from before it
    assert ModelConfig.from_dict(older).fusion == "add"


def test_fusion_settings_are_checked() -> None:
    assert ModelConfig.from_dict(json.loads(json.dumps(_dosediff().to_dict()))) == _dosediff()
    with pytest.raises(ValueError, match=r"fusion 'concat' is not one of \('add', 'transformer'\)"):
        preset("tiny", fusion="concat")
    with pytest.raises(ValueError, match="encoder_block must not be 'none'"):
        preset("tiny", fusion="transformer", encoder_block="none")
    with pytest.raises(MddoseError, match="fusion"):
        ModelConfig.from_dict(preset("tiny").to_dict() | {"fusion": "cross"})


def test_bf16_autocast_keeps_the_output_in_float32() -> None:
    model = build_model(_dosediff(), seed=0).eval()
    x_t, t, cond = _batch(32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_t, t, cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
