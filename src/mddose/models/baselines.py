"""The deterministic baselines of the paper's Table I: networks that map the anatomy straight to a dose.

* :class:`CascadeUNet` (``arch="cascade"``), in the spirit of C3D (Liu et al. 2021, the OpenKBP winner): a
  coarse U-Net predicts a dose from the anatomy, a second U-Net refines it from the anatomy plus that coarse
  dose. Both outputs are supervised (deep supervision), so the coarse net learns a dose of its own.
* :class:`DenseUNet` (``arch="dense"``), in the spirit of HD-UNet (Nguyen et al. 2019): a U-Net whose levels are
  densely connected blocks (every layer sees the concatenation of all earlier ones), with dense down-sampling
  (max-pool and strided convolution side by side, concatenated).

By default both are 2D (``dims=2``), fed exactly the slices and channels MD-Dose is fed, so that the comparison
is on the same input; ``dims=3`` builds them in 3D as the originals were, trained on random ``patch_size``
crops of the volume (:class:`~mddose.data.volume.VolumeDataset`) and predicted by sliding windows
(:func:`mddose.inference.regression.regress_volume`). Both train with a voxel-wise loss (``loss``: ``mse`` as
both papers, or ``l1``) on the dose scaled to [0, 1], over the whole image or (``loss_region="mask"``, 2D only)
inside the possible-dose mask. Their interface is ``model(cond (B, C, *spatial)) -> (B, 1,
*spatial)``; ``model(cond, all_outputs=True)`` gives every supervised output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mddose.models.blocks import group_norm
from mddose.models.config import ModelConfig

ARCHS = ("cascade", "dense")
LOSSES = ("mse", "l1")


@dataclass(frozen=True)
class BaselineConfig:
    """A deterministic baseline: architecture, widths and its voxel-wise loss (see the module docstring)."""

    arch: str = "dense"  # cascade (C3D-like) | dense (HD-UNet-like)
    name: str = "hd-unet"
    cond_channels: int = 9
    out_channels: int = 1
    image_size: int = 128
    widths: tuple[int, ...] = (48, 96, 192, 384)  # one per level; the last is the bottleneck
    depth: int = 2  # convolutions per level (cascade) or layers per dense block (dense)
    growth: int = 16  # dense: channels each dense layer adds
    loss: str = "mse"  # mse | l1
    loss_region: str = "image"  # image | mask: the loss inside the possible-dose mask only (2D: slices carry it)
    dims: int = 2  # 2: axial slices (the default: same input as MD-Dose) | 3: volumes
    patch_size: tuple[int, int, int] = (64, 64, 64)  # dims=3: training crop and sliding window (X, Y, Z voxels)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        problem = self.problem()
        if problem:
            raise ValueError(f"invalid baseline config {self.name!r}: {problem}")

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def problem(self) -> str | None:
        """The first inconsistency in the settings, or None."""
        if self.arch not in ARCHS:
            return f"arch {self.arch!r} is not one of {ARCHS}"
        if self.loss not in LOSSES:
            return f"loss {self.loss!r} is not one of {LOSSES}"
        if self.loss_region not in ("image", "mask"):
            return f"loss_region {self.loss_region!r} is not 'image' or 'mask'"
        if self.loss_region == "mask" and self.dims == 3:
            return "loss_region 'mask' needs slices: a 3D baseline's volume patches carry no possible-dose mask"
        if len(self.widths) < 2 or min(self.widths) < 1 or self.depth < 1 or self.growth < 1:
            return "need at least 2 positive widths, depth >= 1 and growth >= 1"
        if self.image_size % self.size_multiple:
            return f"image_size {self.image_size} is not a multiple of {self.size_multiple}"
        if self.dims not in (2, 3):
            return f"dims {self.dims} is not 2 or 3"
        if self.dims == 3 and (len(self.patch_size) != 3 or any(v % self.size_multiple or v < 1
                                                                  for v in self.patch_size)):
            return f"patch_size {self.patch_size} needs 3 positive multiples of {self.size_multiple}"
        return None

    def replace(self, **changes: Any) -> BaselineConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineConfig:
        return cls(**data)


def baseline_config(arch: str, like: ModelConfig, **overrides: Any) -> BaselineConfig:
    """A baseline sized like an MD-Dose :class:`~mddose.models.config.ModelConfig` (same widths, input)."""
    names = {"cascade": "c3d", "dense": "hd-unet"}
    if arch not in names:
        raise ValueError(f"arch {arch!r} is not one of {ARCHS}")
    widths = tuple(like.enc_widths)
    suffix = "-3d" if overrides.get("dims") == 3 else ""
    cfg = BaselineConfig(arch=arch, name=f"{like.name}-{names[arch]}{suffix}", cond_channels=like.cond_channels,
                         image_size=like.image_size, widths=widths, depth=2 if arch == "cascade" else 4,
                         growth=widths[0])
    return cfg.replace(**overrides) if overrides else cfg


def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], Any]:
    """(Conv, ConvTranspose, max-pool function) for 2D or 3D."""
    if dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.functional.max_pool3d
    return nn.Conv2d, nn.ConvTranspose2d, nn.functional.max_pool2d


def _conv(cin: int, cout: int, dims: int = 2) -> nn.Sequential:
    """3×3(×3) convolution, GroupNorm, ReLU."""
    conv = _layers(dims)[0]
    return nn.Sequential(conv(cin, cout, 3, padding=1), group_norm(cout), nn.ReLU(inplace=True))


class PlainUNet(nn.Module):
    """A classic U-Net: ``depth`` conv-norm-ReLU per level, max-pool down, transposed conv up, skip concat."""

    def __init__(self, cin: int, cout: int, widths: tuple[int, ...], depth: int, dims: int = 2) -> None:
        super().__init__()
        conv, up, self.pool = _layers(dims)
        self.down = nn.ModuleList()
        c = cin
        for w in widths:
            self.down.append(nn.Sequential(*[_conv(c if i == 0 else w, w, dims) for i in range(depth)]))
            c = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(up(c, w, 2, stride=2))
            self.merge.append(nn.Sequential(*[_conv(2 * w if i == 0 else w, w, dims) for i in range(depth)]))
            c = w
        self.head = conv(c, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, cin, *spatial) -> (B, cout, *spatial)."""
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else self.pool(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class CascadeUNet(nn.Module):
    """C3D-like: coarse U-Net on the anatomy, refining U-Net on the anatomy plus the coarse dose."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.config = cfg
        self.coarse = PlainUNet(cfg.cond_channels, cfg.out_channels, cfg.widths, cfg.depth, cfg.dims)
        self.refine = PlainUNet(cfg.cond_channels + cfg.out_channels, cfg.out_channels, cfg.widths, cfg.depth,
                                cfg.dims)

    def forward(self, cond: Tensor, all_outputs: bool = False) -> Tensor | list[Tensor]:
        """cond: (B, C, *spatial) -> dose (B, 1, *spatial); with ``all_outputs`` [coarse, refined]."""
        coarse = self.coarse(cond)
        fine = self.refine(torch.cat([cond, coarse], dim=1))
        return [coarse, fine] if all_outputs else fine


class DenseBlock(nn.Module):
    """``layers`` norm-ReLU-3×3 conv layers, each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, cin: int, growth: int, layers: int, dims: int = 2) -> None:
        super().__init__()
        conv = _layers(dims)[0]
        self.layers = nn.ModuleList(
            nn.Sequential(group_norm(cin + i * growth), nn.ReLU(inplace=False),
                          conv(cin + i * growth, growth, 3, padding=1))
            for i in range(layers)
        )
        self.out_channels = cin + layers * growth

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class DenseLevel(nn.Module):
    """A dense block then a 1×1 transition down to the level's width."""

    def __init__(self, cin: int, width: int, growth: int, layers: int, dims: int = 2) -> None:
        super().__init__()
        self.block = DenseBlock(cin, growth, layers, dims)
        self.transition = nn.Sequential(group_norm(self.block.out_channels), nn.ReLU(),
                                        _layers(dims)[0](self.block.out_channels, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.transition(self.block(x))


class DenseDown(nn.Module):
    """Dense down-sampling: max-pool and a strided 3×3 convolution side by side, concatenated (2 × width)."""

    def __init__(self, width: int, dims: int = 2) -> None:
        super().__init__()
        conv, _, self.pool = _layers(dims)
        self.conv = conv(width, width, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.pool(x, 2), self.conv(x)], dim=1)


class DenseUNet(nn.Module):
    """HD-UNet-like: densely connected levels, dense down-sampling, transposed-conv up-sampling with skips."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.config = cfg
        w, g, n, d = cfg.widths, cfg.growth, cfg.depth, cfg.dims
        conv, up, _ = _layers(d)
        self.stem = conv(cfg.cond_channels, w[0], 3, padding=1)
        self.enc = nn.ModuleList([DenseLevel(w[0], w[0], g, n, d)])
        self.down = nn.ModuleList()
        for prev, width in zip(w[:-1], w[1:]):
            self.down.append(DenseDown(prev, d))
            self.enc.append(DenseLevel(2 * prev, width, g, n, d))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for deeper, width in zip(reversed(w[1:]), reversed(w[:-1])):
            self.up.append(up(deeper, width, 2, stride=2))
            self.dec.append(DenseLevel(2 * width, width, g, n, d))
        self.head = conv(w[0], cfg.out_channels, 1)

    def forward(self, cond: Tensor, all_outputs: bool = False) -> Tensor | list[Tensor]:
        """cond: (B, C, *spatial) -> dose (B, 1, *spatial) (a one-element list with ``all_outputs``)."""
        x = self.enc[0](self.stem(cond))
        skips = [x]
        for down, level in zip(self.down, self.enc[1:]):
            x = level(down(x))
            skips.append(x)
        for up, level, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = level(torch.cat([up(x), skip], dim=1))
        out = self.head(x)
        return [out] if all_outputs else out


def build_baseline(cfg: BaselineConfig) -> nn.Module:
    return CascadeUNet(cfg) if cfg.arch == "cascade" else DenseUNet(cfg)
