"""Time training steps of the default recipe's network: python3 busy_step.py THREADS [default|PASSIVE].

The second argument sets OMP_WAIT_POLICY before torch starts its threads; run it once idle and once beside
`python3 -c "while True: pass"` (docs/bench/networks.md, "Threads on a shared machine").
"""
import os, sys
threads, policy = int(sys.argv[1]), sys.argv[2]
if policy != "default":
    os.environ["OMP_WAIT_POLICY"] = policy
import time, torch
from mddose.models.build import build_model
from mddose.models.config import preset
torch.set_num_threads(threads)
cfg = preset("small", cond_channels=11)
m = build_model(cfg, seed=0); opt = torch.optim.AdamW(m.parameters(), 1e-4)
b, s = 16, 96
x = torch.randn(b, 1, s, s); c = torch.randn(b, 11, s, s); t = torch.randint(0, 1000, (b,))
ts = []
for i in range(6):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x, t, c).float().square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
    ts.append(time.perf_counter() - t0)
print(f"threads {threads} OMP_WAIT_POLICY {policy}: median step {sorted(ts[2:])[2]:.2f} s (default recipe, batch 16, 96² crops, bf16)", flush=True)
