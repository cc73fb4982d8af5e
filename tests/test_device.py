"""Device choice and the prediction batch size that suits it."""

from __future__ import annotations

import torch

from mddose.device import ThreadTuner, prediction_batch, resolve_device, slowdown


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_prediction_batch_suits_the_device_unless_asked() -> None:
    assert prediction_batch(torch.device("cpu")) == 8
    assert prediction_batch(torch.device("cuda", 0)) == 32
    assert prediction_batch(torch.device("cpu"), 3) == 3


def test_thread_tuner_keeps_the_faster_count_and_checks_again(monkeypatch) -> None:
    counts = {"n": 2}
    monkeypatch.setattr(torch, "get_num_threads", lambda: counts["n"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: counts.update(n=n))
    tuner = ThreadTuner(torch.device("cpu"), probe=2, every=5)
    seconds = {1: 1.0, 2: 3.0}  # two threads stall on a busy machine
    seen = []
    for _ in range(30):
        seen.append(counts["n"])
        tuner.step_done(seconds[counts["n"]])
    assert tuner.chosen == 1 and set(seen) == {1, 2}
    assert seen[:6] == [1, 1, 1, 2, 2, 2]  # a probe: 1 warm-up + 2 timed steps per count
    assert seen.count(2) == 9  # probed again after every 5 chosen steps: three probes in 30 steps
    assert ThreadTuner(torch.device("cuda")).candidates == []


def test_slowdown_warns_only_when_steps_fell_short_or_slowed() -> None:
    steady = [1.0] * 50
    assert slowdown(steady, planned_steps=50, steps=50) is None
    assert slowdown(steady[:5], planned_steps=500, steps=5) is None  # too few steps to judge
    short = slowdown(steady, planned_steps=400, steps=50)
    assert short and "trained 50 of 400 planned steps" in short and "load average" in short
    slowed = slowdown([1.0] * 10 + [5.0] * 40, planned_steps=None, steps=50)
    assert slowed and "5.00 s against 1.00 s" in slowed
