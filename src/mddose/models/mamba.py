"""The 2D Mamba block of Fig. 2(d) and the SSM layer inside it.

Fig. 2(d) box by box (a whole box, with its patch embedding and time embedding, is one
:class:`~mddose.models.stage.Stage` whose blocks are the :class:`MambaBlock` s of this file):

* patch embedding, (B, C, H, W) -> (B, L, C) with L = H·W: ``Stage.embed`` then the flatten in :class:`MambaBlock`;
* layer norm: RMSNorm, pre-norm (as the published code);
* branch 1, linear expansion ×2 -> depthwise conv1d -> SiLU -> SSM: ``in_proj`` (first half), ``conv``,
  :class:`SelectiveSSM`;
* branch 2, linear -> SiLU: ``in_proj`` (second half) -> SiLU;
* Hadamard product, projection back (``out_proj``), residual (with drop-path), reshape to (B, C, H, W);
* time embedding added: ``Stage`` adds its SiLU + Linear of the Fourier time features to the stage output.

Scan order. An image is not causal, so one left-to-right scan would let a pixel see only the pixels above and to
its left. We scan the row-major token sequence forwards and backwards with separate SSM parameters (and separate
conv1d, as the published bidirectional "v2" Mamba) and sum the two, so every pixel sees the whole image after one
block. ``scan_order="rows+cols"`` adds the column-major order forwards and backwards (four paths), which shortens
the path between vertical neighbours from W tokens to 1; it is an option, off in the presets, because it doubles
the scan cost and the published model uses rows only. All paths go through one scan call: path k is B/C group k.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mddose.models.config import SCAN_ORDERS, ModelConfig
from mddose.models.layers import DropPath, LearnedPositionEmbedding, apply_rotary_2d, drop_path_rates
from mddose.models.ssm import scan_function
from mddose.models.ssm_kernel import conv_silu_cpu, two_way_cpu


class SelectiveSSM(nn.Module):
    """The SSM layer: input-dependent Δ, B, C projections, A = -exp(A_log), skip D, for ``paths`` scan paths.

    ``kind="s6"`` (Mamba-1): Δ per channel, A (channels, N). ``kind="ssd"`` (Mamba-2): channels split into heads
    of ``head_dim``, Δ and A one per head. Each path has its own parameters (leading ``paths`` axis).
    """

    def __init__(
        self,
        channels: int,
        d_state: int,
        dt_rank: int,
        paths: int,
        kind: str = "ssd",
        head_dim: int = 16,
        chunk_size: int | None = None,
        backend: str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        if kind == "ssd" and channels % head_dim:
            raise ValueError(f"ssd needs channels ({channels}) divisible by head_dim ({head_dim})")
        self.kind, self.paths, self.chunk_size, self.backend = kind, paths, chunk_size, backend
        self.d_state, self.dt_rank = d_state, dt_rank
        self.heads = channels // head_dim if kind == "ssd" else channels
        n_dt = self.heads  # one Δ per channel (s6) or per head (ssd)
        bound = channels**-0.5
        self.x_proj = nn.Parameter(torch.empty(paths, dt_rank + 2 * d_state, channels).uniform_(-bound, bound))
        self.dt_proj = nn.Parameter(torch.empty(paths, n_dt, dt_rank).uniform_(-(dt_rank**-0.5), dt_rank**-0.5))
        dt = torch.exp(torch.rand(paths, n_dt) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        if kind == "s6":  # S4D-real: A_n = -(n + 1) for every channel
            a = torch.arange(1, d_state + 1, dtype=torch.float32).expand(paths, channels, d_state)
        else:  # Mamba-2: one decay rate per head, uniform in [1, 16]
            a = torch.empty(paths, self.heads).uniform_(1.0, 16.0)
        self.A_log = nn.Parameter(torch.log(a).contiguous())
        self.D = nn.Parameter(torch.ones(paths, channels))
        for param in (self.A_log, self.D, self.dt_bias):  # as the Mamba reference: never weight-decayed
            param._no_weight_decay = True

    def forward(self, u: Tensor, scan_options: dict | None = None) -> Tensor:
        """u: (B, L, K, E), path k's sequence in its own scan order -> y: (B, L, K, E), incl. D·u.

        ``scan_options``: what a scan path takes beyond the common signature (the CPU kernel's path directions,
        :data:`~mddose.models.ssm_kernel.SCAN_OPTIONS_TWO_WAY`)."""
        proj = torch.einsum("blke,kre->blkr", u, self.x_proj)  # (B, L, K, R + 2N)
        dt_low, B, C = torch.split(proj, [self.dt_rank, self.d_state, self.d_state], dim=-1)  # B, C: (B, L, K, N)
        dt = F.softplus(torch.einsum("blkr,khr->blkh", dt_low, self.dt_proj).float() + self.dt_bias)  # (B, L, K, Δ)
        scan = scan_function(self.kind, self.backend, u.device)
        A = -torch.exp(self.A_log.float())
        with torch.autocast(u.device.type, enabled=False):  # the scan accumulates in float32 under bf16 autocast
            y = self._scan(scan, u, dt, A, B, C, scan_options or {})
        return y.reshape(u.shape)  # (B, L, K, E)

    def _scan(self, scan, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, options: dict) -> Tensor:
        if self.kind == "s6":
            return scan(
                rearrange(u, "b l k e -> b l (k e)"),
                rearrange(dt, "b l k e -> b l (k e)"),
                rearrange(A, "k e n -> (k e) n"),
                B,
                C,
                rearrange(self.D, "k e -> (k e)"),
                chunk_size=self.chunk_size,
            )  # (B, L, K·E)
        return scan(
            rearrange(u, "b l k (h p) -> b l (k h) p", h=self.heads),
            rearrange(dt, "b l k h -> b l (k h)"),
            rearrange(A, "k h -> (k h)"),
            B,
            C,
            rearrange(self.D, "k (h p) -> (k h) p", h=self.heads),
            chunk_size=self.chunk_size,
            **options,
        )  # (B, L, K·H, P)


class MambaMixer(nn.Module):
    """Both branches of Fig. 2(d) on a token sequence: (B, L, C) -> (B, L, C); L = H·W in row-major order."""

    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        inner = cfg.expand * dim
        self.paths = SCAN_ORDERS[cfg.scan_order]
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)  # branch 1 and branch 2 expansions
        # one causal depthwise conv per path, all paths stacked along channels
        self.conv = nn.Conv1d(
            self.paths * inner, self.paths * inner, cfg.d_conv, groups=self.paths * inner, padding=cfg.d_conv - 1
        )
        self.ssm = SelectiveSSM(
            inner,
            cfg.d_state,
            cfg.dt_rank or math.ceil(dim / 16),
            self.paths,
            kind=cfg.ssm_kind,
            head_dim=cfg.ssd_head_dim,
            chunk_size=cfg.scan_chunk,
            backend=cfg.scan_backend,
        )
        self.out_proj = nn.Linear(inner, dim, bias=False)
        # the compiled CPU kernel runs the conv beside the scan, and both directions in token order (ssm_kernel.py)
        self.on_kernel = cfg.scan_backend == "cpu_kernel"

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """x: (B, L, C) tokens of an height×width map -> (B, L, C)."""
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        if self.on_kernel and self.paths == 2:
            y = two_way_cpu(u, self.conv, self.ssm)
        else:
            u = torch.stack(self._to_paths(u, height, width), dim=2)  # (B, L, K, E)
            y = self.ssm(conv_silu_cpu(u, self.conv) if self.on_kernel else F.silu(self._causal_conv(u)))
            y = sum(self._from_paths(y.unbind(2), height, width))  # (B, L, E)
        return self.out_proj(y * F.silu(z))

    def _causal_conv(self, u: Tensor) -> Tensor:
        """The depthwise causal conv1d of every path, as d_conv shifted products in the token-major layout.

        u: (B, L, K, E) -> (B, L, K, E). Same weights and result as ``self.conv`` on (B, K·E, L) (whose first L
        outputs are the causal ones), without the two transposes and the slow CPU backward of a grouped conv.
        """
        d, length = self.conv.kernel_size[0], u.shape[1]
        weight = self.conv.weight.view(self.paths, -1, d).to(u.dtype)  # (K, E, d)
        padded = F.pad(u, (0, 0, 0, 0, d - 1, 0))  # d - 1 zeros before the first token
        out = self.conv.bias.view(self.paths, -1).to(u.dtype) + padded[:, :length] * weight[..., 0]
        for k in range(1, d):
            out = torch.addcmul(out, padded[:, k:k + length], weight[..., k])
        return out

    def _to_paths(self, u: Tensor, height: int, width: int) -> list[Tensor]:
        """Row-major forward, backward [, column-major forward, backward]; each (B, L, E)."""
        paths = [u, u.flip(1)]
        if self.paths == 4:
            cols = rearrange(u, "b (h w) e -> b (w h) e", h=height, w=width)
            paths += [cols, cols.flip(1)]
        return paths

    def _from_paths(self, ys: tuple[Tensor, ...], height: int, width: int) -> list[Tensor]:
        """Undo :meth:`_to_paths`, so every output is row-major again."""
        out = [ys[0], ys[1].flip(1)]
        if self.paths == 4:
            out += [rearrange(y, "b (w h) e -> b (h w) e", h=height, w=width) for y in (ys[2], ys[3].flip(1))]
        return out


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block: (B, C, H, W) -> (B, C, H, W).

    ``x = rope(x); x = x + drop_path(mixer(RMSNorm(x)))`` on the flattened tokens. Rotating the residual stream
    before every block is what the published code does (its rotary embedding is applied to both the hidden states
    and the residual at each layer).
    """

    def __init__(self, dim: int, cfg: ModelConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.rope = cfg.rope
        self.norm = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.mixer = MambaMixer(dim, cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        height, width = x.shape[-2:]
        tokens = rearrange(x, "b c h w -> b (h w) c")  # (B, L, C)
        if self.rope:
            tokens = apply_rotary_2d(tokens, height, width)
        # norms in float32: under bf16 autocast the fused kernel needs input and weight of one dtype
        tokens = tokens + self.drop_path(self.mixer(self.norm(tokens.float()), height, width))
        return rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)


class MambaStack(nn.Module):
    """The body of a Mamba stage: position embedding, ``depth`` Mamba blocks, final RMSNorm. (B,C,H,W) -> same."""

    def __init__(self, dim: int, depth: int, grid: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos_embed = LearnedPositionEmbedding(dim, grid) if cfg.pos_embed else nn.Identity()
        self.blocks = nn.ModuleList(MambaBlock(dim, cfg, rate) for rate in drop_path_rates(cfg.drop_path, depth))
        self.norm = nn.RMSNorm(dim, eps=cfg.norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        x = self.pos_embed(x)
        for block in self.blocks:
            x = block(x)
        return rearrange(self.norm(rearrange(x.float(), "b c h w -> b h w c")), "b h w c -> b c h w")
