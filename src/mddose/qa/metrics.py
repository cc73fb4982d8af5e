"""The clinical DVH metrics plan QA compares, and which direction of a difference makes a plan worse.

OARs: ``Dmean``, ``D0.1cc`` (OpenKBP's dose to the hottest 0.1 cc) and ``D2`` (dose to 2 % of the volume), in Gy;
higher is worse. Targets: ``D95``, ``D98``, ``D2`` (Gy), ``V95`` (% of the target receiving at least 95 % of its
prescription) and ``HI`` (homogeneity index, (D2 − D98) / D50). A target's coverage (D95, D98, V95) is flagged
when it differs from the achievable one in either direction; its hot spot (D2) and inhomogeneity (HI) when higher.
"""

from __future__ import annotations

import numpy as np

from mddose.evaluate.clinical import V_X_OF_PRESCRIPTION
from mddose.evaluate.dvh import d_percent, v_dose
from mddose.evaluate.challenge import oar_metrics
from mddose.evaluate.paper import hi_from

OAR_QA_METRICS: tuple[str, ...] = ("Dmean", "D0.1cc", "D2")
TARGET_QA_METRICS: tuple[str, ...] = ("D95", "D98", "D2", "V95", "HI")
#: +1: a plan above the achievable value is worse; 0: a difference either way is flagged (target coverage).
WORSE_WHEN: dict[str, int] = {"Dmean": 1, "D0.1cc": 1, "D2": 1, "HI": 1, "D95": 0, "D98": 0, "V95": 0}
#: The smallest tolerance per metric, whatever the model's error: differences below it are never flagged.
TOLERANCE_FLOOR: dict[str, float] = {"Dmean": 1.0, "D0.1cc": 1.0, "D2": 1.0, "D95": 1.0, "D98": 1.0, "V95": 1.0,
                                     "HI": 0.02}


def qa_unit(metric: str) -> str:
    """'Gy', '%' (V95) or '' (HI)."""
    return "" if metric == "HI" else "%" if metric == "V95" else "Gy"


def roi_qa_metrics(voxels: np.ndarray, voxel_volume_mm3: float, prescription: float | None) -> dict[str, float]:
    """The QA metrics of one ROI's voxel doses (Gy): OAR metrics, or target metrics when ``prescription`` is given."""
    if prescription is None:
        openkbp = oar_metrics(voxels, voxel_volume_mm3)
        return {"Dmean": openkbp["mean"], "D0.1cc": openkbp["D_0.1_cc"], "D2": float(d_percent(voxels, 2.0))}
    d2, d50, d95, d98 = (float(v) for v in d_percent(voxels, np.array([2.0, 50.0, 95.0, 98.0])))
    return {"D95": d95, "D98": d98, "D2": d2, "V95": v_dose(voxels, V_X_OF_PRESCRIPTION * prescription),
            "HI": hi_from(d2, d50, d98) if voxels.size else float("nan")}


def patient_qa_metrics(dose: np.ndarray, structures: dict[str, np.ndarray], prescriptions: dict[str, float],
                       voxel_volume_mm3: float) -> dict[str, dict[str, float]]:
    """``{roi: {metric: value}}`` for every non-empty ROI in ``structures`` (targets: those in ``prescriptions``)."""
    return {roi: roi_qa_metrics(dose[mask], voxel_volume_mm3, prescriptions.get(roi))
            for roi, mask in structures.items() if mask.any()}
