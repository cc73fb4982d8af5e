"""``mddose demo``: the whole pipeline on synthetic phantoms, inside a fixed time budget, ending in a report.

Stages (each logged as it starts, with its time in ``demo.json``):

1. **data**: ``N`` training phantoms (seed ``S``) and ``M`` held-out test phantoms (seed ``S + 1``: other
   patients, never seen in training), on OpenKBP's 128³ grid; the training cache; the trivial baseline of the
   test patients.
2. **plan**: a few timed forward and training passes of the demo network decide the CPU thread count (on a
   shared machine one thread can beat two) and split the remaining budget: prediction and evaluation get what
   they are measured to need, training gets the rest.
3. **train** a small MD-Dose (:func:`demo_config`) until its share of the budget is spent.
4. **predict** the test patients with DPM-Solver++ (few steps) and several samples: their mean is the
   prediction, their standard deviation the uncertainty map.
5. **evaluate** the model and the trivial baseline against the reference doses (OpenKBP scores, paper metrics).
6. **report**: ``report/report.html`` (:mod:`mddose.viz.report`).

The demo network is the Mamba-UNet skeleton with narrow widths at 64×64 (the 128² slices are resized), trained
to predict x₀ rather than ε: in a budget of minutes it learns several times faster (docs/measurements.md), and
a few sampler steps suffice. It uses a GPU when one is present (``device="auto"``).

Output folder (claimed, :func:`mddose.ownership.claim`: an earlier demo there is replaced with ``overwrite``,
removing only what it wrote; any other non-empty folder is refused)::

    OUT_DIR/
      demo.json                 budget, plan, stage times, scores
      data/train/  data/test/   the phantoms (OpenKBP layout)
      cache/                    the training cache
      run/                      the training run (config.json, history.json, loss.png, checkpoints/)
      predictions/mddose/       pt_N.csv, uncertainty/pt_N.csv, prediction.json
      predictions/trivial/      the trivial baseline
      evaluation/               summary.json, per_patient.csv, per_roi.csv, comparison.md
      report/                   report.html and the PNGs it shows
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mddose.atomic import write_json
from mddose.data.dataset import DataConfig
from mddose.diffusion.process import DiffusionConfig, DiffusionLoss
from mddose.errors import MddoseError
from mddose.models.build import build_model
from mddose.models.config import preset
from mddose.ownership import claim
from mddose.runs.run_config import RunConfig, TrainConfig, for_data, new_horizon

log = logging.getLogger(__name__)

DEMO_SCHEMA = "mddose.demo/1"
MODEL_NAME, BASELINE_NAME = "MD-Dose", "Trivial baseline"
CALIBRATION_BATCH = 16
MIN_MINUTES = 0.5


def demo_config(seed: int = 0) -> RunConfig:
    """The demo's small MD-Dose: Mamba-UNet with widths 8–32 at 64×64, x₀-prediction, a fast AdamW schedule."""
    data = DataConfig(image_size=64, augment=True)
    model = preset("tiny", stem_channels=8, enc_widths=(8, 16, 16, 32), dec_widths=(16, 16, 8, 8),
                   time_embed_dim=16, drop_path=0.0).replace(name="demo")
    train = TrainConfig(batch_size=16, lr=2e-3, warmup_steps=20, decay_steps=2000, ema_decay=0.99, seed=seed,
                        val_patients=0, val_every=0, checkpoint_every_s=60.0, log_every=5)
    return RunConfig(model=for_data(model, data), data=data,
                     diffusion=DiffusionConfig(prediction_type="sample"), train=train)


@dataclass
class DemoPlan:
    """How the budget is spent; chosen by :func:`plan_budget` from measured speeds."""

    budget_s: float
    train_patients: int
    test_patients: int
    sampler: str = "dpm++"
    steps: int = 6
    samples: int = 3
    train_threads: int = 1
    predict_threads: int = 1
    device: str = "cpu"
    seconds_per_image: float = 0.0  # one network evaluation of one slice (prediction)
    seconds_per_step: float = 0.0  # one training step
    test_slices: int = 0
    train_s: float = 0.0
    predict_s: float = 0.0
    finish_s: float = 0.0  # evaluation + report
    margin_s: float = 0.0

    def predict_estimate(self) -> float:
        """Seconds to predict the test patients (network time plus reading and writing, with 25 % slack)."""
        images = self.test_slices * self.steps * self.samples
        return 1.25 * images * self.seconds_per_image + 1.5 * self.test_patients


