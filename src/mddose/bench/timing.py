"""Benchmarks that write JSON (``mddose bench ...``): shared timing helpers, one module per benchmark.

* networks: :func:`mddose.bench.networks.bench_networks` (parameters, time per image and the log-log slope of
  time against pixels for each block type, the paper config's time per slice, and the bare scans).

Timings are wall-clock seconds from :func:`time_call`: warm-up calls first, CUDA synchronised around every call,
and both the median and the minimum reported (the minimum is the steadier figure on a shared CPU).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mddose.device import bf16_pays


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1,
              reset_peak: bool = True) -> dict[str, Any]:
    """Time ``fn()``: ``{"median_s", "min_s", "times_s", "peak_mib"}`` (peak GPU memory on CUDA, else None).

    ``reset_peak=False`` leaves CUDA's peak-memory counter alone, for a caller that wants the peak over many calls.
    """
    for _ in range(warmup):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times, "peak_mib": peak}


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x): 1 means linear cost, 2 quadratic; None with < 2 points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else None


def device_name(device: torch.device) -> str:
    """The device in a few words, for tables: the GPU's name, or the CPU and the torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16_pays(device),
    }
    env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "MKL_")) or k == "LD_PRELOAD"}
    if env:
        info["environment"] = env
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
