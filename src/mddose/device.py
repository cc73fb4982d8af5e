"""Which torch device a command runs on."""

from __future__ import annotations

import os

import torch

from mddose.errors import MddoseError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name (``cpu``, ``cuda:1``) is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MddoseError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise MddoseError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no usable GPU"
            raise MddoseError(f"--device {name}: this torch ({torch.__version__}) has {build}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MddoseError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def prediction_batch(device: torch.device, requested: int | None = None) -> int:
    """Slices per batch for prediction: ``requested``, else 32 on a GPU and 8 on a CPU.

    On a CPU large batches are slower per slice for the Mamba networks and faster for the convolutional ones;
    8 balances both (docs/measurements.md).
    """
    if requested is not None:
        return requested
    return 32 if device.type == "cuda" else 8


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast can speed ``device`` up: a GPU of compute capability 8 or more (Ampere on), or a
    CPU whose oneDNN has native bf16 kernels (AVX-512 or AMX). Elsewhere (an older GPU, an AVX2-only CPU) bf16 is
    emulated and a step is slower than in float32 (docs/bench/networks.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ThreadTuner:
    """Chooses torch's CPU thread count from step times measured during a run, and checks the choice again.

    On a CPU that other processes share, more threads than free cores stall each other (each step waits for its
    slowest thread), so the best count changes while a run goes on. The tuner times ``probe`` steps with each
    candidate count (1 and all), keeps the faster, and probes again every ``every`` steps. It does nothing on a
    GPU or where torch has one thread only (e.g. ``OMP_NUM_THREADS=1``).
    """

    def __init__(self, device: torch.device, probe: int = 4, every: int = 200) -> None:
        most = self.initial = torch.get_num_threads()
        self.candidates = [1, most] if device.type == "cpu" and most > 1 else []
        self.probe, self.every = probe, every
        self.times: dict[int, list[float]] = {n: [] for n in self.candidates}
        self.chosen = most
        self._since = 0  # steps since the last probe ended
        self._probing = bool(self.candidates)
        if self._probing:
            torch.set_num_threads(self.candidates[0])

    def step_done(self, seconds: float) -> None:
        """Record one step's time; switch the thread count as the probe schedule says."""
        if not self.candidates:
            return
        if not self._probing:
            self._since += 1
            if self._since >= self.every:
                self._probing, self.times = True, {n: [] for n in self.candidates}
                torch.set_num_threads(self.candidates[0])
            return
        current = torch.get_num_threads()
        self.times[current].append(seconds)
        if len(self.times[current]) <= self.probe:  # the first step after a switch is a warm-up
            return
        untried = [n for n in self.candidates if len(self.times[n]) <= self.probe]
        if untried:
            torch.set_num_threads(untried[0])
            return
        self.chosen = min(self.candidates, key=lambda n: sorted(self.times[n][1:])[len(self.times[n][1:]) // 2])
        torch.set_num_threads(self.chosen)
        self._probing, self._since = False, 0

    def restore(self) -> None:
        """Give torch back the thread count it had before the tuner."""
        if self.candidates:
            torch.set_num_threads(self.initial)


def slowdown(step_seconds: list[float], planned_steps: int | None, steps: int) -> str | None:
    """A warning when training made far fewer steps than planned (< 50 %) or its steps slowed down 2× or more.

    ``step_seconds`` are this invocation's step times. The machine's best sustained speed is their 10th
    percentile; the reason names the load average, which shows other processes using the CPUs.
    """
    if len(step_seconds) < 10:
        return None
    ordered = sorted(step_seconds)
    best, median = ordered[len(ordered) // 10], ordered[len(ordered) // 2]
    short = planned_steps is not None and steps < 0.5 * planned_steps
    if not short and median < 2.0 * best:
        return None
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "unknown"
    made = f"trained {steps} of {planned_steps} planned steps" if planned_steps else f"trained {steps} steps"
    return (f"{made}: the median step took {median:.2f} s against {best:.2f} s at the run's best speed, so the "
            f"CPU was shared with other work (load average {load} on {os.cpu_count()} cores); results are "
            "worse than this budget gives on an idle machine")
