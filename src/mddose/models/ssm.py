"""Selective state-space scans (paper eqs. 4-7): a plain sequential reference and a fast path for each kind.

In the paper's notation the hidden state y, input w and output x follow ``y' = P y + Q w``, ``x = R y``; here, as in
the Mamba papers, the state is ``h``, the input ``u`` (or ``x``), the output ``y`` and (P, Q, R) are (A, B, C).
Discretised with step Δ (zero-order hold for A, Euler for B as in Mamba): ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``,
``y_t = C_t · h_t + D u_t``. Δ, B and C depend on the input ("selective"); A is negative (the layer stores
``A_log`` and uses ``A = -exp(A_log)``), D is the skip term.

Two kinds, each with a reference (one step per token, written to be read) and a fast path with the same signature:

* ``s6`` (Mamba-1, the paper's layer): diagonal A, one decay per channel and state. Fast path: the sequence is cut
  into chunks of Q tokens; a Q-step scan runs inside all chunks at once (from zero states) to get the state each
  chunk leaves behind, a loop over chunks turns those into the state entering each chunk, and a second Q-step
  scan from the entering states gives the outputs: about 2·sqrt(L) Python steps instead of L, all elementwise.
  Runs of chunks are recomputed in the backward pass (checkpointing), so no (B, L, D, N) tensor for the whole
  sequence is ever kept: memory stays linear in L with a bounded working set (:data:`S6_GROUP_ELEMENTS`).
* ``ssd`` (Mamba-2): one scalar decay per head. Fast path: chunked state-space duality, i.e. inside a chunk an
  attention-like product ``(C Bᵀ ∘ decay mask) X`` and between chunks state passing - nothing but matrix products.

B and C come in ``G`` groups (``(B, L, G, N)``): channels (s6) or heads (ssd) are split into G equal groups that
share B and C. The Mamba layer uses one group per scan path (forward, backward, ...), so all paths run in one call.

All scans compute in float32 and return the input dtype. Lengths that are not a multiple of the chunk are padded
with Δ = 0 (decay 1, no input), which leaves every real output unchanged. Which path runs is resolved once per
(kind, request, device) by :func:`resolve_scan_backend` and logged; ``mamba_ssm`` kernels are used only where that
package happens to be installed and the tensors are on CUDA. ``cpu_kernel`` (ssd on the CPU, on request) is the
recurrence compiled in C++ (:mod:`mddose.models.ssm_kernel`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mddose.models.config import SCAN_BACKENDS, SSM_KINDS
from mddose.models.ssm_kernel import kernel_buildable, ssd_scan_cpu

logger = logging.getLogger(__name__)

#: Decay factors are floored at exp(-60) ~ 1e-26 in the fast paths: far below the float32 resolution of any sum
#: they enter, and no denormal floats (which slow CPU arithmetic down many times; docs/measurements.md).
LOG_DECAY_FLOOR = -60.0
#: Elements of one (batch, tokens, channels, states) working tensor of the s6 fast path, by device type: the
#: sequence is processed (and recomputed in backward) in runs of chunks of this size. Cache-sized on CPU; large
#: on GPU, where fewer, bigger steps win (docs/measurements.md).
S6_GROUP_ELEMENTS = {"cpu": 2**20, "cuda": 2**24}
#: Default ssd chunk length by device type (chosen by measurement: docs/measurements.md).
SSD_CHUNK = {"cpu": 32, "cuda": 64}


# ----------------------------------------------------------------------------------------------------- s6 (Mamba-1)
def selective_scan_s6_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                          chunk_size: int | None = None) -> Tensor:
    """Mamba-1 selective scan, one token at a time (the definition; slow, for tests and reading).

    Args:
        u: (B, L, D) input.  delta: (B, L, D) step sizes Δ > 0 (softplus already applied).
        A: (D, N) negative state matrix diagonal.  B, C: (B, L, G, N), G divides D.  D: (D,) skip.
    Returns:
        y: (B, L, D) in the dtype of ``u``.
    """
    dtype = u.dtype
    u, delta, A, B, C, D = (x.float() for x in (u, delta, A, B, C, D))
    per_group = u.shape[-1] // B.shape[2]
    B = B.repeat_interleave(per_group, dim=2)  # (B, L, D, N)
    C = C.repeat_interleave(per_group, dim=2)  # (B, L, D, N)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t]
        ys.append((h * C[:, t]).sum(-1))
    y = torch.stack(ys, dim=1) + u * D  # (B, L, D)
    return y.to(dtype)


def selective_scan_s6(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int | None = None
) -> Tensor:
    """Mamba-1 selective scan, chunked (same contract as :func:`selective_scan_s6_ref`).

    ``chunk_size`` defaults to about the square root of the tokens in one chunk group.
    """
    dtype = u.dtype
    u, delta, A, B, C, D = (x.float() for x in (u, delta, A, B, C, D))
    batch, length, channels = u.shape
    groups, states = B.shape[2], B.shape[3]
    group_tokens = max(1, S6_GROUP_ELEMENTS.get(u.device.type, 2**22) // (batch * channels * states))
    q = chunk_size or _auto_chunk(min(length, group_tokens))
    pad = -length % q
    cu, cdelta = (_chunks(F.pad(x, (0, 0, 0, pad)), q, "b (c q) (g e) -> q b c g e", g=groups) for x in (u, delta))
    cB, cC = (_chunks(F.pad(x, (0, 0, 0, 0, 0, pad)), q, "b (c q) g n -> q b c g n") for x in (B, C))
    gA = rearrange(A, "(g e) n -> g e n", g=groups)
    per_call = max(1, group_tokens // q)
    h = u.new_zeros(batch, groups, channels // groups, states)  # (B, G, E, N)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (u, delta, A, B, C))
    ys = []
    # split, not slicing: the backward of n slices would write n full-size zero tensors (quadratic in L)
    runs = zip(*(x.split(per_call, dim=2) for x in (cu, cdelta, cB, cC)))
    for u_run, delta_run, B_run, C_run in runs:
        args = (u_run, delta_run, gA, B_run, C_run, h)
        y, h = checkpoint(_s6_chunks, *args, use_reentrant=False) if needs_grad else _s6_chunks(*args)
        ys.append(y)
    y = rearrange(torch.cat(ys, dim=2), "q b c g e -> b (c q) (g e)")[:, :length]  # (B, L, D)
    return (y + u * D).to(dtype)


def _s6_chunks(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """Scan a run of Nc chunks of Q tokens, with E = D / G channels per group.

    Shapes: u, delta (Q, B, Nc, G, E); A (G, E, N); B, C (Q, B, Nc, G, N); h0 (B, G, E, N) the entering state.
    Returns y without the D term, (Q, B, Nc, G, E), and the state after the last chunk, (B, G, E, N).
    """
    log_decay = delta[..., None] * A  # (Q, B, Nc, G, E, N)
    decay = _exp_decay(log_decay)
    drive = (delta * u)[..., None] * B[..., None, :]  # (Q, B, Nc, G, E, N)
    steps = list(zip(decay.unbind(0), drive.unbind(0)))  # unbind, not indexing: cheaper backward
    # 1) the state each chunk leaves behind from a zero start, all chunks at once
    h = torch.zeros_like(drive[0])  # (B, Nc, G, E, N)
    for decay_i, drive_i in steps:
        h = torch.addcmul(drive_i, decay_i, h)  # decay_i * h + drive_i in one pass
    # 2) across chunks: the state entering each chunk
    chunk_decay = _exp_decay(log_decay.sum(0))  # (B, Nc, G, E, N)
    carry, entering = h0, []
    for decay_k, state_k in zip(chunk_decay.unbind(1), h.unbind(1)):
        entering.append(carry)
        carry = torch.addcmul(state_k, decay_k, carry)
    # 3) the true states, starting every chunk from its entering state
    h = torch.stack(entering, dim=1)  # (B, Nc, G, E, N)
    states = []
    for decay_i, drive_i in steps:
        h = torch.addcmul(drive_i, decay_i, h)
        states.append(h)
    return torch.einsum("qbkgen,qbkgn->qbkge", torch.stack(states), C), carry


# ------------------------------------------------------------------------------------------------------ ssd (Mamba-2)
def ssd_scan_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                 chunk_size: int | None = None) -> Tensor:
    """Mamba-2 scan (scalar decay per head), one token at a time.

    Args:
        x: (B, L, H, P) input, H heads of P channels.  dt: (B, L, H) step sizes Δ > 0.  A: (H,) negative.
        B, C: (B, L, G, N), G divides H.  D: (H, P) skip.
    Returns:
        y: (B, L, H, P) in the dtype of ``x``.
    """
    dtype = x.dtype
    x, dt, A, B, C, D = (t.float() for t in (x, dt, A, B, C, D))
    per_group = x.shape[2] // B.shape[2]
    B = B.repeat_interleave(per_group, dim=2)  # (B, L, H, N)
    C = C.repeat_interleave(per_group, dim=2)  # (B, L, H, N)
    h = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[3])  # (B, H, P, N)
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (B, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1) + x * D  # (B, L, H, P)
    return y.to(dtype)


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int | None = None
) -> Tensor:
    """Mamba-2 scan by chunked state-space duality (same contract as :func:`ssd_scan_ref`).

    ``chunk_size`` defaults to :data:`SSD_CHUNK` for the device (in-chunk work grows with it, the loop over
    chunks shrinks).
    """
    dtype = x.dtype
    x, dt, A, B, C, D = (t.float() for t in (x, dt, A, B, C, D))
    length, groups = x.shape[1], B.shape[2]
    q = chunk_size or SSD_CHUNK.get(x.device.type, 64)
    pad = -length % q
    xc = _chunks(F.pad(x, (0, 0, 0, 0, 0, pad)), q, "b (c q) (g k) p -> b c g k q p", g=groups)
    dtc = _chunks(F.pad(dt, (0, 0, 0, pad)), q, "b (c q) (g k) -> b c g k q", g=groups)
    Bc, Cc = (_chunks(F.pad(t, (0, 0, 0, 0, 0, pad)), q, "b (c q) g n -> b c g 1 q n") for t in (B, C))
    a = dtc * rearrange(A, "(g k) -> g k 1", g=groups)  # (B, Nc, G, Hg, Q) log-decay per step, <= 0
    xdt = xc * dtc[..., None]  # (B, Nc, G, Hg, Q, P)
    cum = torch.cumsum(a, dim=-1)  # (B, Nc, G, Hg, Q) log-decay from chunk start to each step
    decay = _causal_decay(cum)  # (B, Nc, G, Hg, Q, Q): [i, j] = decay from step j to step i, 0 for j > i
    # 1) inside each chunk: y_i = sum_{j <= i} (C_i . B_j) decay[i, j] dt_j x_j   (attention-like, causal)
    scores = Cc @ Bc.transpose(-1, -2)  # (B, Nc, G, 1, Q, Q), shared by the heads; decay masks it
    y = (scores * decay) @ xdt  # (B, Nc, G, Hg, Q, P)
    # 2) state each chunk leaves behind, from a zero start: sum_j decay[last, j] dt_j x_j B_j^T
    chunk_states = (xdt * decay[..., -1, :, None]).transpose(-1, -2) @ Bc  # (B, Nc, G, Hg, P, N)
    # 3) across chunks: the state entering each chunk
    start = _entering_states(cum[..., -1], chunk_states)  # (B, Nc, G, Hg, P, N)
    # 4) contribution of the entering state: exp(cum_i) C_i . h_start
    y = y + (Cc @ start.transpose(-1, -2)) * _exp_decay(cum)[..., None]  # (B, Nc, G, Hg, Q, P)
    y = rearrange(y, "b c g k q p -> b (c q) (g k) p")[:, :length]  # (B, L, H, P)
    return (y + x * D).to(dtype)


def _entering_states(log_decay: Tensor, states: Tensor, block: int = 32) -> Tensor:
    """Solve ``h_k = exp(log_decay_k) h_{k-1} + states_k`` (h_{-1} = 0) and return ``h_{k-1}`` for every k.

    log_decay: (B, K, G, Hg), one scalar per chunk and head; states: (B, K, G, Hg, P, N) -> (B, K, G, Hg, P, N).
    The same duality once more, one level up: inside blocks of ``block`` chunks a (block × block) decay matrix
    times the states, then a loop over blocks - K / block Python steps instead of K.
    """
    chunks = states.shape[1]
    block = min(block, chunks)
    pad = -chunks % block
    ld = rearrange(F.pad(log_decay, (0, 0, 0, 0, 0, pad)), "b (s q) g k -> b s g k q", q=block)
    st = rearrange(F.pad(states, (0, 0, 0, 0, 0, 0, 0, 0, 0, pad)), "b (s q) g k p n -> b s g k q (p n)", q=block)
    cum = torch.cumsum(ld, dim=-1)
    local = _causal_decay(cum) @ st  # (B, S, G, Hg, Q, P·N) from zero
    block_decay = _exp_decay(cum[..., -1:])  # (B, S, G, Hg, 1)
    carry, entering = torch.zeros_like(local[:, 0, ..., 0, :]), []
    for decay_s, last_s in zip(block_decay.unbind(1), local[..., -1, :].unbind(1)):
        entering.append(carry)
        carry = torch.addcmul(last_s, decay_s, carry)
    after = local + _exp_decay(cum)[..., None] * torch.stack(entering, dim=1)[..., None, :]
    after = rearrange(after, "b s g k q (p n) -> b (s q) g k p n", n=states.shape[-1])[:, :chunks]
    return torch.cat([torch.zeros_like(after[:, :1]), after[:, :-1]], dim=1)  # state after chunk k-1


def _causal_decay(cum: Tensor) -> Tensor:
    """Decay matrices from cumulative log-decays: (..., Q) -> (..., Q, Q), [i, j] = exp(cum_i - cum_j) for j <= i.

    Exactly 0 above the diagonal (exp of -inf), so the matrix is also the causal mask. One subtraction per entry;
    its float32 rounding is relative to |cum|, i.e. below 1e-4 of a decay even after thousands of log-units.
    """
    q = cum.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=cum.device).tril()
    seg = (cum[..., :, None] - cum[..., None, :]).clamp(min=LOG_DECAY_FLOOR)
    return torch.exp(seg.masked_fill(~causal, float("-inf")))


def _exp_decay(log_decay: Tensor) -> Tensor:
    """exp of a log-decay (<= 0), floored at exp(:data:`LOG_DECAY_FLOOR`)."""
    return torch.exp(log_decay.clamp(min=LOG_DECAY_FLOOR))


def _chunks(t: Tensor, q: int, pattern: str, **sizes: int) -> Tensor:
    """Rearrange a padded sequence tensor into chunks of ``q`` tokens with an einops ``pattern``."""
    return rearrange(t, pattern, q=q, **sizes).contiguous()


def _auto_chunk(tokens: int) -> int:
    """A power of two near sqrt(tokens), in [8, 256]: balances the in-chunk and across-chunk loops."""
    return int(min(256, max(8, 2 ** round(math.log2(max(tokens, 1)) / 2))))


# ----------------------------------------------------------------------------------------------- mamba_ssm kernels
def _s6_mamba_ssm(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int | None = None
) -> Tensor:
    """``mamba_ssm``'s fused CUDA selective scan behind the :func:`selective_scan_s6` contract."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    y = selective_scan_fn(
        rearrange(u, "b l d -> b d l").contiguous(),
        rearrange(delta, "b l d -> b d l").contiguous(),
        A.float().contiguous(),
        rearrange(B, "b l g n -> b g n l").contiguous(),
        rearrange(C, "b l g n -> b g n l").contiguous(),
        D.float(),
    )
    return rearrange(y, "b d l -> b l d")