def default_patients(minutes: float) -> tuple[int, int]:
    """(training, test) phantom counts for a budget: 16 and 3 at 5 minutes, fewer below ~4 minutes."""
    return int(np.clip(round(minutes * 3.2), 2, 16)), 3 if minutes >= 2 else 1


def _count_slices(data_dir: Path) -> int:
    """Axial slices that meet a possible-dose mask, over all patients of ``data_dir`` (what predict samples)."""
    from mddose.data.openkbp import find_file, list_patients, read_sparse_csv

    return sum(int(read_sparse_csv(find_file(folder, "possible_dose_mask"), mask=True).any(axis=(0, 1)).sum())
               for folder in list_patients(data_dir))


def _time_passes(cfg: RunConfig, device: torch.device, threads: int,
                 give_up: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """(seconds per sampled image, seconds per training step) of ``cfg``'s network with ``threads`` threads.

    One warm-up and one timed forward pass of a batch, then two training steps (the second is timed). With
    ``give_up`` = (per image, per step) it returns None as soon as a pass is clearly slower than those.
    """
    if device.type == "cpu":
        torch.set_num_threads(threads)
    b, size = CALIBRATION_BATCH, cfg.model.image_size

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def too_slow(seconds: float, which: int, factor: float) -> bool:
        return give_up is not None and seconds > factor * give_up[which]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).eval()
        cond = torch.rand(b, cfg.model.cond_channels, size, size, device=device)
        dose = torch.rand(b, 1, size, size, device=device)
        t = torch.full((b,), 500, device=device)
        with torch.no_grad():
            for warm_up in (True, False):
                start = time.perf_counter()
                model(dose, t, cond)
                sync()
                per_image = (time.perf_counter() - start) / b
                if too_slow(per_image, 0, 4.0 if warm_up else 1.0):
                    return None
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = DiffusionLoss(cfg.diffusion)
        for warm_up in (True, False):
            start = time.perf_counter()
            loss = loss_fn(model, dose, cond)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync()
            per_step = time.perf_counter() - start
            if too_slow(per_step, 1, 3.0 if warm_up else 1.0):
                return None
    return per_image, per_step


def _batch_seconds(cache_dir: Path, cfg: RunConfig) -> float:
    """Seconds to assemble one training batch from the cache (what a GPU step mostly waits for)."""
    from mddose.data.cache import Cache
    from mddose.data.dataset import SliceDataset

    dataset = SliceDataset(Cache(cache_dir), cfg.data)
    items = [i * 7 % len(dataset) for i in range(min(cfg.train.batch_size, len(dataset)))]
    with torch.random.fork_rng(devices=[]):
        for timed in (False, True):  # the first pass decodes the patients, once per run
            start = time.perf_counter()
            for i in items:
                dataset[i]
    return time.perf_counter() - start


