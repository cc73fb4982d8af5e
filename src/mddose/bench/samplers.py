"""``mddose bench sampling``: time per patient and OpenKBP dose score for each sampler, same model and patients.

Each (sampler, steps) pair predicts the same held-out patients with the same seed and ``samples`` draws (as
``mddose predict`` does: :mod:`mddose.inference.predictor`); the JSON records the seconds
per patient (mean and each), the dose score (Gy) against the reference dose, and the machine it ran on.
Default grid: DDPM with all 1000 steps (the paper) against DDIM and DPM-Solver++ at 50, 20 and 10 steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mddose.atomic import write_json
from mddose.bench.timing import machine_info
from mddose.data.openkbp import list_patients, read_patient
from mddose.errors import MddoseError
from mddose.evaluate.challenge import dose_score
from mddose.inference.predictor import Predictor
from mddose.ownership import check_output_file, json_with

log = logging.getLogger(__name__)

DEFAULT_GRID: tuple[tuple[str, int], ...] = (
    ("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpm++", 50), ("dpm++", 20), ("dpm++", 10),
)


def bench_sampling(
    run: str | Path,
    data_dir: str | Path,
    out_json: str | Path,
    grid: tuple[tuple[str, int], ...] = DEFAULT_GRID,
    n_patients: int | None = None,
    samples: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark every (sampler, steps) of ``grid`` on the patients of ``data_dir`` (with reference dose); an
    existing ``out_json`` is replaced only when it is an earlier benchmark of this kind."""
    check_output_file(out_json, "mddose bench sampling", [run, data_dir], json_with("benchmark", "sampling"),
                      overwrite=True)
    base = Predictor(run, samples=samples, seed=seed, device=device, batch_size=batch_size, progress=False)
    if base.cfg.objective != "diffusion":
        raise MddoseError("a deterministic baseline has no sampler to benchmark", base.folder)
    predictors = [base.resampled(sampler, steps) for sampler, steps in grid]  # every pair checked before any work
    patients = [read_patient(f, base.rois) for f in list_patients(data_dir)[:n_patients]]
    rows = []
    for (sampler, steps), predictor in tqdm(list(zip(grid, predictors)), desc="samplers", disable=not progress):
        seconds, scores = [], []
        for p in patients:
            start = time.perf_counter()
            dose = predictor.predict(p).mean
            seconds.append(time.perf_counter() - start)
            if p.dose is not None:
                scores.append(dose_score(p.dose.astype(np.float64), dose.astype(np.float64), p.possible_dose_mask))
        row = {
            "sampler": sampler, "steps": steps, "samples": samples,
            "seconds_per_patient": float(np.mean(seconds)), "seconds": [round(s, 3) for s in seconds],
            "dose_score": float(np.mean(scores)) if scores else None,
        }
        log.info("%s %d steps: %.2f s/patient, dose score %s", sampler, steps, row["seconds_per_patient"],
                 f"{row['dose_score']:.3f} Gy" if scores else "n/a")
        rows.append(row)
    result = {
        "benchmark": "sampling", "checkpoint": str(base.folder), "data_dir": str(data_dir),
        "patients": [p.patient_id for p in patients], "slices_per_patient": [int(len(p.axial_slices())) for p in patients],
        "machine": machine_info(base.device), "results": rows,
    }
    write_json(out_json, result)
    return result
