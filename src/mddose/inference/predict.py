"""Whole-patient prediction (``mddose predict``): every patient folder predicted by one
:class:`~mddose.inference.predictor.Predictor` and written in the OpenKBP submission format.

Output folder::

    OUT_DIR/
      pt_N.csv                    predicted dose (Gy), submission format: what ``mddose evaluate`` reads
      uncertainty/pt_N.csv        per-voxel standard deviation over the --samples draws (Gy), when K > 1
      nifti/pt_N_dose.nii.gz      the same dose as NIfTI (and pt_N_std.nii.gz)
      prediction.json             run, checkpoint, sampler, steps, samples, seconds per patient
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mddose.atomic import write_json
from mddose.data.openkbp import list_patients, read_patient, write_dose_csv
from mddose.data.prescriptions import check_prescriptions, dose_scale, read_prescriptions
from mddose.device import ThreadTuner
from mddose.errors import MddoseError
from mddose.inference.predictor import Predictor
from mddose.inference.scope import read_profile, require_target, scope_warnings
from mddose.ownership import filling
from mddose.runs.run_config import RunConfig

log = logging.getLogger(__name__)


def predict(
    run: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    sampler: str | None = None,
    steps: int | None = None,
    samples: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    nifti: bool = True,
    progress: bool = True,
    mirror: bool = False,
    smooth_mm: float | None = None,
    prescriptions: dict[str, float] | None = None,
    overwrite: bool = False,
    refiner: str | Path | bool | None = None,
) -> dict[str, Any]:
    """Predict every patient folder in ``data_dir`` with the model of ``run``; returns the summary written.

    ``samples`` draws per patient (:mod:`~mddose.inference.predictor`): their mean is ``pt_N.csv``, their
    standard deviation ``uncertainty/pt_N.csv``. A patient without a target is refused
    (:func:`~mddose.inference.scope.require_target`); one outside the training set's range is predicted with a
    warning. Stated prescriptions (the patient folder's ``prescriptions.json``, overridden by ``prescriptions``)
    scale the dose (:mod:`mddose.data.prescriptions`).

    ``sampler`` and ``steps`` default to the model's own (:meth:`~mddose.diffusion.process.DiffusionConfig.sampling`),
    ``smooth_mm`` to the model's smoothing across slices (:func:`~mddose.inference.smoothing.default_smoothing`;
    none with a refiner, the 3D refinement stage trained for this model by ``mddose refine``). ``refiner``: its
    folder, False for none, None for the model's own when it ships one.

    While it runs, ``out_dir`` holds an unfinished-marker (:data:`~mddose.atomic.INCOMPLETE`) that ``evaluate``
    refuses; it goes only once every patient and ``prediction.json`` are written. ``out_dir`` is claimed
    (:func:`~mddose.ownership.claim`): an earlier finished prediction there is replaced only with ``overwrite``.
    Patients the network would see at another scale than in training are refused (:mod:`~mddose.inference.bounds`).
    """
    folders = list_patients(data_dir)
    predictor = Predictor(run, sampler, steps, samples, seed, device, batch_size, smooth_mm, mirror, progress,
                          refiner)
    cfg = predictor.cfg
    prescriptions = check_prescriptions(prescriptions or {}, cfg.data.rois)
    for patient_folder in folders:  # before any work: every patient has a target
        require_target(patient_folder, cfg.data.rois)
    warnings = predictor.check_folders(folders)
    profile, notes = read_profile(predictor.folder), {}
    times: dict[str, float] = {}
    tuner = predictor.tuner = ThreadTuner(predictor.device, probe=2, every=40)  # across patients: busy CPUs noticed
    refiner_dir = predictor.refinement.folder if predictor.refinement is not None else None
    with filling(out_dir, "mddose predict", inputs=[run, data_dir, refiner_dir], overwrite=overwrite) as out:
        for patient_folder in tqdm(folders, desc="predict", unit="pt", disable=not progress):
            patient = read_patient(patient_folder, cfg.data.rois, read_dose=False)  # the dose is what we predict
            scale, notes[patient.patient_id] = _checked(patient, patient_folder, cfg, profile, prescriptions)
            start = time.perf_counter()
            dose = predictor.predict(patient).scaled(scale)
            times[patient.patient_id] = round(time.perf_counter() - start, 3)
            spread = dose.spread if predictor.samples > 1 else None
            _write_patient(out, patient_folder, patient, dose.mean, spread, nifti)
        tuner.restore()
        summary = {
            "checkpoint": str(predictor.folder), "data_dir": str(data_dir), **predictor.info,
            "n_patients": len(times), "seconds_per_patient": times, "patients": notes,
            "mean_seconds_per_patient": round(float(np.mean(list(times.values()))), 3) if times else None,
            "warnings": warnings,
        }
        write_json(out / "prediction.json", summary)
    return summary


def _checked(patient, folder: Path, cfg: RunConfig, profile: dict[str, Any] | None,
             prescriptions: dict[str, float] | None) -> tuple[float, dict[str, Any]]:
    """A patient's dose scale from its stated prescriptions, after its target and scope checks (warnings logged);
    returns the scale and what ``prediction.json`` records of it."""
    if not patient.prescriptions:
        raise MddoseError("no target: the model's target masks are empty", folder)
    stated = read_prescriptions(folder, cfg.data.rois) | (prescriptions or {})
    scale, note = dose_scale(patient.prescriptions, stated)
    warnings = scope_warnings(patient, cfg.data, profile) + ([f"{patient.patient_id}: {note}"] if note else [])
    for line in warnings:
        log.warning("%s", line)
    return scale, {"dose_scale": round(scale, 6), "stated_prescriptions": stated, "warnings": warnings}


def _write_patient(out_dir: Path, patient_dir: Path, patient, dose: np.ndarray, std: np.ndarray | None,
                   nifti: bool) -> None:
    """pt_N.csv, uncertainty/pt_N.csv (with a spread) and the NIfTI copies of one predicted patient."""
    write_dose_csv(out_dir / f"{patient.patient_id}.csv", dose, patient.possible_dose_mask)
    if std is not None:
        write_dose_csv(out_dir / "uncertainty" / f"{patient.patient_id}.csv", std, patient.possible_dose_mask)
    if nifti:
        _write_nifti(out_dir / "nifti", patient_dir, patient, dose, std)


def _write_nifti(folder: Path, patient_dir: Path, patient, dose: np.ndarray, std: np.ndarray | None) -> None:
    """NIfTI copies placed where the patient's CT was (imported DICOM) or in our default orientation."""
    from mddose.io.geometry import default_geometry
    from mddose.io.nifti import patient_geometry, save_volume

    geometry = patient_geometry(patient_dir) or default_geometry(patient.shape, patient.spacing)
    save_volume(folder / f"{patient.patient_id}_dose.nii.gz", dose, geometry)
    if std is not None:
        save_volume(folder / f"{patient.patient_id}_std.nii.gz", std, geometry)
