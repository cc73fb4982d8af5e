"""Diffusion process and samplers: the schedule is the paper's, x0 is clamped and masked, draws reproducible."""

from __future__ import annotations

import pytest
import torch

from mddose.diffusion.process import DiffusionConfig, DiffusionLoss
from mddose.diffusion.sampling import SAMPLERS, clamp_x0, draw_samples, make_scheduler, mean_and_spread, sample


class Oracle(torch.nn.Module):
    """Predicts the exact ε (or x0, v) for a known x0: sampling must then return that x0."""

    def __init__(self, x0: torch.Tensor, config: DiffusionConfig) -> None:
        super().__init__()
        self.x0, self.config = x0, config
        self.alpha_bar = config.train_scheduler().alphas_cumprod

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.config.prediction_type == "epsilon":
            return eps
        if self.config.prediction_type == "sample":
            return self.x0.expand_as(x_t)
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


def test_paper_schedule() -> None:
    sched = DiffusionConfig().train_scheduler()
    assert sched.config.num_train_timesteps == 1000
    assert torch.isclose(sched.betas[0], torch.tensor(1e-4)) and torch.isclose(sched.betas[-1], torch.tensor(0.02))


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_oracle_recovers_x0_inside_mask(prediction: str, sampler: str) -> None:
    cfg = DiffusionConfig(prediction_type=prediction)
    dose = torch.rand(2, 1, 8, 8) * 0.9 + 0.05
    mask = torch.ones_like(dose)
    mask[..., :2, :] = 0
    model = Oracle(cfg.to_model_space(dose), cfg)
    steps = 1000 if sampler == "ddpm" else 10
    out = sample(model, torch.zeros(2, 3, 8, 8), cfg, mask, sampler=sampler, steps=steps,
                 generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert (out[..., :2, :] == 0).all()
    torch.testing.assert_close(out[..., 2:, :], dose[..., 2:, :], atol=2e-3, rtol=0)


def test_clamp_keeps_x0_in_range_for_unit_data() -> None:
    cfg = DiffusionConfig(data_range="unit")
    wild = Oracle(torch.full((1, 1, 4, 4), 5.0), cfg)  # implies x0 far outside [0, 1]
    out = sample(wild, torch.zeros(1, 2, 4, 4), cfg, None, sampler="ddim", steps=5)
    assert out.max() <= 1.0 and out.min() >= 0.0


def test_clamp_x0_is_identity_for_valid_predictions() -> None:
    cfg = DiffusionConfig()
    alpha_bar = cfg.train_scheduler().alphas_cumprod
    x0 = torch.rand(1, 1, 4, 4) * 1.8 - 0.9
    eps = torch.randn(1, 1, 4, 4)
    t = 500
    x_t = alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * eps
    torch.testing.assert_close(clamp_x0(eps, x_t, t, alpha_bar, cfg, None), eps, atol=1e-5, rtol=1e-5)


def test_multi_sample_mean_and_std_reproducible() -> None:
    cfg = DiffusionConfig()
    model = lambda x, t, c: torch.zeros_like(x)  # noqa: E731 - a denoiser that knows nothing: draws vary
    kw = dict(samples=3, sampler="dpm++", steps=5)
    draws = draw_samples(model, torch.zeros(2, 1, 8, 8), cfg, generator=torch.Generator().manual_seed(1), **kw)
    m1, s1 = mean_and_spread(draws)
    draws = draw_samples(model, torch.zeros(2, 1, 8, 8), cfg, generator=torch.Generator().manual_seed(1), **kw)
    m2, s2 = mean_and_spread(draws)
    assert torch.equal(m1, m2) and torch.equal(s1, s2)
    assert s1.mean() > 0 and m1.shape == s1.shape == (2, 1, 8, 8)


def test_bad_sampler_and_steps() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'euler': choose ddpm, ddim, dpm"):
        make_scheduler(DiffusionConfig(), "euler", 10)
    with pytest.raises(ValueError, match="steps"):
        make_scheduler(DiffusionConfig(), "ddim", 0)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_loss_is_zero_for_oracle(prediction: str) -> None:
    cfg = DiffusionConfig(prediction_type=prediction)
    dose = torch.rand(4, 1, 8, 8)
    loss = DiffusionLoss(cfg)(Oracle(cfg.to_model_space(dose), cfg), dose, torch.zeros(4, 2, 8, 8))
    assert loss.item() < 1e-8


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_loss_is_the_configured_error_of_x0(loss: str) -> None:
    """An x_0 network off by a constant 0.1 costs 0.01 under the MSE and 0.1 under L1."""
    cfg = DiffusionConfig(prediction_type="sample", loss=loss)
    dose = torch.rand(4, 1, 8, 8)
    off = Oracle(cfg.to_model_space(dose) + 0.1, cfg)
    value = DiffusionLoss(cfg)(off, dose, torch.zeros(4, 2, 8, 8)).item()
    assert value == pytest.approx(0.01 if loss == "mse" else 0.1, rel=1e-4)


def test_bad_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="loss: expected one of 'mse', 'l1'"):
        DiffusionConfig(loss="huber")  # type: ignore[arg-type]


