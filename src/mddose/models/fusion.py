"""How the U-Net meets the structure encoder at each level: added (MD-Dose, Fig. 2(b)), or fused by a transformer
(the DoseDiff-like network's multi-encoder, multi-scale fusion, after Zhang et al.'s MMFNet).

:class:`TransformerFusion` takes the noisy dose's features and the condition's features of one level, concatenates
them, mixes them with a 1×1 convolution to the level's width, and lets every pixel attend to its 8×8 window of
the mixed map with a Swin block (:class:`~mddose.models.blocks.SwinStack`: windowed self-attention with a relative
position bias, an MLP, a final LayerNorm). At the coarsest level of a 128² input (8², the window's own size) the
attention is global, as DoseDiff's bottleneck fusion is; at the finer levels it is local, where the two maps are
co-registered and the convolutions around it carry information between windows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mddose.models.blocks import SwinStack
from mddose.models.config import ModelConfig

# one Swin block per level: a shifted second one (a Swin pair) made the tiny network's training step 19 % slower
# on one CPU thread (1.64 against 1.37 s, batch 16, 128², bf16) for 0.27 M more weights
FUSION_DEPTH = 1


class AddFusion(nn.Module):
    """MD-Dose's fusion: the structure features added to the denoiser's, ``(B, C, H, W) x 2 -> (B, C, H, W)``."""

    def forward(self, dose: Tensor, cond: Tensor) -> Tensor:
        """dose, cond: (B, C, H, W) features of the same level -> (B, C, H, W)."""
        return dose + cond


class TransformerFusion(nn.Module):
    """Concatenate -> 1×1 conv -> windowed self-attention: ``(B, C, H, W) x 2 -> (B, C, H, W)``."""

    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.mix = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.attend = SwinStack(dim, FUSION_DEPTH, cfg)

    def forward(self, dose: Tensor, cond: Tensor) -> Tensor:
        """dose: (B, C, H, W) the noisy dose's features, cond: (B, C, H, W) the condition's -> (B, C, H, W)."""
        mixed = self.mix(torch.cat([dose, cond], dim=1))  # (B, C, H, W)
        return self.attend(mixed)


def make_fusion(kind: str, dim: int, cfg: ModelConfig) -> nn.Module:
    """The fusion of one level of width ``dim``: ``add`` or ``transformer``."""
    if kind == "add":
        return AddFusion()
    if kind == "transformer":
        return TransformerFusion(dim, cfg)
    raise ValueError(f"unknown fusion {kind!r}; expected add or transformer")