def _ssd_mamba_ssm(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int | None = None
) -> Tensor:
    """``mamba_ssm``'s Triton chunked SSD behind the :func:`ssd_scan` contract."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(
        x.contiguous(), dt.contiguous(), A.float(), B.contiguous(), C.contiguous(), chunk_size or 64, D=D.float()
    )


_SCANS: dict[tuple[str, str], Callable[..., Tensor]] = {
    ("s6", "reference"): selective_scan_s6_ref,
    ("s6", "torch"): selective_scan_s6,
    ("s6", "mamba_ssm"): _s6_mamba_ssm,
    ("ssd", "reference"): ssd_scan_ref,
    ("ssd", "torch"): ssd_scan,
    ("ssd", "mamba_ssm"): _ssd_mamba_ssm,
    ("ssd", "cpu_kernel"): ssd_scan_cpu,
}


def mamba_ssm_available() -> bool:
    """Whether the optional ``mamba_ssm`` package is importable (it is never required)."""
    return importlib.util.find_spec("mamba_ssm") is not None


@functools.cache
def resolve_scan_backend(kind: str, requested: str, device_type: str) -> str:
    """Pick the scan path once per (kind, requested backend, device type) and log the choice.

    ``auto`` means ``mamba_ssm`` on CUDA where that package is installed, otherwise the pure-PyTorch fast path.
    """
    if kind not in SSM_KINDS:
        raise ValueError(f"unknown SSM kind {kind!r}; expected one of {SSM_KINDS}")
    if requested not in SCAN_BACKENDS:
        raise ValueError(f"unknown scan backend {requested!r}; expected one of {SCAN_BACKENDS}")
    kernels = device_type == "cuda" and mamba_ssm_available()
    if requested == "mamba_ssm" and not kernels:
        raise ValueError("scan backend 'mamba_ssm' needs the mamba_ssm package and CUDA tensors")
    if requested == "cpu_kernel" and (kind != "ssd" or device_type != "cpu" or not kernel_buildable()):
        raise ValueError("scan backend 'cpu_kernel' runs the ssd scan on the CPU and needs a C++ compiler and ninja")
    chosen = ("mamba_ssm" if kernels else "torch") if requested == "auto" else requested
    logger.info("selective scan %s on %s: %s path (requested %s)", kind, device_type, chosen, requested)
    return chosen


def scan_function(kind: str, backend: str, device: torch.device) -> Callable[..., Tensor]:
    """The scan callable for ``kind`` (``s6`` or ``ssd``) on ``device`` under the ``backend`` request."""
    return _SCANS[(kind, resolve_scan_backend(kind, backend, device.type))]
