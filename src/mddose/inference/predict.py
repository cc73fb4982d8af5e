"""Whole-patient prediction (``mddose predict``): every axial slice that meets the possible-dose mask is
sampled in batches, reassembled into the 3D volume and written in the OpenKBP submission format.

Output folder::

    OUT_DIR/
      pt_N.csv                    predicted dose (Gy), submission format: what ``mddose evaluate`` reads
      uncertainty/pt_N.csv        per-voxel standard deviation over --samples draws (Gy), when K > 1
      nifti/pt_N_dose.nii.gz      the same dose as NIfTI (and pt_N_std.nii.gz)
      prediction.json             run, checkpoint, sampler, steps, samples, seconds per patient
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mddose.atomic import write_json
from mddose.data.cache import CachedPatient
from mddose.data.dataset import (mirror_swaps, patient_window, resize_inputs, slice_mask, structure_channels,
                                 swapped_order)
from mddose.data.openkbp import list_patients, read_patient, write_dose_csv
from mddose.data.prescriptions import check_prescriptions, dose_scale, read_prescriptions
from mddose.device import ThreadTuner, prediction_batch, resolve_device
from mddose.diffusion.sampling import check_sampling, sample_many
from mddose.errors import MddoseError
from mddose.inference.bounds import (check_predicted, check_samples, check_smoothing, check_voxels,
                                    training_voxel_mm)
from mddose.inference.regression import predict_volume_3d, regress
from mddose.inference.scope import read_profile, require_target, scope_warnings
from mddose.inference.smoothing import default_smoothing, smooth_across_slices
from mddose.models.build import build_model
from mddose.ownership import filling
from mddose.runs.checkpoint import load_weights
from mddose.runs.layout import CONFIG, RunFolder
from mddose.runs.run_config import RunConfig, checkpoint_run_config

log = logging.getLogger(__name__)


def checkpoint_folder(run: str | Path) -> Path:
    """A checkpoint folder from a run folder (its best, else last checkpoint) or a checkpoint folder itself."""
    run = Path(run)
    if (run / "config.json").is_file() and any((run / f"{w}.safetensors").is_file() for w in ("model", "ema")):
        return run  # a checkpoint folder, or shipped weights (EMA only)
    for name in ("best", "last"):
        if (RunFolder(run).checkpoint(name) / CONFIG).is_file():
            return RunFolder(run).checkpoint(name)
    raise MddoseError("no checkpoint found (expected checkpoints/best or checkpoints/last)", run)


def load_model(run: str | Path, device: torch.device, weights: str = "ema") -> tuple[RunConfig, torch.nn.Module, Path]:
    """Rebuild the model from a checkpoint's config.json and load its (EMA) weights."""
    folder = checkpoint_folder(run)
    cfg = checkpoint_run_config(folder)
    model = build_model(cfg.model)
    path = folder / f"{weights}.safetensors"
    path = path if path.is_file() else folder / "model.safetensors"
    load_weights(model, path)
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        raise MddoseError("the weights hold NaN or infinite values (a diverged training run?)", path)
    return cfg, model.to(device).eval(), folder


Window = tuple[slice, slice]


def prediction_window(vol: CachedPatient, cfg: RunConfig) -> Window:
    """The in-plane part of the grid the network sees: the patient's box for a network trained on crops (nothing
    of the possible-dose mask lies outside it), else the whole slice."""
    return patient_window(vol, cfg.model.size_multiple) if cfg.data.crop else (slice(None), slice(None))


