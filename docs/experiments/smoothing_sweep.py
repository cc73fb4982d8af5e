"""Smoothing across slices, swept on saved predictions: how the OpenKBP scores of a slice-wise model move with the
width of the Gaussian along the slice axis (mddose.inference.smoothing), without predicting again.

    mddose predict MODEL DATA_DIR PRED_DIR --smooth-mm 0 --device cpu      # unsmoothed predictions, once
    python3 docs/experiments/smoothing_sweep.py DATA_DIR PRED_DIR OUT_DIR 0 2.5 5 7.5 10 [--everywhere]

writes OUT_DIR/smooth-<sigma>/pt_N.csv for every sigma (mm), smoothed as `mddose predict` smooths (the targets'
dose kept as predicted) or, with --everywhere, inside the whole possible-dose mask; scores them all with
`mddose evaluate`'s code (OUT_DIR/eval: summary.json, per_patient.csv, per_roi.csv, paired t-tests against the
smallest sigma) and prints one line per sigma. Results: docs/experiments/smoothing-openkbp.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mddose.data.openkbp import list_patients, read_dose_csv, read_patient, write_dose_csv
from mddose.evaluate.folders import evaluate
from mddose.inference.smoothing import smooth_across_slices


def sweep(data_dir: Path, pred_dir: Path, out_dir: Path, sigmas: list[float],
          everywhere: bool = False) -> dict[str, dict[str, float]]:
    """Smooth every prediction of ``pred_dir`` with each sigma and score the results; returns name → scores."""
    record = pred_dir / "prediction.json"  # written by `mddose predict`
    made_with = json.loads(record.read_text()).get("smooth_mm", 0) if record.is_file() else 0
    if made_with != 0:
        sys.exit(f"error: {pred_dir}: predicted with smoothing {made_with} mm; predict with --smooth-mm 0")
    sigmas = sorted(set(sigmas))
    names = [f"smooth-{s:g}" for s in sigmas]
    for folder in list_patients(data_dir):
        patient = read_patient(folder, read_ct=False, read_dose=False)
        mask = patient.possible_dose_mask
        targets = [patient.structures[t] for t in patient.rois.targets if t in patient.structures]
        keep = None if everywhere else np.logical_or.reduce([np.zeros_like(mask), *targets])
        dose = read_dose_csv(pred_dir / f"{patient.patient_id}.csv", mask.shape)
        for name, sigma in zip(names, sigmas):
            smoothed = smooth_across_slices(dose, mask, sigma, patient.spacing[2], keep=keep)
            write_dose_csv(out_dir / name / f"{patient.patient_id}.csv", smoothed, mask)
    summary = evaluate(data_dir, [out_dir / n for n in names], out_dir / "eval", names=names, against=names[0],
                       gamma=False, progress=False)
    return {n: summary["methods"][n]["openkbp"] for n in names}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--everywhere"]
    if len(args) < 4:
        sys.exit(__doc__)
    data, pred, out = (Path(a) for a in args[:3])
    scores = sweep(data, pred, out, [float(a) for a in args[3:]], everywhere="--everywhere" in sys.argv)
    for name, score in scores.items():
        print(f"{name:>14}: dose score {score['dose_score']:.4f} Gy, DVH score {score['dvh_score']:.4f} Gy")