def _contended() -> bool:
    """Whether other processes keep the CPUs busy (1-minute load average above all cores but one)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5
    except OSError:
        return False


def plan_budget(plan: DemoPlan, cfg: RunConfig, device: torch.device, elapsed_s: float) -> DemoPlan:
    """Measure the network's speed, choose CPU thread counts and split the remaining budget.

    On a CPU, one thread is timed first; all threads are tried for training only where the machine is not busy
    with other work, and dropped as soon as they prove slower (on a shared machine two threads can stall each
    other for seconds at a time). Training's length is a deadline, so a later slowdown costs steps, never time.
    Sampling uses one thread on a CPU, which keeps its time, and so the budget, predictable.
    """
    measuring_from = time.monotonic()
    cpu = device.type == "cpu"
    many = torch.get_num_threads()
    first = 1 if cpu else many
    timings = {first: _time_passes(cfg, device, first)}
    if cpu and many > 1 and not _contended():
        faster = _time_passes(cfg, device, many, give_up=timings[first])
        if faster is not None:
            timings[many] = faster
    log.info("measured speed (threads: s per sampled slice, s per training step): %s",
             ", ".join(f"{n}: {a:.4f}, {b:.3f}" for n, (a, b) in timings.items()))
    plan.train_threads = min(timings, key=lambda n: timings[n][1])
    plan.predict_threads = first
    plan.device = str(device)
    plan.seconds_per_step = timings[plan.train_threads][1]
    plan.seconds_per_image = timings[first][0]
    plan.finish_s = 4.0 + 2.5 * plan.test_patients
    plan.margin_s = max(5.0, 0.04 * plan.budget_s)
    elapsed_s += time.monotonic() - measuring_from  # the measuring is spent budget too
    available = plan.budget_s - elapsed_s - plan.finish_s - plan.margin_s
    # Prediction may take at most ~30 % of what is left: fewer samples first, then fewer sampler steps.
    for steps, samples in ((plan.steps, plan.samples), (plan.steps, 2), (4, 2), (4, 1), (2, 1)):
        plan.steps, plan.samples = min(steps, plan.steps), min(samples, plan.samples)
        if plan.predict_estimate() <= 0.3 * available:
            break
    plan.predict_s = plan.predict_estimate()
    plan.train_s = max(available - plan.predict_s, 3.0)
    return plan


def run_demo(
    out_dir: str | Path = "mddose-demo",
    minutes: float = 5.0,
    train_patients: int | None = None,
    test_patients: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` within ``minutes`` (all stages included); returns what ``demo.json`` holds.
    An earlier demo in ``out_dir`` is replaced only with ``overwrite``."""
    start = time.monotonic()
    if not math.isfinite(minutes) or minutes < MIN_MINUTES:
        raise MddoseError(f"--minutes must be at least {MIN_MINUTES} (phantoms, prediction and report alone take "
                          f"about 20 s), not {minutes}")
    out_dir = Path(out_dir).absolute()  # summary.json and prediction.json then name folders from anywhere
    with claim(out_dir, "mddose demo", overwrite=overwrite):
        n_train, n_test = default_patients(minutes)
        plan = DemoPlan(budget_s=60.0 * minutes, train_patients=train_patients or n_train,
                        test_patients=test_patients or n_test)
        info: dict[str, Any] = {"schema": DEMO_SCHEMA, "status": "running", "minutes": minutes, "seed": seed,
                                "model": MODEL_NAME, "baseline": BASELINE_NAME}
        write_json(out_dir / "demo.json", info)
        threads_before = torch.get_num_threads()
        try:
            report = _stages(out_dir, plan, info, seed, device, progress, start)
        finally:
            torch.set_num_threads(threads_before)
        info.update(seconds=round(time.monotonic() - start, 2), report=str(report))
        write_json(out_dir / "demo.json", info)
    return info


def _stages(out_dir: Path, plan: DemoPlan, info: dict[str, Any], seed: int, device: str, progress: bool,
            start: float) -> Path:
    """The six stages, timed; ``info`` gathers what demo.json says of them. Returns the report's path."""
    clock, threads_before = _Clock(), torch.get_num_threads()
    with clock.stage("data"):
        test = _data_stage(out_dir, plan, seed, progress)
    with clock.stage("plan"):
        cfg, dev, plan, steps_expected = _plan_stage(out_dir, plan, seed, device, start)
    with clock.stage("train"):
        if dev.type == "cpu":
            torch.set_num_threads(threads_before)
        trained = _train_stage(out_dir, cfg, plan, device, steps_expected, progress)
    with clock.stage("predict"):
        left = plan.budget_s - (time.monotonic() - start) - plan.finish_s - plan.margin_s / 2
        predicted = _predict_stage(out_dir, test, plan, dev, left, seed, device, progress)
    with clock.stage("evaluate"):
        scores = _evaluate_stage(out_dir, test, progress)
    info.update(status="reported", plan=asdict(plan), stages=clock.stages, scores=scores,
                train={"steps": trained["step"], "planned_steps": steps_expected, "seconds": trained["seconds"],
                       "threads": trained["threads"], "last_loss": trained["last_loss"],
                       "warning": trained["warning"]},
                predict={"device": predicted["device"],
                         "mean_seconds_per_patient": predicted["mean_seconds_per_patient"]},
                seconds=round(time.monotonic() - start, 2))
    write_json(out_dir / "demo.json", info)
    with clock.stage("report"):
        report = _report_stage(out_dir, progress)
    info.update(status="done", stages=clock.stages)
    return report


class _Clock:
    """Seconds per stage of the demo, as ``demo.json`` records them."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.stages[name] = round(time.monotonic() - t0, 2)


def _train_stage(out_dir: Path, cfg: RunConfig, plan: DemoPlan, device: str, steps_expected: int,
                 progress: bool) -> dict[str, Any]:
    """[3/6] Train the demo's MD-Dose for the planned time; the trainer warns when it fell far short."""
    from mddose.training.loop import train

    log.info("[3/6] train: a small MD-Dose on %d phantoms for %.1f minutes", plan.train_patients, plan.train_s / 60)
    return train(out_dir / "cache", out_dir / "run", cfg, minutes=plan.train_s / 60, device=device,
                 progress=progress, planned_steps=steps_expected)


