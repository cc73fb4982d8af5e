"""Small pieces shared by every block type: patch embedding, up-sampling, time embedding, positions, drop-path.

Sizes follow the published MD-Dose code: a k×k stride-k convolution embeds patches (k = 2 halves the size in the
encoder, k = 1 is a per-pixel projection in the decoder), up-sampling is a 3×3 convolution to twice the channels
followed by PixelShuffle(2) (so channels halve), and time is encoded with fixed Gaussian Fourier features.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping k×k patches to ``dim`` channels: (B, C_in, H, W) -> (B, dim, H/k, W/k)."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, dim, H/k, W/k)."""
        return self.proj(x)


class Upsample(nn.Module):
    """3×3 conv to 2C channels, then PixelShuffle(2): (B, C, H, W) -> (B, C/2, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C/2, 2H, 2W)."""
        return self.shuffle(self.conv(x))


class FourierTimeEmbedding(nn.Module):
    """Gaussian Fourier features of the diffusion time: (B,) -> (B, dim).

    ``t`` is given in steps ``[0, num_timesteps)`` (long or float) and divided by ``num_timesteps`` first, so the
    features see ``t`` in [0, 1) where scale-30 frequencies are resolved without aliasing. (The published code fed
    raw integer steps; at scale 30 that makes neighbouring steps look unrelated.) The frequencies are a fixed,
    saved buffer drawn from the generator at construction.
    """

    def __init__(self, dim: int, scale: float, num_timesteps: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding size must be even, got {dim}")
        self.num_timesteps = num_timesteps
        self.register_buffer("freqs", torch.randn(dim // 2, generator=generator) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) timesteps -> (B, dim) as [sin, cos]."""
        phase = 2 * math.pi * (t.float() / self.num_timesteps)[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([phase.sin(), phase.cos()], dim=-1)


class TimeProjection(nn.Module):
    """Per-stage SiLU + Linear of the time features, shaped to add to a feature map: (B, T) -> (B, C, 1, 1)."""

    def __init__(self, time_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, channels))

    def forward(self, temb: Tensor) -> Tensor:
        """temb: (B, T) -> (B, C, 1, 1)."""
        return rearrange(self.proj(temb), "b c -> b c 1 1")


class LearnedPositionEmbedding(nn.Module):
    """Learned absolute position embedding on a ``grid``; resized bilinearly for other feature-map sizes."""

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, dim, grid, grid))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> x + embedding, same shape."""
        pos = self.weight
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x + pos.to(x.dtype)


def apply_rotary_2d(tokens: Tensor, height: int, width: int) -> Tensor:
    """2D rotary position embedding on row-major tokens: (B, L, C) -> (B, L, C), L = height·width, C % 4 == 0.

    The first C/2 channels are rotated in pairs by angles set by the row, the last C/2 by the column (as in
    Vision Mamba's ``VisionRotaryEmbeddingFast``). Positions are scaled to [0, 14) whatever the size, so the
    embedding means the same relative place at 64², 128² and 256².
    """
    cos, sin = _rotary_tables(height, width, tokens.shape[-1], tokens.device, tokens.dtype)
    pairs = rearrange(tokens, "b l (c r) -> b l c r", r=2)
    rotated = rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1), "b l c r -> b l (c r)")
    return tokens * cos + rotated * sin


@functools.lru_cache(maxsize=64)
def _rotary_tables(
    height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (L, dim), for :func:`apply_rotary_2d`."""
    if dim % 4:
        raise ValueError(f"2D rotary embedding needs channels divisible by 4, got {dim}")
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, dtype=torch.float64) / half))  # (half/2,)

    def angles(n: int) -> Tensor:
        pos = torch.arange(n, dtype=torch.float64) / n * 14.0
        return repeat(torch.outer(pos, inv_freq), "n f -> n (f r)", r=2)  # (n, half)

    rows = repeat(angles(height), "h f -> h w f", w=width)
    cols = repeat(angles(width), "w f -> h w f", h=height)
    theta = rearrange(torch.cat([rows, cols], dim=-1), "h w c -> (h w) c")  # (L, dim)
    return theta.cos().to(device, dtype), theta.sin().to(device, dtype)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples while training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, ...) -> same shape, each sample kept with probability 1 - rate and rescaled."""
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Linearly increasing drop-path rates, 0 for the first block and ``rate`` for the last."""
    return torch.linspace(0.0, rate, depth).tolist()
