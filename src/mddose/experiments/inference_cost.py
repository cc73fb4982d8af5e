"""Table II as a command (``mddose experiment table2 CACHE_DIR DATA_DIR OUT_DIR``): parameters and inference time
of every Table I method on the current device.

Inference time does not depend on the values of the weights (a fixed number of sampler steps, no early exit),
so nothing is trained: each network is built with the recipe's seed and timed on real patients of DATA_DIR with
the same sampler and steps as Table I. Three times per method:

* per network evaluation (the paper's "sec/iter"): one forward pass for one slice (batch 1);
* per slice: the whole prediction of one slice, batch 1 (``steps`` evaluations for a diffusion model, one for a
  deterministic baseline);
* per patient: every slice that meets the possible-dose mask, batched as ``mddose predict`` does (32 slices on a
  GPU, 8 on a CPU),
  once per patient, averaged over the patients.

A 3D baseline has no slices of its own: its network evaluation is one sliding window (``patch_size``), its time
per slice is its time per patient divided by the patient's treated slices.

The first two are the median of repeated runs after a warm-up; on CUDA every timing is synchronised and the
peak memory of the per-patient prediction is recorded. Output: ``timing/<method>.json`` (kept on a re-run with
the same network, device, sampler, steps and patients: the experiment resumes), ``table2.md`` and
``experiment.json``.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mddose.atomic import write_json, write_text
from mddose.bench.timing import device_name, time_call
from mddose.data.cache import CachedPatient
from mddose.data.openkbp import list_patients, read_patient
from mddose.data.volume import structure_volume
from mddose.device import prediction_batch, resolve_device
from mddose.diffusion.sampling import sample
from mddose.errors import MddoseError
from mddose.inference.slicewise import prediction_window, predict_volume, slice_inputs
from mddose.inference.regression import regress
from mddose.models.build import build_model, count_parameters
from mddose.runs.run_config import RunConfig

log = logging.getLogger(__name__)


def _seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after a warm-up run unless ``warmup`` is False)."""
    return time_call(fn, device, repeats, warmup=int(warmup), reset_peak=False)["median_s"]


