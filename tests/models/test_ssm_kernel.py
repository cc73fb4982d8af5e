"""The compiled CPU scan equals the sequential reference (values and gradients, on and off its 64-token
checkpoint segments), keeps the input dtype, floors decays as the torch path does, and runs in a Mamba block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mddose.models.config import preset
from mddose.models.mamba import MambaBlock
from mddose.models.ssm import resolve_scan_backend, scan_function, ssd_scan, ssd_scan_ref
from mddose.models.ssm_kernel import kernel_build_problem, ssd_scan_cpu

_PROBLEM = kernel_build_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"the CPU scan kernel cannot be built here: {_PROBLEM}")
TOL = 1e-5  # relative to the largest magnitude of each compared tensor, float32


def _relative_error(fast: torch.Tensor, ref: torch.Tensor) -> float:
    return ((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _inputs(length: int, seed: int, heads: int = 4, groups: int = 2, head_dim: int = 5, states: int = 3):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, length, heads, head_dim, generator=g)
    delta = F.softplus(torch.randn(2, length, heads, generator=g))
    A = -(torch.rand(heads, generator=g) * 15 + 1)
    B, C = (torch.randn(2, length, groups, states, generator=g) for _ in range(2))
    D = torch.randn(heads, head_dim, generator=g)
    return [x.requires_grad_() for x in (u, delta, A, B, C, D)]


@pytest.mark.parametrize(("length", "head_dim", "states"),
                         [(1, 5, 3), (5, 5, 3), (64, 5, 3), (65, 5, 3), (130, 5, 3), (301, 5, 3),
                          (130, 16, 16), (65, 32, 16), (70, 64, 8)])  # 16/32/64: the kernel's compiled head sizes
def test_kernel_equals_reference(length: int, head_dim: int, states: int) -> None:
    inputs = _inputs(length, seed=length, head_dim=head_dim, states=states)
    ref, fast = ssd_scan_ref(*inputs), ssd_scan_cpu(*inputs)
    assert fast.shape == ref.shape and _relative_error(fast, ref) < TOL
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    fast_grads = torch.autograd.grad(fast, inputs, grad_out)
    for name, g_fast, g_ref in zip(("u", "delta", "A", "B", "C", "D"), fast_grads, ref_grads):
        if name == "A" and length == 1:  # nothing decays before the first token
            assert g_fast.abs().max() == 0 == g_ref.abs().max()
            continue
        assert _relative_error(g_fast, g_ref) < TOL, f"gradient of {name}"


def test_kernel_keeps_dtype_and_floors_decays_as_the_torch_path() -> None:
    u, delta, A, B, C, D = (x.detach() for x in _inputs(70, seed=3))
    A = torch.full_like(A, -1e4)  # every step's decay below exp(-60): floored
    leaves = [x.clone().requires_grad_() for x in (u, delta, A, B, C, D)]
    fast, torch_path = ssd_scan_cpu(*leaves), ssd_scan(*leaves, chunk_size=16)
    assert _relative_error(fast, torch_path) < TOL
    grads = torch.autograd.grad(fast.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads) and grads[2].abs().max() == 0  # A: held by the floor
    half = ssd_scan_cpu(*(x.bfloat16() for x in (u, delta, A, B, C, D)))
    assert half.dtype == torch.bfloat16


def test_backend_choice() -> None:
    assert resolve_scan_backend("ssd", "cpu_kernel", "cpu") == "cpu_kernel"
    assert scan_function("ssd", "cpu_kernel", torch.device("cpu")) is ssd_scan_cpu
    for kind, device in (("s6", "cpu"), ("ssd", "cuda")):
        with pytest.raises(ValueError, match="cpu_kernel"):
            resolve_scan_backend(kind, "cpu_kernel", device)


@pytest.mark.parametrize("order", ["rows", "rows+cols"])
def test_block_on_the_kernel_equals_the_reference_block(order: str) -> None:
    """A whole Mamba block with either scan: two paths (in token order on the kernel) or four (flipped copies)."""
    outs = {}
    for backend in ("reference", "cpu_kernel"):
        torch.manual_seed(0)
        block = MambaBlock(16, preset("tiny").replace(conv_levels=0, ssd_head_dim=8, scan_backend=backend,
                                                       scan_order=order))
        x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = block(x)
        outs[backend] = (y, torch.autograd.grad(y.square().sum(), [x, *block.parameters()]))
    (y_ref, g_ref), (y_fast, g_fast) = outs["reference"], outs["cpu_kernel"]
    assert _relative_error(y_fast, y_ref) < TOL
    assert all(_relative_error(a, b) < 1e-4 for a, b in zip(g_fast, g_ref))


@pytest.mark.parametrize("length", [1, 3, 70])
def test_conv_silu_kernel_equals_the_torch_mixer_conv(length: int) -> None:
    """The compiled causal conv1d + SiLU against the mixer's own shifted products, values and gradients."""
    from mddose.models.mamba import MambaMixer
    from mddose.models.ssm_kernel import causal_conv_silu_cpu

    torch.manual_seed(0)
    mixer = MambaMixer(8, preset("tiny").replace(conv_levels=0, ssd_head_dim=8))
    u = torch.randn(2, length, 2, 16, requires_grad=True)  # (B, L, K paths, E)
    d = mixer.conv.kernel_size[0]
    ref = F.silu(mixer._causal_conv(u))
    fast = causal_conv_silu_cpu(u.flatten(2), mixer.conv.weight.view(-1, d), mixer.conv.bias).view(u.shape)
    assert _relative_error(fast, ref) < TOL
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    leaves = [u, mixer.conv.weight, mixer.conv.bias]
    for g_fast, g_ref in zip(torch.autograd.grad(fast, leaves, grad_out), torch.autograd.grad(ref, leaves, grad_out)):
        assert _relative_error(g_fast, g_ref) < TOL


