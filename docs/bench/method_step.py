"""CPU time per training step of Table I's diffusion rows on the `tiny` recipe: python3 method_step.py [CACHE_DIR]

One torch thread. Per method: the network's training step (recipe loss, backward, AdamW; batch 16 at 128², bf16
autocast where the CPU computes it natively, as `mddose train` does) on random inputs, methods interleaved so
that a busy machine slows them alike, median of the timed rounds after a warm-up; then, with CACHE_DIR (made
by `mddose prepare`), the input side of a step: building 16 slices' structure channels with binary masks and
with signed distance maps (the trainer builds them in its own process). Writes method_step.json beside it.
"""
import json, statistics, sys, time
from dataclasses import replace
from pathlib import Path

import torch

from mddose.data.dataset import SliceDataset
from mddose.data.cache import Cache
from mddose.device import bf16_pays
from mddose.diffusion.process import DiffusionLoss
from mddose.models.build import build_model, count_parameters
from mddose.runs.run_config import method_config, run_preset

torch.set_num_threads(1)
METHODS, ROUNDS, BATCH = ("md-dose", "diffdp", "dosediff", "sp-diffdose"), 4, 16
base = run_preset("tiny")
bf16 = base.train.bf16 and bf16_pays(torch.device("cpu"))
rows, steps = {}, {}
for m in METHODS:
    cfg = method_config(m, base)
    net = build_model(cfg.model, seed=0)
    g = torch.Generator().manual_seed(0)
    size, c = cfg.data.image_size, cfg.data.cond_channels
    batch = (torch.rand(BATCH, 1, size, size, generator=g), torch.randn(BATCH, c, size, size, generator=g),
             (torch.rand(BATCH, 1, size, size, generator=g) > 0.3).float())
    rows[m] = (cfg, net, torch.optim.AdamW(net.parameters(), 1e-4), DiffusionLoss(cfg.diffusion), batch)
    steps[m] = []
for r in range(ROUNDS + 1):
    for m, (cfg, net, opt, loss_fn, (dose, cond, mask)) in rows.items():
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net, dose, cond, mask=mask)
        opt.zero_grad(); loss.backward(); opt.step()
        if r:  # round 0 is the warm-up
            steps[m].append(time.perf_counter() - t0)
result = {"settings": {"preset": "tiny", "batch": BATCH, "size": base.data.image_size, "threads": 1, "bf16": bf16,
                       "rounds": ROUNDS, "torch": torch.__version__},
          "methods": {m: {"parameters": count_parameters(rows[m][1]), "step_s": statistics.median(steps[m]),
                          "steps_s": [round(s, 3) for s in steps[m]]} for m in METHODS}}
for m, row in result["methods"].items():
    print(f"{m:12s} {row['parameters']:>10,} parameters  {row['step_s']:.2f} s/step (network)", flush=True)
if len(sys.argv) > 1:
    cache = Cache(sys.argv[1])
    inputs = {}
    for name, data in (("mask", base.data), ("distance", method_config("dosediff", base).data)):
        ds = SliceDataset(cache, replace(data, augment=False), return_mask=True)
        picks = [ds.items[i * len(ds) // BATCH] for i in range(BATCH)]
        ds.items = picks
        [ds[i] for i in range(BATCH)]  # the cache's patients decoded once, outside the timing
        t0 = time.perf_counter()
        [ds[i] for i in range(BATCH)]
        inputs[name] = time.perf_counter() - t0
        print(f"inputs ({name}): {inputs[name]:.3f} s per batch of {BATCH} slices", flush=True)
    result["inputs_s_per_batch"] = inputs
(Path(__file__).parent / "method_step.json").write_text(json.dumps(result, indent=1) + "\n")
