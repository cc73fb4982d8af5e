"""Score one predicted dose against one reference patient on every metric of :mod:`mddose.evaluate`.

The reference's metrics are computed once per patient (:func:`dose_metrics`) and shared by all methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mddose.data.patient import Patient
from mddose.evaluate.clinical import clinical_metrics, gamma_pass_rate, metric_unit
from mddose.evaluate.challenge import (
    MetricTable,
    dose_score,
    dvh_differences,
    metrics_from_voxels,
    roi_voxels,
)
from mddose.evaluate.paper import headline_target, paper_dose_score, paper_dvh_score

PATIENT_METRICS: tuple[str, ...] = (
    "openkbp_dose_score", "openkbp_dvh_score", "paper_dose_score", "paper_dvh_score", "hi_abs_diff",
    "gamma_pass_rate",
)
"""Headline per-patient metrics, in table order (all lower is better except ``gamma_pass_rate``)."""


@dataclass
class DoseMetrics:
    """All ROI metrics of one dose on one patient."""

    openkbp: MetricTable  # (roi, OpenKBP metric) -> Gy
    clinical: dict[str, dict[str, float]]  # roi -> clinical metric -> value


@dataclass
class PatientResult:
    """One method's scores on one patient."""

    patient_id: str
    method: str
    scores: dict[str, float]  # PATIENT_METRICS and the extra per-patient columns
    differences: MetricTable  # OpenKBP |reference - prediction| per (roi, metric), for the pooled DVH score
    hi_target: str | None = None  # the PTV of the headline HI (highest prescription present)
    roi_rows: list[dict[str, Any]] = field(default_factory=list)  # long per-ROI table


def dose_metrics(patient: Patient, dose: np.ndarray) -> DoseMetrics:
    """OpenKBP and clinical metrics of ``dose`` (X, Y, Z, Gy) for every ROI the patient has."""
    voxels = roi_voxels(dose, patient.structures, patient.present_rois())
    clinical = {
        name: clinical_metrics(v, patient.rois.prescription(name) if name in patient.rois.targets else None)
        for name, v in voxels.items()
    }
    return DoseMetrics(metrics_from_voxels(voxels, patient.rois, patient.voxel_volume_mm3), clinical)


def score_patient(
    patient: Patient,
    reference: np.ndarray,
    reference_metrics: DoseMetrics,
    prediction: np.ndarray,
    method: str,
    gamma: bool = True,
) -> PatientResult:
    """Score ``prediction`` against ``reference`` (both (X, Y, Z) float64 Gy on the patient's grid).

    Args:
        patient: the reference patient (structures, possible-dose mask, spacing, ROI config).
        reference: the reference dose, read in float64 as the OpenKBP evaluator does.
        reference_metrics: ``dose_metrics(patient, reference)``, computed once per patient.
        prediction: the predicted dose, as read from the submission file (not masked again).
        method: the method's name, stored in the result.
        gamma: compute the gamma passing rate (NaN with a reason when pymedphys is missing).
    """
    pred = dose_metrics(patient, prediction)
    differences = dvh_differences(reference_metrics.openkbp, pred.openkbp)
    diff_values = np.array(list(differences.values()), dtype=np.float64)
    diff_values = diff_values[~np.isnan(diff_values)]

    headline = headline_target(patient.prescriptions)
    hi_ref = reference_metrics.clinical[headline]["HI"] if headline else math.nan
    hi_pred = pred.clinical[headline]["HI"] if headline else math.nan
    gamma_result = gamma_pass_rate(reference, prediction, patient.spacing) if gamma else None

    scores = {
        "openkbp_dose_score": dose_score(reference, prediction, patient.possible_dose_mask),
        "openkbp_dvh_score": float(diff_values.mean()) if diff_values.size else math.nan,
        "paper_dose_score": paper_dose_score(reference, prediction),
        "paper_dvh_score": paper_dvh_score(differences, patient.rois.targets),
        "hi_abs_diff": abs(hi_pred - hi_ref),
        "gamma_pass_rate": gamma_result.pass_rate if gamma_result else math.nan,
        "n_dvh_metrics": float(diff_values.size),
        "hi_reference": hi_ref,
        "hi_prediction": hi_pred,
    }
    rows = _roi_rows(patient, method, reference_metrics, pred, headline)
    return PatientResult(patient.patient_id, method, scores, differences, headline, rows)


def _roi_rows(
    patient: Patient, method: str, ref: DoseMetrics, pred: DoseMetrics, headline: str | None
) -> list[dict[str, Any]]:
    """Long-format rows: one per (roi, metric), OpenKBP metrics first, then clinical ones."""
    rows = []
    for roi, metrics in ref.clinical.items():
        kind = "target" if roi in patient.rois.targets else "oar"
        entries = [("openkbp", m, v, pred.openkbp[(roi, m)]) for (r, m), v in ref.openkbp.items() if r == roi]
        entries += [("clinical", m, v, pred.clinical[roi][m]) for m, v in metrics.items()]
        for group, metric, r_value, p_value in entries:
            rows.append({
                "method": method, "patient_id": patient.patient_id, "roi": roi, "kind": kind,
                "headline_target": roi == headline, "group": group, "metric": metric,
                "unit": metric_unit(metric), "reference": r_value, "prediction": p_value,
                "abs_diff": abs(p_value - r_value),
            })
    return rows
