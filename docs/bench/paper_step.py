"""Time training steps of a layout: python3 paper_step.py LABEL [BACKEND] [LAYOUT].

The `small` widths in LAYOUT (`layout_configs(...)`: mamba, the paper's layout with Mamba at every level, unless
given; hybrid; conv), batch 8, 128², float32, one thread, scan backend BACKEND (cpu_kernel unless given); prints
the 4 step times (the first builds the kernel when its source changed) and the minimum of the last 3
(docs/bench/networks.md).
"""
import sys, time, torch
from mddose.models.build import build_model
from mddose.models.config import layout_configs, preset
torch.set_num_threads(1)
backend = sys.argv[2] if len(sys.argv) > 2 else "cpu_kernel"
layout = sys.argv[3] if len(sys.argv) > 3 else "mamba"
cfg = layout_configs(preset("small", image_size=128))[layout].replace(scan_backend=backend)
net = build_model(cfg, seed=0); opt = torch.optim.AdamW(net.parameters(), 1e-3)
g = torch.Generator().manual_seed(0)
x, c = torch.randn(8, 1, 128, 128, generator=g), torch.randn(8, cfg.cond_channels, 128, 128, generator=g)
t = torch.randint(0, 1000, (8,), generator=g)
times = []
for _ in range(4):
    s = time.perf_counter()
    loss = net(x, t, c).float().abs().mean()
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - s)
print(sys.argv[1], layout, "layout", backend, "float32 step (s):", [round(v, 2) for v in times],
      "minimum of the last 3:", round(min(times[1:]), 2), flush=True)
