"""QA on phantoms whose achievable dose is known: the phantom's own modelled dose stands in for the prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mddose.data.dataset import DataConfig
from mddose.data.patient import Patient, RoiConfig
from mddose.data.phantom_dose import compute_dose
from mddose.inference.slicewise import PatientDose
from mddose.qa.metrics import OAR_QA_METRICS, TARGET_QA_METRICS
from mddose.qa.tolerance import ErrorTable, MetricError

#: The stated error table of the tests: unbiased, 1.5 Gy for dose metrics, 2 % for V95, 0.03 for HI.
STATED_SD = {"V95": 2.0, "HI": 0.03}


def stated_table(rois: RoiConfig | None = None) -> ErrorTable:
    rois = rois or RoiConfig()
    metrics = {r: {m: MetricError(0.0, STATED_SD.get(m, 1.5), 1.0, 30)
                   for m in (TARGET_QA_METRICS if r in rois.targets else OAR_QA_METRICS)} for r in rois.all}
    return ErrorTable(list(rois.all), metrics, {"patients": 30, "date": "2026-12-02"})


def known(*draws: np.ndarray) -> PatientDose:
    """A prediction made of the given draws: their mean, their spread, the draws themselves."""
    stack = np.stack(draws).astype(np.float32)
    return PatientDose(stack.mean(axis=0), stack.std(axis=0), stack)


def raised_oar(patient: Patient, dose: np.ndarray, roi: str, factor: float = 1.3, falloff_mm: float = 4.0) -> np.ndarray:
    """``dose`` raised by ``factor`` inside ``roi`` and smoothly (Gaussian in the distance) around it, targets kept."""
    distance = ndimage.distance_transform_edt(~patient.structures[roi], sampling=patient.spacing)
    weight = np.exp(-((distance / falloff_mm) ** 2))
    targets = np.any([patient.structures[t] for t in patient.prescriptions], axis=0)
    return (dose * (1 + (factor - 1) * np.where(targets, 0.0, weight))).astype(np.float32)


def cut_coverage(patient: Patient, dose: np.ndarray, target: str = "PTV70", factor: float = 0.92) -> np.ndarray:
    """``dose`` lowered by ``factor`` inside ``target``: its coverage is cut."""
    return np.where(patient.structures[target], dose * factor, dose).astype(np.float32)


class PhysicsPredictor:
    """A predictor whose 'prediction' is the phantom dose model applied to the patient's anatomy."""

    def __init__(self, weights: Path, rois: RoiConfig | None = None) -> None:
        self.rois, self.weights = rois or RoiConfig(), weights
        self.data = DataConfig(rois=self.rois)
        self.info: dict[str, Any] = {"checkpoint": "phantom dose model", "sampler": "none", "steps": 0, "samples": 1}

    def predict(self, patient: Patient, keep_draws: bool = False) -> PatientDose:
        dose = compute_dose(patient)
        return PatientDose(dose, np.zeros_like(dose), dose[None] if keep_draws else None)
