"""Time one training step in float32 and under bf16 autocast: python3 bf16_step.py [SIZE].

The default `small` network's all-conv twin and its hybrid layout, batch 8, SIZE² slices (64 unless given), one
thread; median of the last 3 of 4 steps (docs/bench/networks.md, "bf16 on a CPU without native bf16").
"""
import sys, time, torch
from mddose.models.build import build_model
from mddose.models.config import layout_configs, preset
torch.set_num_threads(1)
size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
print("oneDNN native bf16:", torch.ops.mkldnn._is_mkldnn_bf16_supported(), "| CPU capability:",
      torch.backends.cpu.get_cpu_capability())
for kind in ("conv", "hybrid"):
    cfg = layout_configs(preset("small", image_size=size))[kind]
    net = build_model(cfg, seed=0); opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x, c = torch.randn(8, 1, size, size), torch.randn(8, cfg.cond_channels, size, size)
    t = torch.randint(0, 1000, (8,))
    for bf16 in (False, True):
        times = []
        for _ in range(4):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = net(x, t, c).float().abs().mean()
            opt.zero_grad(); loss.backward(); opt.step()
            times.append(time.perf_counter() - start)
        print(f"{kind} {'bf16' if bf16 else 'float32'}: {sorted(times[1:])[1]:.2f} s/step", flush=True)
