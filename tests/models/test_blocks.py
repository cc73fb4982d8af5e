"""Residual-conv and Swin blocks: the Mamba block's interface, windows that do not fit, the shift mask."""

from __future__ import annotations

import pytest
import torch

from mddose.models.blocks import ResConvBlock, SwinBlock, _shift_mask
from mddose.models.config import preset
from mddose.models.layers import FourierTimeEmbedding, Upsample
from mddose.models.stage import Stage, make_stack


@pytest.mark.parametrize("size", [(8, 8), (12, 20), (3, 5)])
@pytest.mark.parametrize("shift", [False, True])
def test_swin_block_any_map_size(size: tuple[int, int], shift: bool) -> None:
    block = SwinBlock(16, heads=2, window=8, shift=shift, mlp_ratio=2.0, drop_path=0.0)
    x = torch.randn(2, 16, *size, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_swin_attention_stays_inside_windows() -> None:
    """Without shift, a pixel's attention output ignores pixels of other windows."""
    block = SwinBlock(16, heads=2, window=4, shift=False, mlp_ratio=2.0, drop_path=0.0)
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(block(x)[0, :, 0, 0].sum(), x)
    assert grad[0, :, :4, :4].abs().sum() > 0
    assert grad[0, :, 4:, :].abs().sum() == 0 and grad[0, :, :, 4:].abs().sum() == 0


def test_shift_mask_separates_rolled_regions() -> None:
    mask = _shift_mask(8, 8, 4, 2, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert torch.isinf(mask[-1]).any()  # the bottom-right window mixes regions


def test_res_conv_block_shape() -> None:
    x = torch.randn(2, 16, 10, 6)
    assert ResConvBlock(16)(x).shape == x.shape


@pytest.mark.parametrize("kind", ["mamba", "swin", "conv"])
def test_stacks_share_one_interface(kind: str) -> None:
    cfg = preset("tiny")
    x = torch.randn(1, 32, 8, 8)
    assert make_stack(kind, 32, 2, 8, cfg)(x).shape == x.shape
    stage = Stage(kind, 16, 32, 1, 2, 8, cfg, time=True)
    temb = torch.randn(1, cfg.time_embed_dim)
    assert stage(torch.randn(1, 16, 16, 16), temb).shape == (1, 32, 8, 8)


def test_upsample_and_time_embedding() -> None:
    assert Upsample(32)(torch.randn(1, 32, 4, 4)).shape == (1, 16, 8, 8)
    emb = FourierTimeEmbedding(32, 30.0, 1000, generator=torch.Generator().manual_seed(0))
    features = emb(torch.tensor([0, 1, 999]))
    assert features.shape == (3, 32)
    torch.testing.assert_close(features, emb(torch.tensor([0.0, 1.0, 999.0])))  # long and float steps agree
    assert not torch.allclose(features[0], features[1])
