"""The ablation blocks (Tables III and IV): residual convolution and Swin-style windowed attention.

Each block has the Mamba block's interface, ``block(x: (B, C, H, W)) -> (B, C, H, W)``, and each "stack" (the body
of a stage: its blocks plus any final norm) has the interface of :class:`~mddose.models.mamba.MambaStack`, so a
stage is built the same way whichever block it uses (see :func:`~mddose.models.stage.make_stack`).

* :class:`ResConvBlock`: GroupNorm -> SiLU -> 3×3 conv, twice, plus the input (the DDPM/DiffDP residual block,
  without per-block time: time is added per stage for every block type alike).
* :class:`SwinBlock`: pre-norm multi-head self-attention inside non-overlapping windows with a learned relative
  position bias, every second block shifted by half a window (with the usual mask), then a pre-norm MLP; the
  transformer block SP-DiffDose used. Cost is linear in pixels for a fixed window, quadratic in the window size.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mddose.models.config import ModelConfig
from mddose.models.layers import DropPath, drop_path_rates


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(channels, 32), channels)


class ResConvBlock(nn.Module):
    """Residual convolution block: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            group_norm(dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return x + self.drop_path(self.body(x))


class ConvStack(nn.Module):
    """``depth`` residual conv blocks: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, depth: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResConvBlock(dim, r) for r in drop_path_rates(cfg.drop_path, depth)))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return self.blocks(x)


class SwinBlock(nn.Module):
    """Swin transformer block (windowed attention + MLP): (B, C, H, W) -> (B, C, H, W).

    The window shrinks to the feature map where the map is smaller; maps that are not a multiple of the window
    are zero-padded at the bottom/right for the attention. ``shift`` blocks roll the map by half a window.
    """

    def __init__(self, dim: int, heads: int, window: int, shift: bool, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.rel_bias._no_weight_decay = True  # as Swin's relative position bias table
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        height, width = x.shape[-2:]
        tokens = rearrange(x, "b c h w -> b h w c")  # (B, H, W, C)
        tokens = tokens + self.drop_path(self._attend(self.norm1(tokens)))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return rearrange(tokens, "b h w c -> b c h w", h=height, w=width)

    def _attend(self, x: Tensor) -> Tensor:
        """Shifted-window attention on x: (B, H, W, C) -> (B, H, W, C)."""
        height, width = x.shape[1:3]
        win = min(self.window, height, width)
        shift = win // 2 if self.shift and min(height, width) > win else 0
        pad_h, pad_w = -height % win, -width % win
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        nh, nw = x.shape[1] // win, x.shape[2] // win
        q, k, v = rearrange(
            self.qkv(x), "b (nh i) (nw j) (three m d) -> three b (nh nw) m (i j) d", i=win, j=win, three=3, m=self.heads
        )  # each (B, nW, heads, win², d)
        bias = self.rel_bias[_relative_index(win, self.window, x.device)]  # (win², win², heads)
        mask = rearrange(bias, "i j m -> m i j").to(q.dtype)  # (heads, win², win²)
        if shift:
            mask = mask + _shift_mask(x.shape[1], x.shape[2], win, shift, x.device).to(q.dtype)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nW, heads, win², d)
        out = rearrange(out, "b (nh nw) m (i j) d -> b (nh i) (nw j) (m d)", nh=nh, nw=nw, i=win, j=win)
        out = self.proj(out)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :height, :width]


@functools.lru_cache(maxsize=32)
def _relative_index(win: int, table_window: int, device: torch.device) -> Tensor:
    """(win², win²) indices into a (2·table_window - 1)² relative-position table."""
    coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)  # (2, win²)
    rel = coords[:, :, None] - coords[:, None, :] + (table_window - 1)  # (2, win², win²)
    return (rel[0] * (2 * table_window - 1) + rel[1]).to(device)


@functools.lru_cache(maxsize=32)
def _shift_mask(height: int, width: int, win: int, shift: int, device: torch.device) -> Tensor:
    """(nW, win², win²) additive mask: -inf between tokens that the roll brought from different regions."""
    region = torch.zeros(height, width)
    cuts = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for n, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
        region[rows, cols] = n
    ids = rearrange(region, "(nh i) (nw j) -> (nh nw) (i j)", i=win, j=win)
    same = ids[:, :, None] == ids[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, -math.inf).to(device)


class SwinStack(nn.Module):
    """``depth`` Swin blocks (every second one shifted) and a final LayerNorm: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, depth: int, cfg: ModelConfig) -> None:
        super().__init__()
        heads = max(h for h in range(1, max(1, dim // cfg.attn_head_dim) + 1) if dim % h == 0)
        rates = drop_path_rates(cfg.drop_path, depth)
        self.blocks = nn.Sequential(
            *(SwinBlock(dim, heads, cfg.window_size, i % 2 == 1, cfg.mlp_ratio, r) for i, r in enumerate(rates))
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        x = self.blocks(x)
        return rearrange(self.norm(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")
