"""The QA comparison: per ROI and metric, the plan against the achievable value, with a tolerance and a flag.

``achievable = predicted − bias`` (the metric of the mean predicted dose, corrected by the model's mean
validation error on it), ``difference = plan − achievable``. A metric is flagged when its difference exceeds the
tolerance in the worse direction (:data:`~mddose.qa.metrics.WORSE_WHEN`); a ROI when any of its metrics is. A
metric the error table does not know is shown but never flagged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from mddose.data.patient import Patient
from mddose.qa.metrics import OAR_QA_METRICS, TARGET_QA_METRICS, WORSE_WHEN, patient_qa_metrics, qa_unit
from mddose.qa.tolerance import DEFAULT_Z, ErrorTable

if TYPE_CHECKING:  # a prediction is read here, never made
    from mddose.inference.slicewise import PatientDose


@dataclass(frozen=True)
class QaRow:
    """One (ROI, metric) line of the QA table."""

    roi: str
    kind: str  # "OAR" or "target"
    metric: str
    unit: str
    plan: float
    predicted: float
    achievable: float
    sample_sd: float
    difference: float
    tolerance: float
    flag: bool

    def to_dict(self) -> dict[str, object]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class QaResult:
    """Every row, the flagged ROIs, the predicted samples (K, X, Y, Z), the prediction (their mean) and its
    per-voxel spread (Gy), as the predictor gave them."""

    rows: list[QaRow]
    samples: np.ndarray
    mean: np.ndarray
    spread: np.ndarray

    @property
    def flagged(self) -> list[str]:
        return list(dict.fromkeys(r.roi for r in self.rows if r.flag))


def _is_flagged(metric: str, difference: float, tolerance: float) -> bool:
    if not (math.isfinite(difference) and math.isfinite(tolerance)):
        return False
    return difference > tolerance if WORSE_WHEN[metric] > 0 else abs(difference) > tolerance


def _physical(metric: str, value: float) -> float:
    """A bias-corrected value kept where the metric can be: V95 within 0–100 %, doses and HI not negative."""
    return min(max(value, 0.0), 100.0) if metric == "V95" else max(value, 0.0)


def check_plan(patient: Patient, plan: np.ndarray, prediction: PatientDose, table: ErrorTable,
               z: float = DEFAULT_Z, stated: dict[str, float] | None = None) -> QaResult:
    """Compare ``plan`` (X, Y, Z Gy) with the ``prediction`` (its mean and its K draws, Gy) on ``patient``'s ROIs;
    ``stated``: the targets' stated prescriptions where they differ from the trained ones (V95 counts them). A
    prediction without draws counts as one draw, its mean."""
    rois = patient.present_rois()
    structures = {r: patient.structures[r] for r in rois}
    rx, vv = patient.prescriptions | (stated or {}), patient.voxel_volume_mm3
    mean = prediction.mean
    samples = prediction.draws if prediction.draws is not None else mean[None]
    plan_m = patient_qa_metrics(plan, structures, rx, vv)
    pred_m = patient_qa_metrics(mean, structures, rx, vv)
    per_sample = [patient_qa_metrics(s, structures, rx, vv) for s in samples]
    rows = []
    for roi in rois:
        metrics = TARGET_QA_METRICS if roi in rx else OAR_QA_METRICS
        for metric in metrics:
            sd = float(np.std([s[roi][metric] for s in per_sample]))
            err = table.error(roi, metric)
            predicted = pred_m[roi][metric]
            achievable = _physical(metric, predicted - err.bias if err is not None else predicted)
            difference = plan_m[roi][metric] - achievable
            tolerance = table.tolerance(roi, metric, sd, z)
            rows.append(QaRow(roi, "target" if roi in rx else "OAR", metric, qa_unit(metric), plan_m[roi][metric],
                              predicted, achievable, sd, difference, tolerance,
                              _is_flagged(metric, difference, tolerance)))
    return QaResult(rows, samples, mean.astype(np.float32), prediction.spread.astype(np.float32))
