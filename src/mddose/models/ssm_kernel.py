"""The SSD scan compiled for the CPU: one sequential pass per (batch, head) in C++ (``csrc/ssd_scan.cpp``),
with the mixer's causal conv1d + SiLU beside it.

Same contract as :func:`mddose.models.ssm.ssd_scan` (outputs and gradients), without the chunked
formulation's full-size temporaries: the recurrence runs with its P × N state in registers and cache, and
the backward pass recomputes states from a checkpoint every 64 tokens. Built on first use with torch's C++
extension loader (a C++ compiler and ninja are needed; the build is cached per machine, its time is in
docs/bench/networks.md) and used only on request (``scan_backend="cpu_kernel"``).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from mddose.errors import MddoseError

SOURCE = Path(__file__).parent / "csrc" / "ssd_scan.cpp"
CFLAGS = ("-O3", "-march=native", "-fopenmp-simd")  # -march=native: the build is per CPU


def kernel_buildable() -> bool:
    """Whether this machine can build the kernel (a C++ compiler and ninja on the PATH)."""
    return shutil.which("ninja") is not None and any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def kernel_build_problem() -> str | None:
    """None when the kernel builds (or is built) on this machine, else the first line of why not."""
    if not kernel_buildable():
        return "no C++ compiler or ninja on the PATH"
    try:
        _module()
    except Exception as e:  # noqa: BLE001 - a compiler's failure can take many forms; its message is what counts
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else ''}"
    return None


@functools.cache
def _module() -> ModuleType:
    """Build (or load the cached build of) the kernel for this CPU."""
    from torch.utils.cpp_extension import load

    if not kernel_buildable():
        raise MddoseError("scan backend 'cpu_kernel' needs a C++ compiler and ninja")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else platform.processor()
    key = hashlib.sha256((SOURCE.read_text() + flags).encode()).hexdigest()[:12]  # -march=native: per CPU
    try:
        return load(name=f"mddose_ssd_scan_{key}", sources=[str(SOURCE)],
                    extra_cflags=list(CFLAGS), verbose=False)
    except Exception as e:  # noqa: BLE001 - compiler and linker failures come as several exception types
        first = (str(e).strip().splitlines() or [""])[0]
        raise MddoseError(f"scan backend 'cpu_kernel': building the kernel failed ({type(e).__name__}: {first})",
                          SOURCE) from None


class _SSDScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, paths: int,
                reverse_odd: bool) -> Tensor:
        y, saved = _module().forward(x, dt, A, B, C, D, paths, reverse_odd)
        ctx.save_for_backward(x, dt, A, B, C, D, saved)
        ctx.paths, ctx.reverse_odd = paths, reverse_odd
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, dt, A, B, C, D, saved = ctx.saved_tensors
        dx, ddt, dA, dB, dC, dD = _module().backward(dy.contiguous(), x, dt, A, B, C, D, saved, ctx.paths,
                                                     ctx.reverse_odd)
        groups = B.shape[2]
        dB, dC = (t.unflatten(2, (groups, -1)).sum(3) for t in (dB, dC))  # per head -> per group
        return dx, ddt, dA, dB, dC, dD, None, None


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor, bias: Tensor, reverse_odd: bool) -> Tensor:
        ctx.save_for_backward(u, weight, bias)
        ctx.reverse_odd = reverse_odd
        return _module().conv_silu_forward(u, weight, bias, reverse_odd)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, weight, bias = ctx.saved_tensors
        return (*_module().conv_silu_backward(grad.contiguous(), u, weight, bias, ctx.reverse_odd), None)


def causal_conv_silu_cpu(u: Tensor, weight: Tensor, bias: Tensor, reverse_odd: bool = False) -> Tensor:
    """SiLU of the depthwise causal conv1d over the tokens, float32 (one pass each way instead of d shifted
    products, a pad and the SiLU's own passes).

    u (B, L, E), weight (K·E, d), bias (K·E) -> (B, L, K·E): K paths read the same input with their own weights
    (K = 1 when u already holds every path). With ``reverse_odd`` the odd paths run the causal conv of the reversed
    sequence, read in the original token order (the backward scan direction without flipped copies)."""
    return _ConvSiLU.apply(*(t.float().contiguous() for t in (u, weight, bias)), reverse_odd)


def ssd_scan_cpu(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                 chunk_size: int | None = None, paths: int = 1, reverse_odd: bool = False) -> Tensor:
    """Mamba-2 scan on the CPU kernel (same contract as :func:`~mddose.models.ssm.ssd_scan_ref`);
    ``chunk_size`` is accepted for the common signature and ignored. The H heads form ``paths`` equal blocks;
    with ``reverse_odd`` the heads of the odd blocks scan from the last token to the first (their outputs stay
    in token order)."""
    dtype = x.dtype
    args = [t.float().contiguous() for t in (x, dt, A, B, C, D)]
    return _SSDScan.apply(*args, paths, reverse_odd).to(dtype)


# ------------------------------------------------------------------------------------ the mixer's steps on the kernel
#: The scan options of :func:`two_way_cpu`: two paths, the odd one scanned from the last token to the first.
SCAN_OPTIONS_TWO_WAY = {"paths": 2, "reverse_odd": True}


def conv_silu_cpu(u: Tensor, conv: torch.nn.Conv1d) -> Tensor:
    """SiLU of a mixer's depthwise causal conv1d of every path in one compiled pass: u (B, L, K, E) -> same."""
    d = conv.kernel_size[0]
    return causal_conv_silu_cpu(u.flatten(2), conv.weight.view(-1, d), conv.bias).view(u.shape)


def two_way_cpu(u: Tensor, conv: torch.nn.Conv1d, ssm) -> Tensor:
    """Both row-major directions of a mixer on the kernel, in token order throughout: the backward path's conv and
    scan run from the last token to the first inside the kernel, so no flipped copy is made or undone.

    u: (B, L, E) -> (B, L, E), the sum of the two directions; ``ssm`` is the mixer's SSM, called on (B, L, 2, E)
    with :data:`SCAN_OPTIONS_TWO_WAY`."""
    d = conv.kernel_size[0]
    act = causal_conv_silu_cpu(u, conv.weight.view(-1, d), conv.bias, reverse_odd=True)
    return ssm(act.unflatten(2, (2, -1)), SCAN_OPTIONS_TWO_WAY).sum(2)
