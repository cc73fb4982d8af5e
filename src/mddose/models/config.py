"""Network configuration: one dataclass, saved as JSON, with presets and the ablation variants.

Presets: ``paper`` follows the published MD-Dose code (128×128 input, 3×3 stems to 24 channels, encoder widths
48/96/192/384 with depths 4/6/6/8, decoder widths 192/96/48/48 with depths 6/6/4/4, bidirectional Mamba with
16 states, conv width 4, expansion 2, drop-path 0.1, 96-d Fourier time features at scale 30); ``small`` and
``tiny`` keep the skeleton with fewer channels and blocks, laid out for a CPU (:data:`CPU_LAYOUT`: Mamba only at
the coarse levels); ``paper`` stays the pure-Mamba layout.

The SSM kind defaults to ``ssd`` (Mamba-2 chunked scan, fast everywhere); ``ssm_kind="s6"`` is the paper's
Mamba-1 layer. Every row of the paper's Tables III and IV is one config from :func:`ablation_configs`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mddose.atomic import write_json
from mddose.errors import MddoseError
from mddose.typecheck import describe, hints, matches

BLOCK_TYPES = ("mamba", "swin", "conv")
SSM_KINDS = ("s6", "ssd")  # Mamba-1 (the paper's layer), Mamba-2 (chunked, the default)
SCAN_BACKENDS = ("auto", "torch", "reference", "mamba_ssm", "cpu_kernel")
SCAN_ORDERS = {"rows": 2, "rows+cols": 4}  # scan order -> scan paths (each order forwards and backwards)
ENCODER_TYPES = ("none", *BLOCK_TYPES)
FUSION_TYPES = ("add", "transformer")  # how the structure encoder meets the denoiser at each level
PRESETS = ("paper", "small", "tiny")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the noise predictor's architecture (see the module docstring for the presets)."""

    name: str = "paper"
    in_channels: int = 1  # dose channels of x_t
    cond_channels: int = 9  # structure channels: CT, target, 7 OARs (2.5D inputs add more)
    out_channels: int = 1  # predicted noise
    image_size: int = 128  # size the position embeddings are learned at; other multiples of 2**levels also run
    stem_channels: int = 24
    enc_widths: tuple[int, ...] = (48, 96, 192, 384)
    enc_depths: tuple[int, ...] = (4, 6, 6, 8)
    dec_widths: tuple[int, ...] = (192, 96, 48, 48)
    dec_depths: tuple[int, ...] = (6, 6, 4, 4)
    denoiser_block: str = "mamba"  # mamba | swin | conv
    encoder_block: str = "mamba"  # none (structures concatenated to x_t) | mamba | swin | conv
    # add (MD-Dose: the structure features added level by level) | transformer (the DoseDiff-like network:
    # concatenation, 1×1 conv and a Swin pair per level, models/fusion.py)
    fusion: str = "add"
    # Mamba where it pays: the finest ``conv_levels`` resolution levels (0 = full size, 1 = half, ...) use residual
    # convolutions in the denoiser and the structure encoder whatever the block types above say (0: none)
    conv_levels: int = 0
    # Mamba
    ssm_kind: str = "ssd"  # ssd (Mamba-2) | s6 (Mamba-1, the paper's)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(width / 16)
    ssd_head_dim: int = 16
    scan_order: str = "rows"  # rows (forward + backward) | rows+cols (also column-major, four paths)
    scan_chunk: int | None = None  # None: automatic
    scan_backend: str = "auto"  # auto | torch | reference | mamba_ssm
    pos_embed: bool = True
    rope: bool = True
    # Swin
    window_size: int = 8
    attn_head_dim: int = 32  # heads = the largest divisor of the width up to width / attn_head_dim
    mlp_ratio: float = 4.0
    # time and regularisation
    time_embed_dim: int = 96
    fourier_scale: float = 30.0
    num_timesteps: int = 1000
    drop_path: float = 0.1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("enc_widths", "enc_depths", "dec_widths", "dec_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problem = self.problem()
        if problem:
            raise ValueError(f"invalid model config {self.name!r}: {problem}")

    @property
    def levels(self) -> int:
        """Number of down-sampling levels (4 in the paper)."""
        return len(self.enc_widths)

    def block_at(self, kind: str, level: int) -> str:
        """The block type a stage of ``kind`` (the denoiser's or encoder's) uses at resolution ``level`` (0 = full)."""
        return "conv" if level < self.conv_levels else kind

    @property
    def has_positions(self) -> bool:
        """Whether some stage adds absolute positions (Mamba stages with pos_embed or rope)."""
        return bool(self.mamba_widths()) and (self.pos_embed or self.rope)

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (16 for four levels)."""
        return 2**self.levels

    def problem(self) -> str | None:
        """The first inconsistency in the settings, or None."""
        n = self.levels
        if n < 1 or not len(self.enc_depths) == len(self.dec_widths) == len(self.dec_depths) == n:
            return "enc_widths, enc_depths, dec_widths and dec_depths need the same length >= 1"
        if self.denoiser_block not in BLOCK_TYPES:
            return f"denoiser_block {self.denoiser_block!r} is not one of {BLOCK_TYPES}"
        if self.encoder_block not in ENCODER_TYPES:
            return f"encoder_block {self.encoder_block!r} is not one of {ENCODER_TYPES}"
        if self.fusion not in FUSION_TYPES:
            return f"fusion {self.fusion!r} is not one of {FUSION_TYPES}"
        if self.fusion != "add" and self.encoder_block == "none":
            return f"fusion {self.fusion!r} fuses the structure encoder's features: encoder_block must not be 'none'"
        for name, allowed in (("ssm_kind", SSM_KINDS), ("scan_order", tuple(SCAN_ORDERS)),
                              ("scan_backend", SCAN_BACKENDS)):
            if getattr(self, name) not in allowed:
                return f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
        if not 0 <= self.conv_levels <= n + 1:
            return f"conv_levels {self.conv_levels} is not in [0, {n + 1}]"
        if self.image_size % self.size_multiple:
            return f"image_size {self.image_size} is not a multiple of {self.size_multiple}"
        if min(self.enc_widths + self.dec_widths + (self.stem_channels,)) < 1 or min(self.enc_depths) < 1:
            return "widths and encoder depths must be positive"
        if any(w % 2 for w in (self.enc_widths[-1], *self.dec_widths[:-1])):
            return "widths feeding an up-sampling (last encoder, all but the last decoder) must be even"
        if self.time_embed_dim % 2:
            return "time_embed_dim must be even"
        widths = self.mamba_widths()
        if widths:
            if self.rope and any(w % 4 for w in widths):
                return "Mamba widths must be multiples of 4 for the 2D rotary embedding"
            if self.ssm_kind == "ssd" and any(self.expand * w % self.ssd_head_dim for w in widths):
                return f"expand × width must be a multiple of ssd_head_dim={self.ssd_head_dim}"
        return None

    def mamba_widths(self) -> tuple[int, ...]:
        """Widths of the stages built of Mamba blocks (denoiser encoder and decoder, structure encoder)."""
        n = self.levels
        enc = [w for i, w in enumerate(self.enc_widths)
               if "mamba" in (self.block_at(self.denoiser_block, i + 1), self.block_at(self.encoder_block, i + 1))]
        dec = [w for j, w in enumerate(self.dec_widths) if self.block_at(self.denoiser_block, n - 1 - j) == "mamba"]
        return tuple(enc + dec)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> ModelConfig:
        """Build from a dict; unknown keys or bad values raise :class:`MddoseError` naming ``source``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MddoseError(f"unknown model config keys {unknown}", source)
        annotations = hints(cls)
        for key, value in data.items():
            if not matches(value, annotations[key]):
                raise MddoseError(f"model.{key}: expected {describe(annotations[key])}, got {value!r}", source)
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise MddoseError(str(e), source) from e

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a config written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise MddoseError("model config file not found", path) from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MddoseError(f"cannot read model config JSON: {e}", path) from e
        if not isinstance(data, dict):
            raise MddoseError("model config JSON must be an object", path)
        return cls.from_dict(data, source=path)


#: The layout of the ``small`` and ``tiny`` presets, "Mamba where it pays" (docs/experiments/cpu-layout.md):
#: convolutions at the two finest levels (128², 64²) and 32², Mamba at 16² and 8² where tokens are few and a
#: global receptive field is cheap; no absolute positions, so the network can train on crops and predict on
#: any window; 32-channel SSD heads.
CPU_LAYOUT: dict[str, Any] = {"conv_levels": 3, "pos_embed": False, "rope": False, "ssd_head_dim": 32}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ``paper``, ``small`` or ``tiny`` configuration, with optional field overrides."""
    if name == "paper":
        base = ModelConfig()
    elif name == "small":
        base = ModelConfig(
            name="small",
            stem_channels=16,
            enc_widths=(32, 64, 128, 256),
            enc_depths=(2, 2, 2, 2),
            dec_widths=(128, 64, 32, 32),
            dec_depths=(2, 2, 2, 2),
            **CPU_LAYOUT,
        )
    elif name == "tiny":
        base = ModelConfig(
            name="tiny",
            stem_channels=8,
            enc_widths=(16, 32, 64, 128),
            enc_depths=(1, 1, 1, 1),
            dec_widths=(64, 32, 16, 16),
            dec_depths=(1, 1, 1, 1),
            time_embed_dim=32,
            **CPU_LAYOUT,
        )
    else:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    return base.replace(**overrides) if overrides else base


def ablation_configs(base: ModelConfig) -> dict[str, ModelConfig]:
    """Every row of Tables III and IV as a config derived from ``base``, by row name.

    Table III (denoiser block, Mamba structure encoder): ``table3-conv``, ``table3-swin``, ``table3-mamba``.
    Table IV (Mamba denoiser, structure encoder): ``table4-none`` (structures concatenated to the noisy dose),
    ``table4-conv``, ``table4-swin``, ``table4-mamba``. The two Mamba/Mamba rows are the same network.
    """
    rows = {f"table3-{b}": dict(denoiser_block=b, encoder_block="mamba") for b in ("conv", "swin", "mamba")}
    rows |= {f"table4-{e}": dict(denoiser_block="mamba", encoder_block=e) for e in ("none", "conv", "swin", "mamba")}
    return {row: base.replace(name=f"{base.name}-{row}", **changes) for row, changes in rows.items()}


def layout_configs(base: ModelConfig) -> dict[str, ModelConfig]:
    """Where Mamba pays, as three rows on ``base``'s widths: ``mamba`` everywhere (the paper's layout), the
    ``hybrid`` (convolutions at the finest levels: ``base.conv_levels``, else :data:`CPU_LAYOUT`'s), ``conv``
    everywhere (the all-conv twin). The block types of denoiser and structure encoder change together."""
    hybrid = base.conv_levels or CPU_LAYOUT["conv_levels"]
    return {"mamba": base.replace(name=f"{base.name}-mamba", denoiser_block="mamba", encoder_block="mamba",
                                  conv_levels=0),
            "hybrid": base.replace(name=f"{base.name}-hybrid", denoiser_block="mamba", encoder_block="mamba",
                                   conv_levels=hybrid),
            "conv": base.replace(name=f"{base.name}-conv", denoiser_block="conv", encoder_block="conv")}