def slice_inputs(vol: CachedPatient, zs: list[int], cfg: RunConfig, window: Window,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's input for axial slices ``zs``, as in training: (structure channels, possible-dose mask in
    ``window``, that mask at the network's size). Without crops both are resized to ``cfg.data.image_size``."""
    wx, wy = window
    cond = torch.from_numpy(np.stack([structure_channels(vol, z, cfg.data)[:, wx, wy] for z in zs])).to(device)
    mask = torch.from_numpy(np.stack([slice_mask(vol, z)[:, wx, wy] for z in zs])).to(device)
    cond, mask_in = (cond, mask) if cfg.data.crop else resize_inputs(cond, mask, cfg.data)
    return cond, mask, mask_in


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    cfg: RunConfig,
    vol: CachedPatient,
    *,
    sampler: str = "dpm++",
    steps: int = 20,
    samples: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
    tuner: ThreadTuner | None = None,
    mirror: bool = False,
    smooth_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict one patient: (dose, std) in Gy on the full (X, Y, Z) grid, 0 outside the possible-dose mask.

    ``tuner`` is told each batch's time (it picks the CPU thread count from them). ``mirror`` also predicts the
    patient mirrored left-right (paired organs swapped, as the training flips do) and averages the two
    (:func:`mirror_average`); it doubles the cost. ``smooth_mm``: the Gaussian across slices of the dose
    (:mod:`~mddose.inference.smoothing`; default: the model's, :func:`~mddose.inference.smoothing.default_smoothing`)
    outside the targets; the std stays that of the unsmoothed draws.

    A deterministic baseline (``cfg.objective == "regression"``) ignores sampler, steps and samples: one
    forward pass per slice (a 3D one: Gaussian-blended sliding windows over the volume), std 0.
    """
    device = device or next(model.parameters()).device
    if cfg.volumetric:  # a 3D baseline: sliding windows over the whole volume
        dose, std = predict_volume_3d(model, cfg.model, cfg.data, vol, device), np.zeros(vol.full_shape, np.float32)
    else:
        dose, std = _predict_slices(model, cfg, vol, sampler, steps, samples, batch_size, seed, device, progress,
                                    tuner, mirror)
    sigma = default_smoothing(cfg.volumetric) if smooth_mm is None else smooth_mm
    targets = vol.full_mask(cfg.data.rois.targets) if sigma else None  # their dose is kept as predicted
    dose = smooth_across_slices(dose, vol.full_mask(), sigma, vol.spacing[2], keep=targets)
    if not (np.isfinite(dose).all() and np.isfinite(std).all()):  # never written: no prediction may hold a NaN
        raise MddoseError(f"{vol.patient_id}: the network produced non-finite doses")
    check_predicted(dose, cfg.data, vol.patient_id)  # nor a dose no plan reaches (an edited dose_norm_gy)
    return dose, std


def _predict_slices(model: torch.nn.Module, cfg: RunConfig, vol: CachedPatient, sampler: str, steps: int,
                    samples: int, batch_size: int, seed: int, device: torch.device, progress: bool,
                    tuner: ThreadTuner | None, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """The slice-wise part of :func:`predict_volume`: every axial slice in the mask, in batches."""
    full = vol.full_shape
    dose, std = np.zeros(full, np.float32), np.zeros(full, np.float32)
    zs = vol.axial_slices()
    generator = torch.Generator(device=device).manual_seed(seed)
    size = cfg.data.image_size
    wx, wy = window = prediction_window(vol, cfg)
    bar = tqdm(total=len(zs), desc=vol.patient_id, unit="slice", leave=False, disable=not progress)
    for start in range(0, len(zs), batch_size):
        chunk, began = zs[start:start + batch_size], time.perf_counter()
        cond, mask, mask_in = slice_inputs(vol, chunk, cfg, window, device)
        native = mask.shape[-2:]
        if cfg.objective == "regression":
            draw = lambda c, m: (regress(model, c, m), torch.zeros_like(m))  # noqa: E731
        else:
            draw = lambda c, m: sample_many(model, c, cfg.diffusion, m, samples=samples, sampler=sampler,  # noqa: E731
                                            steps=steps, generator=generator)
        mean, spread = mirror_average(draw, cond, mask_in, mirror_swaps(cfg.data)) if mirror else draw(cond, mask_in)
        if not cfg.data.crop and tuple(native) != (size, size):
            mean = F.interpolate(mean, size=native, mode="bilinear", align_corners=False)
            spread = F.interpolate(spread, size=native, mode="bilinear", align_corners=False)
        scale = cfg.data.dose_norm_gy
        for i, z in enumerate(chunk):
            dose[wx, wy, z] = (mean[i, 0] * mask[i, 0]).float().cpu().numpy() * scale
            std[wx, wy, z] = (spread[i, 0] * mask[i, 0]).float().cpu().numpy() * scale
        bar.update(len(chunk))
        if tuner is not None and len(chunk) == batch_size:  # full batches only: comparable times
            tuner.step_done(time.perf_counter() - began)
    bar.close()
    return dose, std


def mirror_average(draw, cond: torch.Tensor, mask: torch.Tensor,
                   swaps: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time mirroring: ``draw(cond, mask) -> (mean, std)`` on the slices as given and mirrored left-right
    (last axis flipped, paired organs' channels swapped), the second mirrored back; the mean of both, and the
    standard deviation over both orientations' draws (within-orientation variance plus the spread of the two
    means)."""
    order = swapped_order(cond.shape[1], swaps)
    mean_a, std_a = draw(cond, mask)
    mean_b, std_b = (x.flip(-1) for x in draw(cond.flip(-1)[:, order], mask.flip(-1)))
    var = (std_a.square() + std_b.square()) / 2 + ((mean_a - mean_b) / 2).square()
    return (mean_a + mean_b) / 2, var.sqrt()


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
) -> dict[str, Any]:
    """Predict every patient folder in ``data_dir`` with the model of ``run``; returns the summary written.

    A patient without a target is refused (:func:`~mddose.inference.scope.require_target`); one outside the
    training set's range is predicted with a warning. Stated prescriptions (the patient folder's
    ``prescriptions.json``, overridden by ``prescriptions``) scale the dose (:mod:`mddose.data.prescriptions`).

    ``sampler`` and ``steps`` default to the model's own (:meth:`~mddose.diffusion.process.DiffusionConfig.sampling`),
    ``smooth_mm`` to the model's smoothing across slices (:func:`~mddose.inference.smoothing.default_smoothing`).

    While it runs, ``out_dir`` holds an unfinished-marker (:data:`~mddose.atomic.INCOMPLETE`) that ``evaluate``
    refuses; it goes only once every patient and ``prediction.json`` are written. ``out_dir`` is claimed
    (:func:`~mddose.ownership.claim`): an earlier finished prediction there is replaced only with ``overwrite``.
    Patients the network would see at another scale than in training are refused (:mod:`~mddose.inference.bounds`).
    """
    folders = list_patients(data_dir)
    check_samples(samples)
    dev = resolve_device(device)
    batch_size = prediction_batch(dev, batch_size)
    cfg, model, folder = load_model(run, dev)
    if cfg.objective == "regression":  # one deterministic pass: no sampler, nothing to draw twice
        sampler, steps, samples = "none", 0, 1
    else:
        sampler, steps = cfg.diffusion.sampling(sampler, steps)
        check_sampling(cfg.diffusion, sampler, steps)
    smooth_mm = check_smoothing(default_smoothing(cfg.volumetric) if smooth_mm is None else smooth_mm)
    prescriptions = check_prescriptions(prescriptions or {}, cfg.data.rois)
    for patient_folder in folders:  # before any work: every patient has a target
        require_target(patient_folder, cfg.data.rois)
    warnings = check_voxels(folders, training_voxel_mm(folder, cfg.data), cfg.data)
    profile, notes = read_profile(folder), {}
    times: dict[str, float] = {}
    tuner = ThreadTuner(dev, probe=2, every=40)  # across patients: a busy machine is noticed within a patient
    with filling(out_dir, "mddose predict", inputs=[run, data_dir], overwrite=overwrite) as out:
        for patient_folder in tqdm(folders, desc="predict", unit="pt", disable=not progress):
            patient = read_patient(patient_folder, cfg.data.rois, read_dose=False)  # the dose is what we predict
            scale, notes[patient.patient_id] = _checked(patient, patient_folder, cfg, profile, prescriptions)
            start = time.perf_counter()
            vol = CachedPatient.from_patient(patient, cfg.data.prior_angles)
            dose, std = predict_volume(model, cfg, vol, sampler=sampler, steps=steps, samples=samples,
                                       batch_size=batch_size, seed=seed, device=dev, progress=progress, tuner=tuner,
                                       mirror=mirror, smooth_mm=smooth_mm)
            dose, std = dose * np.float32(scale), std * np.float32(scale)
            times[patient.patient_id] = round(time.perf_counter() - start, 3)
            _write_patient(out, patient_folder, patient, dose, std if samples > 1 else None, nifti)
        tuner.restore()
        summary = {
            "checkpoint": str(folder), "data_dir": str(data_dir), "objective": cfg.objective, "sampler": sampler,
            "steps": steps, "samples": samples, "mirror": mirror, "smooth_mm": smooth_mm, "batch_size": batch_size,
            "seed": seed,
            "device": str(dev),
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