def _flip_odd_half(t: torch.Tensor) -> torch.Tensor:
    """Reverse the token axis (1) of the second half of axis 2: path 1 of two, in its own scan order."""
    first, second = t.chunk(2, dim=2)
    return torch.cat([first, second.flip(1)], dim=2)


@pytest.mark.parametrize("length", [1, 64, 130])
def test_kernel_scans_the_odd_paths_backwards_as_the_flipped_reference(length: int) -> None:
    """Two paths (heads 0-1 and 2-3, groups 0 and 1): the odd one run from the last token equals the reference
    scan of the flipped sequence, flipped back, values and gradients."""
    inputs = _inputs(length, seed=10 + length)
    u, delta, A, B, C, D = inputs
    ref = _flip_odd_half(ssd_scan_ref(*(_flip_odd_half(t) for t in (u, delta)), A,
                                      *(_flip_odd_half(t) for t in (B, C)), D))
    fast = ssd_scan_cpu(*inputs, paths=2, reverse_odd=True)
    assert _relative_error(fast, ref) < TOL
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    fast_grads = torch.autograd.grad(fast, inputs, grad_out)
    for name, g_fast, g_ref in zip(("u", "delta", "A", "B", "C", "D"), fast_grads, ref_grads):
        if name != "A" or length > 1:
            assert _relative_error(g_fast, g_ref) < TOL, f"gradient of {name}"


@pytest.mark.parametrize("length", [1, 3, 70])
def test_conv_silu_kernel_runs_the_odd_path_backwards(length: int) -> None:
    """One input read by two paths: the odd path's conv equals the causal conv of the flipped input, flipped back."""
    from mddose.models.ssm_kernel import causal_conv_silu_cpu

    g = torch.Generator().manual_seed(length)
    u = torch.randn(2, length, 6, generator=g, requires_grad=True)
    weight, bias = torch.randn(12, 4, generator=g, requires_grad=True), torch.randn(12, generator=g, requires_grad=True)
    stacked = torch.stack([u, u.flip(1)], dim=2).flatten(2)  # (B, L, 2·6), path 1 flipped
    ref = _flip_odd_half(causal_conv_silu_cpu(stacked, weight, bias).unflatten(2, (2, 6))).flatten(2)
    fast = causal_conv_silu_cpu(u, weight, bias, reverse_odd=True)
    assert fast.shape == (2, length, 12) and _relative_error(fast, ref) < TOL
    grad_out = torch.randn(ref.shape, generator=g)
    leaves = [u, weight, bias]
    for g_fast, g_ref in zip(torch.autograd.grad(fast, leaves, grad_out), torch.autograd.grad(ref, leaves, grad_out)):
        assert _relative_error(g_fast, g_ref) < TOL
