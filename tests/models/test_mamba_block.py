"""The 2D Mamba block: shapes, scan paths, non-causality over the image, and the fast path inside the block."""

from __future__ import annotations

import pytest
import torch

from mddose.models.config import preset
from mddose.models.layers import apply_rotary_2d
from mddose.models.mamba import MambaBlock, MambaMixer, SelectiveSSM


def _block(seed: int = 0, **changes: object) -> MambaBlock:
    torch.manual_seed(seed)
    return MambaBlock(16, preset("tiny", drop_path=0.0, **changes))


@pytest.mark.parametrize("kind", ["s6", "ssd"])
@pytest.mark.parametrize("order", ["rows", "rows+cols"])
def test_block_keeps_shape(kind: str, order: str) -> None:
    x = torch.randn(2, 16, 8, 12)
    y = _block(ssm_kind=kind, scan_order=order)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("order", ["rows", "rows+cols"])
def test_paths_round_trip(order: str) -> None:
    mixer = MambaMixer(16, preset("tiny", scan_order=order))
    u = torch.randn(2, 6 * 5, 32)
    paths = mixer._to_paths(u, 6, 5)
    assert len(paths) == (2 if order == "rows" else 4)
    for back in mixer._from_paths(tuple(paths), 6, 5):
        torch.testing.assert_close(back, u)


@pytest.mark.parametrize("kind", ["s6", "ssd"])
def test_every_pixel_sees_the_whole_image(kind: str) -> None:
    """One bidirectional block: the first pixel's output depends on the last pixel (a causal scan would not)."""
    block = _block(ssm_kind=kind)
    x = torch.randn(1, 16, 6, 6, requires_grad=True)
    y = block(x)
    (grad,) = torch.autograd.grad(y[0, :, 0, 0].sum(), x)
    assert grad[0, :, -1, -1].abs().sum() > 0
    (grad,) = torch.autograd.grad(block(x)[0, :, -1, -1].sum(), x)
    assert grad[0, :, 0, 0].abs().sum() > 0


@pytest.mark.parametrize("kind", ["s6", "ssd"])
def test_block_fast_path_equals_reference_path(kind: str) -> None:
    fast = _block(ssm_kind=kind, scan_chunk=8)
    ref = _block(ssm_kind=kind, scan_backend="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_ssm_parameters_follow_the_kind() -> None:
    s6 = SelectiveSSM(32, d_state=16, dt_rank=2, paths=2, kind="s6")
    ssd = SelectiveSSM(32, d_state=16, dt_rank=2, paths=2, kind="ssd", head_dim=16)
    assert s6.A_log.shape == (2, 32, 16) and s6.dt_proj.shape == (2, 32, 2)
    assert ssd.A_log.shape == (2, 2) and ssd.dt_proj.shape == (2, 2, 2)
    assert (-torch.exp(s6.A_log) < 0).all() and (-torch.exp(ssd.A_log) < 0).all()
    dt = torch.nn.functional.softplus(s6.dt_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


def test_rotary_is_a_rotation_that_depends_on_position() -> None:
    tokens = torch.randn(2, 4 * 6, 16)
    rotated = apply_rotary_2d(tokens, 4, 6)
    torch.testing.assert_close(rotated.norm(dim=-1), tokens.norm(dim=-1))
    same = torch.ones(1, 4 * 6, 16)
    out = apply_rotary_2d(same, 4, 6)
    assert not torch.allclose(out[0, 1], out[0, 6])  # (0, 1) and (1, 0) differ