@torch.no_grad()
def time_method(cfg: RunConfig, patients: list[CachedPatient], sampler: str, steps: int, device: torch.device,
                repeats: int = 3) -> dict[str, Any]:
    """Parameters and the three inference times of one method (see the module docstring)."""
    model = build_model(cfg.model, seed=cfg.train.seed).to(device).eval()
    vol = patients[0]
    zs = vol.axial_slices()
    z = zs[len(zs) // 2]  # a slice through the middle of the treated volume
    cond, _, mask = slice_inputs(vol, [z], cfg, prediction_window(vol, cfg), device)  # what predict feeds it
    generator = torch.Generator(device=device)
    if cfg.volumetric:  # one network evaluation = one sliding window; per slice follows from per patient below
        box = tuple(slice(0, min(p, n)) for p, n in zip(cfg.model.patch_size, vol.full_shape))
        window = torch.zeros(1, cfg.model.cond_channels, *cfg.model.patch_size, device=device)
        window[(0, slice(None), *box)] = torch.from_numpy(structure_volume(vol, cfg.data)[(slice(None), *box)])
        per_iteration = _seconds(lambda: model(window), device, repeats)
    elif cfg.objective == "regression":
        per_iteration = per_slice = _seconds(lambda: regress(model, cond, mask), device, repeats)
    else:
        t = torch.full((1,), cfg.diffusion.num_train_timesteps // 2, device=device, dtype=torch.long)
        per_iteration = _seconds(lambda: model(torch.randn_like(mask), t, cond), device, repeats)
        per_slice = _seconds(lambda: sample(model, cond, cfg.diffusion, mask, sampler, steps, generator), device,
                             repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_patient, slices, batch = [], [], prediction_batch(device)
    for p in patients:
        per_patient.append(_seconds(
            lambda p=p: predict_volume(model, cfg, p, sampler=sampler, steps=steps, batch_size=batch, device=device),
            device, 1,
            warmup=False))  # the per-slice runs warmed the network up
        slices.append(len(p.axial_slices()))
    if cfg.volumetric:
        per_slice = sum(per_patient) / sum(slices)
    return {
        "parameters": count_parameters(model),
        "objective": cfg.objective,
        "dims": cfg.model.dims if cfg.objective == "regression" else 2,
        "network_evaluations_per_slice": 1 if cfg.objective == "regression" else steps,
        "seconds_per_iteration": per_iteration,
        "seconds_per_slice": per_slice,
        "seconds_per_patient": statistics.mean(per_patient),
        "patient_batch": batch,
        "slices_per_patient": statistics.mean(slices),
        "patients": [p.patient_id for p in patients],
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def run_timing(rows: dict[str, RunConfig], data_dir: str | Path, out_dir: Path, base: RunConfig, sampler: str,
               steps: int, n_patients: int, device: str, progress: bool) -> dict[str, Any]:
    """Time every row on the first ``n_patients`` patients of ``data_dir``; writes table2.md; returns its JSON."""
    dev = resolve_device(device)
    folders = list_patients(data_dir)[:max(1, n_patients)]
    if not folders:
        raise MddoseError("no patient folders to time", data_dir)
    patients = [CachedPatient.from_patient(read_patient(f, base.data.rois), base.data.prior_angles) for f in folders]
    ids = [p.patient_id for p in patients]
    where = device_name(dev)
    methods: dict[str, Any] = {}
    for name, cfg in tqdm(rows.items(), desc="table2", unit="method", disable=not progress):
        path = out_dir / "timing" / f"{name}.json"
        held = json.loads(path.read_text()) if path.is_file() else {}
        wanted = {"model": cfg.model.to_dict(), "device": where, "sampler": sampler, "steps": steps, "patients": ids,
                  "patient_batch": prediction_batch(dev)}
        if all(held.get(k) == v for k, v in wanted.items()):
            methods[name] = held
            continue
        log.info("timing %s on %s", name, dev)
        methods[name] = {**wanted, **time_method(cfg, patients, sampler, steps, dev)}
        write_json(path, methods[name])
    lines = [
        "# Parameters and inference time (Table II)", "",
        f"Measured on {where}: base model `{base.model.name}` at {base.model.image_size}² input, {sampler} with "
        f"{steps} steps for the diffusion models (one pass for the deterministic ones), {len(patients)} patient(s) "
        f"of `{data_dir}` ({', '.join(p.patient_id for p in patients)}), {prediction_batch(dev)} slices per batch "
        "for the per-patient times. Median of repeated runs after a warm-up.",
        "",
        "| Method | parameters | s / network evaluation (1 slice) | s / slice | s / patient | slices / patient |"
        + (" peak GPU memory (GiB) |" if dev.type == "cuda" else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if dev.type == "cuda" else ""),
    ]
    for name, m in methods.items():
        memory = f" {m['peak_gpu_memory_gib']:.2f} |" if dev.type == "cuda" else ""
        lines.append(f"| {name} | {m['parameters'] / 1e6:.2f} M | {m['seconds_per_iteration']:.4f} | "
                     f"{m['seconds_per_slice']:.3f} | {m['seconds_per_patient']:.2f} | "
                     f"{m['slices_per_patient']:.0f} |{memory}")
    if any(m.get("dims") == 3 for m in methods.values()):
        lines += ["", "3D rows: a network evaluation is one sliding window of the patch size; seconds per slice = "
                      "seconds per patient / slices."]
    write_text(out_dir / "table2.md", "\n".join(lines) + "\n")
    result = {"table": "table2", "device": where, "sampler": sampler, "steps": steps, "data_dir": str(data_dir),
              "base": base.to_dict(), "methods": methods}
    write_json(out_dir / "experiment.json", result)
    return result
