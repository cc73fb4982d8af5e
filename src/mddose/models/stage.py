"""One level of the U-Net or of the structure encoder: patch embedding, a stack of blocks, time embedding.

The frame around the blocks of any type: the Mamba block of Fig. 2(d) itself is :mod:`.mamba`, its scans
:mod:`.ssm`. The block type (``mamba``, ``swin``, ``conv``) is the only thing the ablations change, so every
stage is built by :func:`make_stack` from the configuration.
"""

from __future__ import annotations

from torch import Tensor, nn

from mddose.models.blocks import ConvStack, SwinStack
from mddose.models.config import BLOCK_TYPES, ModelConfig
from mddose.models.layers import PatchEmbed, TimeProjection
from mddose.models.mamba import MambaStack


def make_stack(kind: str, dim: int, depth: int, grid: int, cfg: ModelConfig) -> nn.Module:
    """The body of a stage of block type ``kind``: (B, dim, H, W) -> (B, dim, H, W); ``grid`` is H at image_size."""
    if kind == "mamba":
        return MambaStack(dim, depth, grid, cfg)
    if kind == "swin":
        return SwinStack(dim, depth, cfg)
    if kind == "conv":
        return ConvStack(dim, depth, cfg)
    raise ValueError(f"unknown block type {kind!r}; expected one of {BLOCK_TYPES}")


class Stage(nn.Module):
    """Patch embedding (k×k, stride k) -> blocks -> [+ time projection]: (B, C_in, H, W) -> (B, dim, H/k, W/k)."""

    def __init__(
        self, kind: str, in_channels: int, dim: int, depth: int, patch: int, grid: int, cfg: ModelConfig, time: bool
    ) -> None:
        super().__init__()
        self.embed = PatchEmbed(in_channels, dim, patch)
        self.body = make_stack(kind, dim, depth, grid, cfg)
        self.time = TimeProjection(cfg.time_embed_dim, dim) if time else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """x: (B, C_in, H, W), temb: (B, T) Fourier time features (for stages built with ``time``)."""
        out = self.body(self.embed(x))
        if self.time is not None:
            out = out + self.time(temb)
        return out