def _evaluate_stage(out_dir: Path, test: Path, progress: bool) -> dict[str, Any]:
    """[5/6] Both predictions against the reference doses: each method's OpenKBP scores."""
    from mddose.evaluate.folders import evaluate

    log.info("[5/6] evaluate: %s and the trivial baseline against the reference doses", MODEL_NAME)
    summary = evaluate(test, [out_dir / "predictions" / "mddose", out_dir / "predictions" / "trivial"],
                       out_dir / "evaluation", names=[MODEL_NAME, BASELINE_NAME], gamma=False, progress=progress)
    return {name: s["openkbp"] for name, s in summary["methods"].items()}


def _report_stage(out_dir: Path, progress: bool) -> Path:
    """[6/6] The HTML report of the demo's folder."""
    from mddose.viz.report import build_report

    log.info("[6/6] report")
    return build_report(out_dir, progress=progress)


def _predict_stage(out_dir: Path, test: Path, plan: DemoPlan, dev: torch.device, left_s: float, seed: int,
                   device: str, progress: bool) -> dict[str, Any]:
    """[4/6] Fewer samples, then fewer steps, until the prediction fits ``left_s``; then predict the test set."""
    from mddose.inference.predict import predict

    while plan.predict_estimate() > left_s and (plan.samples > 2 or plan.steps > 4):
        plan.samples, plan.steps = (2, plan.steps) if plan.samples > 2 else (plan.samples, max(4, plan.steps - 2))
    if dev.type == "cpu":
        torch.set_num_threads(plan.predict_threads)
    log.info("[4/6] predict: %d held-out phantoms, %s with %d steps, %d samples each", plan.test_patients,
             plan.sampler, plan.steps, plan.samples)
    return predict(out_dir / "run", test, out_dir / "predictions" / "mddose", plan.sampler, plan.steps,
                   plan.samples, batch_size=CALIBRATION_BATCH, seed=seed, device=device, nifti=False,
                   progress=progress)


def _data_stage(out_dir: Path, plan: DemoPlan, seed: int, progress: bool) -> Path:
    """[1/6] Training and held-out phantoms, the cache, the trivial baseline; returns the test folder."""
    from mddose.data.cache import prepare_cache
    from mddose.data.phantom import write_phantoms
    from mddose.inference.trivial import predict_trivial

    log.info("[1/6] data: %d training + %d held-out phantoms on the 128³ OpenKBP grid, cache, trivial baseline",
             plan.train_patients, plan.test_patients)
    data, test = out_dir / "data" / "train", out_dir / "data" / "test"
    write_phantoms(data, n_patients=plan.train_patients, seed=seed, grid=128, progress=progress)
    write_phantoms(test, n_patients=plan.test_patients, seed=seed + 1, grid=128, progress=progress)
    prepare_cache(data, out_dir / "cache", progress=progress)
    predict_trivial(test, out_dir / "predictions" / "trivial", progress=progress)
    plan.test_slices = _count_slices(test)
    return test


def _plan_stage(out_dir: Path, plan: DemoPlan, seed: int, device: str,
                start: float) -> tuple[RunConfig, torch.device, DemoPlan, int]:
    """[2/6] Measure, then split what is left of the budget; returns the config, device, plan and planned steps."""
    from mddose.device import resolve_device

    cfg = demo_config(seed)
    dev = resolve_device(device)
    batch_s = _batch_seconds(out_dir / "cache", cfg)  # reading a batch, timed before the split so it is spent
    spent_s = time.monotonic() - start
    plan = plan_budget(plan, cfg, dev, spent_s)
    if dev.type == "cpu":  # training starts on the planned count; its ThreadTuner re-checks it as it goes
        torch.set_num_threads(plan.train_threads)
    per_step = plan.seconds_per_step + batch_s
    steps_expected = max(50, int(plan.train_s / max(per_step, 1e-3)))
    cfg = new_horizon(cfg, steps_expected)  # the cosine schedule ends as the time runs out
    spent_s = time.monotonic() - start  # the speed measuring included, as the split counted it
    log.info("[2/6] plan (budget %.0f s, %.0f s spent): train %.0f s (~%d steps on %s, %d thread(s)), predict "
             "~%.0f s (%s, %d steps, %d samples), evaluate and report ~%.0f s", plan.budget_s, spent_s, plan.train_s,
             steps_expected, plan.device, plan.train_threads, plan.predict_s, plan.sampler, plan.steps, plan.samples,
             plan.finish_s)
    return cfg, dev, plan, steps_expected
