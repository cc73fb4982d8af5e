"""Open a trained model and predict patients: the one place that does it, for ``mddose predict``, ``qa``,
``qa-calibrate``, ``bench sampling``, fine-tuning and shipping.

A :class:`Predictor` settles once how a model predicts: the checkpoint folder and its config, the weights file
(EMA, else the model's own), the device and batch size, the sampler and steps (the model's own by default,
validated), the number of samples K, the seed, mirroring, the smoothing across slices and the voxel size of
the training patients. :meth:`Predictor.predict` then gives one patient's
:class:`~mddose.inference.slicewise.PatientDose`.

``samples`` means one thing everywhere: K draws of every batch of slices, one after another from one generator
seeded with ``seed`` for each patient (:func:`~mddose.inference.slicewise.predict_volume`). Their mean is the
prediction, their standard deviation the uncertainty; K = 1 is the single draw the shipped model is scored on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mddose.data.cache import CachedPatient
from mddose.data.patient import Patient
from mddose.device import ThreadTuner, prediction_batch, resolve_device
from mddose.diffusion.sampling import check_sampling
from mddose.errors import MddoseError
from mddose.inference.bounds import check_samples, check_smoothing, check_voxel, check_voxels, training_voxel_mm
from mddose.inference.refinement import Refinement, chosen_refiner
from mddose.inference.smoothing import default_smoothing
from mddose.inference.slicewise import PatientDose, predict_volume
from mddose.models.build import build_model
from mddose.runs.checkpoint import load_weights
from mddose.runs.layout import CONFIG, RunFolder
from mddose.runs.run_config import RunConfig, checkpoint_run_config


def checkpoint_folder(run: str | Path) -> Path:
    """A checkpoint folder from a run folder (its best, else last checkpoint) or a checkpoint folder itself."""
    run = Path(run)
    if (run / "config.json").is_file() and any((run / f"{w}.safetensors").is_file() for w in ("model", "ema")):
        return run  # a checkpoint folder, or shipped weights (EMA only)
    for name in ("best", "last"):
        if (RunFolder(run).checkpoint(name) / CONFIG).is_file():
            return RunFolder(run).checkpoint(name)
    raise MddoseError("no checkpoint found (expected checkpoints/best or checkpoints/last)", run)


def weights_file(folder: Path, weights: str = "ema") -> Path:
    """The weights a checkpoint folder predicts with: ``{weights}.safetensors`` (EMA by default), else the model's."""
    path = folder / f"{weights}.safetensors"
    return path if path.is_file() else folder / "model.safetensors"


def open_model(path: Path, device: torch.device) -> tuple[RunConfig, torch.nn.Module]:
    """The model rebuilt from the config.json beside ``path``, with the weights of ``path``, in eval mode."""
    cfg = checkpoint_run_config(path.parent)
    model = build_model(cfg.model)
    load_weights(model, path)
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        raise MddoseError("the weights hold NaN or infinite values (a diverged training run?)", path)
    return cfg, model.to(device).eval()


def load_model(run: str | Path, device: torch.device, weights: str = "ema") -> tuple[RunConfig, torch.nn.Module, Path]:
    """Rebuild the model of a run or checkpoint folder and load its (EMA) weights; (config, model, folder)."""
    folder = checkpoint_folder(run)
    return (*open_model(weights_file(folder, weights), device), folder)


def settled_sampling(cfg: RunConfig, sampler: str | None, steps: int | None, samples: int) -> tuple[str, int, int]:
    """(sampler, steps, samples) as the model is sampled: its own sampler and steps unless given, validated; a
    deterministic baseline has none and one 'sample'."""
    check_samples(samples)
    if cfg.objective == "regression":  # one deterministic pass: no sampler, nothing to draw twice
        return "none", 0, 1
    sampler, steps = cfg.diffusion.sampling(sampler, steps)
    check_sampling(cfg.diffusion, sampler, steps)
    return sampler, steps, samples