def test_timestep_spacing() -> None:
    """Each scheduler keeps its own spacing by default; "trailing" starts every sampler at t = T − 1."""
    def steps(sampler: str, spacing: str, n: int) -> list[int]:
        cfg = DiffusionConfig(prediction_type="sample", timestep_spacing=spacing)
        return make_scheduler(cfg, sampler, n).timesteps.tolist()

    assert steps("ddim", "default", 3) == [666, 333, 0] and steps("dpm++", "default", 3) == [999, 666, 333]
    assert steps("ddim", "trailing", 3) == steps("dpm++", "trailing", 3) == [999, 666, 332]
    assert steps("ddim", "trailing", 1) == [999]
    with pytest.raises(ValueError, match="timestep_spacing: expected one of 'default', 'trailing'"):
        DiffusionConfig(timestep_spacing="leading")  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_final_t_fraction(fraction: float) -> None:
    """That share of a batch trains at t = T − 1; the rest keeps t uniform over 0..T − 1."""
    seen: list[torch.Tensor] = []

    def model(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x_t)

    cfg = DiffusionConfig(prediction_type="sample", final_t_fraction=fraction)
    DiffusionLoss(cfg)(model, torch.rand(4000, 1, 2, 2), torch.zeros(4000, 1, 2, 2),
                       generator=torch.Generator().manual_seed(0))
    share = (seen[0] == 999).float().mean().item()
    assert abs(share - (fraction + (1 - fraction) / 1000)) < 0.03
    assert seen[0].min() >= 0 and seen[0].max() <= 999 and (seen[0] < 500).float().mean() > (1 - fraction) / 2 - 0.03
    with pytest.raises(ValueError, match="final_t_fraction must be in"):
        DiffusionConfig(final_t_fraction=1.0)


def test_loss_inside_the_mask_ignores_the_rest() -> None:
    """With loss_region="mask" an error outside the possible-dose mask costs nothing, inside it costs in full."""
    cfg = DiffusionConfig(prediction_type="sample", loss="l1", loss_region="mask")
    dose, mask = torch.rand(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    x0 = cfg.to_model_space(dose)
    outside = Oracle(torch.where(mask > 0.5, x0, x0 + 0.5), cfg)
    assert DiffusionLoss(cfg)(outside, dose, torch.zeros(4, 2, 8, 8), mask=mask).item() < 1e-6
    inside = Oracle(torch.where(mask > 0.5, x0 + 0.1, x0), cfg)
    assert DiffusionLoss(cfg)(inside, dose, torch.zeros(4, 2, 8, 8), mask=mask).item() == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(ValueError, match="needs the possible-dose mask"):
        DiffusionLoss(cfg)(inside, dose, torch.zeros(4, 2, 8, 8))
    with pytest.raises(ValueError, match="loss_region: expected one of 'image', 'mask'"):
        DiffusionConfig(loss_region="body")  # type: ignore[arg-type]
