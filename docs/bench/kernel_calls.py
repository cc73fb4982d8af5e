"""Time the CPU kernel's bare calls: python3 kernel_calls.py [SOURCE].

The SSD scan (B 8, 16,384 tokens, 4 heads of 32 channels, 16 states, 2 paths with the odd one reversed) and the
conv1d + SiLU (u 8 × 16,384 × 64, 128 output channels, 4 taps, reversed odd path), forward and backward, one
thread; prints the minimum of 5 after a warm-up, in ms (docs/bench/networks.md). SOURCE: another version of
csrc/ssd_scan.cpp to build and time instead of the package's (e.g. `git show REV:src/mddose/models/csrc/ssd_scan.cpp`).
"""
import hashlib, sys, time, torch
from torch.utils.cpp_extension import load
from mddose.models.ssm_kernel import CFLAGS, _module
torch.set_num_threads(1)
repeats = 5
g = torch.Generator().manual_seed(0)
b, length, heads, p, n = 8, 16384, 4, 32, 16
x = torch.randn(b, length, heads, p, generator=g)
dt = torch.rand(b, length, heads, generator=g) * 0.1
A, D = -torch.rand(heads, generator=g) * 4 - 1, torch.randn(heads, p, generator=g)
B, C = torch.randn(b, length, 2, n, generator=g), torch.randn(b, length, 2, n, generator=g)
u, w, bias = torch.randn(b, length, 64, generator=g), torch.randn(128, 4, generator=g), torch.randn(128, generator=g)
if len(sys.argv) > 1:
    key = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:12]
    m = load(name=f"mddose_kernel_calls_{key}", sources=[sys.argv[1]], extra_cflags=list(CFLAGS))
else:
    m = _module()
y, saved = m.forward(x, dt, A, B, C, D, 2, True)
act = m.conv_silu_forward(u, w, bias, True)
calls = {
    "scan forward": lambda: m.forward(x, dt, A, B, C, D, 2, True),
    "scan backward": lambda: m.backward(torch.ones_like(y), x, dt, A, B, C, D, saved, 2, True),
    "conv + SiLU forward": lambda: m.conv_silu_forward(u, w, bias, True),
    "conv + SiLU backward": lambda: m.conv_silu_backward(torch.ones_like(act), u, w, bias, True),
}
for name, call in calls.items():
    call()
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        call()
        times.append(time.perf_counter() - s)
    print(f"{name}: {1000 * min(times):.1f} ms", flush=True)