class Predictor:
    """A run folder, checkpoint folder or shipped model, ready to predict patients (see the module docstring).

    ``refiner``: a refinement stage's folder, False for none, None (default) for the model's own when it ships one
    (:func:`~mddose.inference.refinement.chosen_refiner`). ``smooth_mm`` defaults to the model's smoothing
    (:func:`~mddose.inference.smoothing.default_smoothing`; none with a refiner), ``batch_size`` to the device's
    (:func:`~mddose.device.prediction_batch`). :attr:`tuner`, when a caller sets
    one, picks the CPU thread count from the batches' times (that caller restores it).
    """

    tuner: ThreadTuner | None = None

    def __init__(self, model: str | Path, sampler: str | None = None, steps: int | None = None, samples: int = 1,
                 seed: int = 0, device: str = "auto", batch_size: int | None = None, smooth_mm: float | None = None,
                 mirror: bool = False, progress: bool = True, refiner: str | Path | bool | None = None) -> None:
        check_samples(samples)  # before the model is read: a bad option is one line, at once
        self.device = resolve_device(device)
        self.batch_size = prediction_batch(self.device, batch_size)
        self.folder = checkpoint_folder(model)
        self.weights = weights_file(self.folder)  # what the model predicts with, and what QA's table is tied to
        self.cfg, self.model = open_model(self.weights, self.device)
        self.sampler, self.steps, self.samples = settled_sampling(self.cfg, sampler, steps, samples)
        chosen = chosen_refiner(self.folder, refiner)  # the model's own by default, when it ships one
        self.refinement = None if chosen is None else Refinement(chosen, self.weights, self.sampler, self.steps,
                                                                  self.device)
        default = 0.0 if chosen is not None else default_smoothing(self.cfg.volumetric)  # the refiner replaces it
        self.smooth_mm = check_smoothing(default if smooth_mm is None else smooth_mm)
        self.seed, self.mirror, self.progress = seed, mirror, progress
        self.trained_voxel = training_voxel_mm(self.folder, self.cfg.data)
        self.rois, self.data = self.cfg.data.rois, self.cfg.data

    @property
    def info(self) -> dict[str, Any]:
        """How it predicts, as ``prediction.json`` and ``qa.json`` record it."""
        return {"checkpoint": str(self.folder), "objective": self.cfg.objective, "sampler": self.sampler,
                "steps": self.steps, "samples": self.samples, "mirror": self.mirror, "smooth_mm": self.smooth_mm,
                "batch_size": self.batch_size, "seed": self.seed, "device": str(self.device),
                "refiner": None if self.refinement is None else str(self.refinement.folder)}

    def resampled(self, sampler: str, steps: int) -> Predictor:
        """The same loaded model with another sampler and step count (``bench sampling``'s grid)."""
        other = copy.copy(self)
        other.sampler, other.steps, other.samples = settled_sampling(self.cfg, sampler, steps, self.samples)
        return other

    def check_folders(self, folders: Sequence[Path]) -> list[str]:
        """Refuse, before any work, patient folders the model would see at another scale than in training
        (:mod:`~mddose.inference.bounds`); the warnings for those merely off (logged as each is predicted)."""
        return check_voxels(folders, self.trained_voxel, self.cfg.data)

    def predict(self, patient: Patient, keep_draws: bool = False) -> PatientDose:
        """One patient's dose: the mean of the K draws and their spread (and the draws with ``keep_draws``).

        A patient the model would see at another scale than in training is refused; one merely off is predicted
        with a warning logged (:func:`~mddose.inference.bounds.check_voxel`).
        """
        check_voxel(patient.spacing, patient.shape, self.trained_voxel, self.cfg.data, patient.patient_id)
        return self.predict_prepared(CachedPatient.from_patient(patient, self.cfg.data.prior_angles), keep_draws)

    def predict_prepared(self, vol: CachedPatient, keep_draws: bool = False) -> PatientDose:
        """:meth:`predict` for a patient already in the cache's form (its beam prior included when the model reads
        one); a refiner, when given, corrects the mean and every draw."""
        dose = predict_volume(self.model, self.cfg, vol, sampler=self.sampler, steps=self.steps, samples=self.samples,
                              batch_size=self.batch_size, seed=self.seed, device=self.device, progress=self.progress,
                              tuner=self.tuner, mirror=self.mirror, smooth_mm=self.smooth_mm, keep_draws=keep_draws)
        if self.refinement is None:
            return dose
        draws = None if dose.draws is None else np.stack([self.refinement(vol, d) for d in dose.draws])
        return replace(dose, mean=self.refinement(vol, dose.mean), draws=draws)
