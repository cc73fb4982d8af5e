"""The Mamba-UNet noise predictor of Fig. 2(b) (with the structure encoder of Fig. 2(c) fused level by level).

Data flow for the ``paper`` config at 128×128 (the published layout; widths in brackets):

* stem: 3×3 conv of x_t (1 -> 24) at 128²; time: Fourier features (96) of t / T;
* encoder: four stages, each a 2×2 stride-2 patch embedding then blocks: 64² (48), 32² (96), 16² (192), 8² (384);
  after stage i its output gets the structure encoder's level-i output and the stage's time projection added
  (``fusion="add"``; ``"transformer"`` fuses the two with windowed attention instead: :mod:`.fusion`);
* decoder: four levels, each up-sampling (3×3 conv + PixelShuffle: size doubles, channels halve), concatenation
  with the skip (encoder levels 3, 2, 1, then the stem), a 1×1 reduction where the channels differ from the
  level's width, and a stage (1×1 patch embedding, blocks, time): 16² (192), 32² (96), 64² (48), 128² (48);
* head: 3×3 conv to the predicted noise (1 channel).

The block type of the denoiser is ``config.denoiser_block`` (Table III); with ``encoder_block="none"`` the
structures are concatenated with x_t before the stem (Table IV, first row).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mddose.models.config import ModelConfig
from mddose.models.encoder import StructureEncoder
from mddose.models.fusion import make_fusion
from mddose.models.layers import FourierTimeEmbedding, Upsample
from mddose.models.stage import Stage


class MambaUNet(nn.Module):
    """Noise predictor: ``forward(x_t (B, in, H, W), t (B,), cond (B, C_struct, H, W)) -> (B, out, H, W)``.

    H and W must be multiples of ``config.size_multiple`` (16 with four levels); ``t`` holds timesteps in
    ``[0, config.num_timesteps)``, long or float.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config
        concat = cfg.encoder_block == "none"
        self.time_embed = FourierTimeEmbedding(cfg.time_embed_dim, cfg.fourier_scale, cfg.num_timesteps)
        self.stem = nn.Conv2d(
            cfg.in_channels + (cfg.cond_channels if concat else 0), cfg.stem_channels, kernel_size=3, padding=1
        )
        self.structure_encoder = None if concat else StructureEncoder(cfg)
        widths = (cfg.stem_channels, *cfg.enc_widths)
        kind, size = cfg.denoiser_block, cfg.image_size
        self.down = nn.ModuleList(
            Stage(cfg.block_at(kind, i + 1), widths[i], widths[i + 1], depth, 2, size >> (i + 1), cfg, time=True)
            for i, depth in enumerate(cfg.enc_depths)
        )
        self.fuse = None if concat else nn.ModuleList(make_fusion(cfg.fusion, w, cfg) for w in cfg.enc_widths)
        self.up, self.reduce, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = widths[-1]
        for j, (width, depth) in enumerate(zip(cfg.dec_widths, cfg.dec_depths)):
            level = cfg.levels - 1 - j  # resolution level after up-sampling (0 = full size)
            merged = channels // 2 + widths[level]  # up-sampled + skip
            self.up.append(Upsample(channels))
            self.reduce.append(nn.Conv2d(merged, width, 1, bias=False) if merged != width else nn.Identity())
            self.dec.append(Stage(cfg.block_at(kind, level), width, width, depth, 1, size >> level, cfg, time=True))
            channels = width
        self.head = nn.Conv2d(channels, cfg.out_channels, kernel_size=3, padding=1, bias=False)

    def encode_structures(self, cond: Tensor) -> list[Tensor | None]:
        """The structure encoder's features per level (Nones where structures are concatenated instead).

        They do not depend on x_t or t: a sampler computes them once per slice and passes them to every step.
        """
        if self.structure_encoder is None:
            return [None] * self.config.levels
        return self.structure_encoder(cond)

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor, structure: list[Tensor | None] | None = None
    ) -> Tensor:
        """x_t: (B, in, H, W) noisy dose; t: (B,) timesteps; cond: (B, C_struct, H, W) -> (B, out, H, W) noise.

        ``structure``: :meth:`encode_structures` of ``cond``, when the caller already has it.
        """
        self._check(x_t, t, cond)
        temb = self.time_embed(t)  # (B, T)
        if structure is None:
            structure = self.encode_structures(cond)
        if self.structure_encoder is None:
            x_t = torch.cat([x_t, cond], dim=1)  # (B, in + C_struct, H, W)
        h = self.stem(x_t)  # (B, stem, H, W)
        skips = [h]
        for i, (stage, extra) in enumerate(zip(self.down, structure)):
            h = stage(h, temb)
            if self.fuse is not None:
                h = self.fuse[i](h, extra)  # (B, w_i, H/2^(i+1), W/2^(i+1))
            skips.append(h)
        skips.pop()  # the deepest level feeds the decoder directly
        for up, reduce, stage in zip(self.up, self.reduce, self.dec):
            h = reduce(torch.cat([up(h), skips.pop()], dim=1))  # (B, width, 2h, 2w)
            h = stage(h, temb)
        with torch.autocast(h.device.type, enabled=False):  # the dose itself in float32, also under bf16 autocast
            return self.head(h.float())

    def _check(self, x_t: Tensor, t: Tensor, cond: Tensor) -> None:
        cfg = self.config
        b, c, height, width = x_t.shape
        if c != cfg.in_channels or cond.shape[1] != cfg.cond_channels:
            raise ValueError(
                f"expected x_t with {cfg.in_channels} and cond with {cfg.cond_channels} channels, "
                f"got {tuple(x_t.shape)} and {tuple(cond.shape)}"
            )
        if cond.shape[0] != b or cond.shape[2:] != x_t.shape[2:] or t.shape != (b,):
            raise ValueError(f"shape mismatch: x_t {tuple(x_t.shape)}, t {tuple(t.shape)}, cond {tuple(cond.shape)}")
        if height % cfg.size_multiple or width % cfg.size_multiple:
            raise ValueError(f"H and W must be multiples of {cfg.size_multiple}, got {height}×{width}")
