"""The noise predictor: the interface the diffusion code relies on, sizes, the structure encoder, gradients."""

from __future__ import annotations

import pytest
import torch

from mddose.models import ablation_configs, build_model, preset


def _batch(size: int, batch: int = 2, cond_channels: int = 9, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 1, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.randn(batch, cond_channels, size, size, generator=g)
    return x_t, t, cond


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    return build_model(preset("tiny"), seed=0)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_output_shape_small_sizes(tiny_model: torch.nn.Module, size: int) -> None:
    x_t, t, cond = _batch(size)
    out = tiny_model(x_t, t, cond)
    assert out.shape == x_t.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [128, 256])
def test_output_shape_large_sizes(tiny_model: torch.nn.Module, size: int) -> None:
    x_t, t, cond = _batch(size, batch=1)
    with torch.no_grad():
        out = tiny_model.eval()(x_t, t, cond)
    tiny_model.train()
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()


def test_float_and_long_timesteps_agree(tiny_model: torch.nn.Module) -> None:
    x_t, t, cond = _batch(32)
    tiny_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(x_t, t, cond), tiny_model(x_t, t.float(), cond))
        assert not torch.allclose(tiny_model(x_t, t, cond), tiny_model(x_t, t + 100, cond))
    tiny_model.train()


@pytest.mark.parametrize("encoder", ["mamba", "none"])
def test_structures_change_the_output(encoder: str) -> None:
    model = build_model(preset("tiny", encoder_block=encoder), seed=0).eval()
    x_t, t, cond = _batch(32)
    with torch.no_grad():
        out = model(x_t, t, cond)
        other = model(x_t, t, torch.flip(cond, dims=[-1]))
    assert (out - other).abs().max() > 1e-3 * out.abs().max()


def test_gradient_reaches_every_parameter() -> None:
    model = build_model(preset("tiny", drop_path=0.0), seed=0)
    x_t, t, cond = _batch(32)
    model(x_t, t, cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("row", list(ablation_configs(preset("tiny"))))
def test_every_ablation_config_trains_a_step(row: str) -> None:
    cfg = ablation_configs(preset("tiny"))[row]
    model = build_model(cfg, seed=0)
    x_t, t, cond = _batch(32)
    noise = torch.randn_like(x_t)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.mse_loss(model(x_t, t, cond), noise)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    has_encoder = model.structure_encoder is not None
    assert has_encoder == (cfg.encoder_block != "none")


def test_bad_inputs_are_refused(tiny_model: torch.nn.Module) -> None:
    x_t, t, cond = _batch(32)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_model(x_t[..., :24], t, cond[..., :24])
    with pytest.raises(ValueError, match="channels"):
        tiny_model(x_t, t, cond[:, :5])
    with pytest.raises(ValueError, match="shape mismatch"):
        tiny_model(x_t, t[:1], cond)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_model(preset("tiny"), seed=3)
    b = build_model(preset("tiny"), seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_conv_levels_choose_the_block_per_level_in_both_networks() -> None:
    from mddose.models.blocks import ConvStack
    from mddose.models.mamba import MambaStack

    cfg = preset("tiny", conv_levels=3)
    model = build_model(cfg, seed=0)
    kinds = lambda stages: [type(s.body).__name__ for s in stages]  # noqa: E731
    assert kinds(model.down) == ["ConvStack", "ConvStack", "MambaStack", "MambaStack"]  # 64², 32², 16², 8² at 128
    assert kinds(model.dec) == ["MambaStack", "ConvStack", "ConvStack", "ConvStack"]  # 16², 32², 64², 128²
    assert kinds(model.structure_encoder.stages) == kinds(model.down)
    assert not cfg.has_positions and cfg.mamba_widths() == (64, 128, 64)
    everywhere = build_model(preset("tiny", conv_levels=0), seed=0)
    assert all(isinstance(s.body, MambaStack) for s in everywhere.down)
    assert isinstance(build_model(preset("tiny", conv_levels=5), seed=0).down[-1].body, ConvStack)
    with pytest.raises(ValueError, match="conv_levels"):
        preset("tiny", conv_levels=6)


def test_cached_structure_features_give_the_same_output(tiny_model: torch.nn.Module) -> None:
    x_t, t, cond = _batch(32)
    tiny_model.eval()
    with torch.no_grad():
        again = tiny_model(x_t, t, cond, structure=tiny_model.encode_structures(cond))
        assert torch.equal(tiny_model(x_t, t, cond), again)
    tiny_model.train()


def test_bf16_autocast_keeps_the_output_in_float32(tiny_model: torch.nn.Module) -> None:
    x_t, t, cond = _batch(32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model.eval()(x_t, t, cond)
    tiny_model.train()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
