"""The structure encoder of Fig. 2(c): a copy of the noise predictor's encoder for the anatomy.

A 3×3 stem takes the (2 + O) structure channels (CT, target, O organs at risk) to ``stem_channels``; then one
stage per level with the denoiser encoder's widths, depths and 2×2 patch embeddings. The U-Net adds the feature
map of level i to its own level-i encoder output. The stages carry no time embedding: the anatomy does not
depend on the diffusion step. The block type is ``config.encoder_block`` (Table IV); ``"none"`` means no encoder
at all, and the U-Net then concatenates the structures with the noisy dose at its input instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from mddose.models.config import ModelConfig
from mddose.models.stage import Stage


class StructureEncoder(nn.Module):
    """Structures (B, C_struct, H, W) -> per level i (from 0): (B, enc_widths[i], H/2^(i+1), W/2^(i+1))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.encoder_block == "none":
            raise ValueError("encoder_block 'none' has no structure encoder")
        self.stem = nn.Conv2d(cfg.cond_channels, cfg.stem_channels, kernel_size=3, padding=1)
        widths = (cfg.stem_channels, *cfg.enc_widths)
        self.stages = nn.ModuleList(
            Stage(cfg.block_at(cfg.encoder_block, i + 1), widths[i], widths[i + 1], depth, 2,
                  cfg.image_size >> (i + 1), cfg, time=False)
            for i, depth in enumerate(cfg.enc_depths)
        )

    def forward(self, cond: Tensor) -> list[Tensor]:
        """cond: (B, C_struct, H, W) -> [level 1 (B, w1, H/2, W/2), ..., level n (B, wn, H/2^n, W/2^n)]."""
        x = self.stem(cond)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
