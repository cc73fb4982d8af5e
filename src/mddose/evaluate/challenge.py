"""The OpenKBP challenge's dose score and DVH score, computed exactly as the official evaluator does.

Reference implementation: ``ababier/open-kbp``, ``provided_code/dose_evaluation_class.py``
(``EvaluateDose.make_metrics`` and ``calculate_metrics``). Its semantics, matched here:

* **Dose score** of one patient: ``sum(|reference - prediction|)`` over the *whole* grid divided by the number
  of voxels in the possible-dose mask; the challenge's dose score is the mean over patients.
* **DVH metrics** of one dose, on the voxels of each ROI (``dose[roi_mask]``), with ``np.percentile``'s
  default linear interpolation:

  - OARs: ``D_0.1_cc`` = percentile ``100 - n_0.1cc / n_roi * 100`` where
    ``n_0.1cc = max(1, round(100 / voxel_volume_mm3))`` (NumPy's round-half-to-even, as ``np.round``) and the
    voxel volume is the product of ``voxel_dimensions``; ``mean`` = the ROI's mean dose.
  - Targets: ``D_99``, ``D_95``, ``D_1`` = percentiles 1, 5 and 99.

  A ROI that is absent or empty is skipped (its metrics are NaN).
* **DVH score**: the NaN-mean of ``|reference metric - prediction metric|`` over the whole table of
  (patient, ROI, metric). Note: this pools all entries; it is *not* the mean of per-patient means.

One deliberate extension: where an OAR is smaller than 0.1 cc (``n_roi < n_0.1cc``) the official percentile is
negative and ``np.percentile`` raises. We clip it to 0, i.e. ``D_0.1_cc`` becomes the ROI's minimum dose (the
hottest 0.1 cc is then the whole ROI). Everywhere the official evaluator returns a value, ours is the same.

All computation is in float64, as the official loader reads the CSVs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from mddose.data.patient import RoiConfig
from mddose.evaluate.dvh import d_percent

OAR_METRICS: tuple[str, ...] = ("D_0.1_cc", "mean")
TARGET_METRICS: tuple[str, ...] = ("D_99", "D_95", "D_1")
_TARGET_VOLUME_PERCENT = np.array([99.0, 95.0, 1.0])  # D_99, D_95, D_1 -> np.percentile 1, 5, 99

MetricTable = dict[tuple[str, str], float]
"""(ROI name, metric name) -> value in Gy; only ROIs present in the patient appear."""


def voxels_in_tenth_cc(voxel_volume_mm3: float) -> float:
    """Number of voxels that make 0.1 cc, as OpenKBP counts it: ``max(1, np.round(100 / voxel volume))``."""
    return float(np.maximum(1.0, np.round(100.0 / voxel_volume_mm3)))


def oar_metrics(voxels: np.ndarray, voxel_volume_mm3: float) -> dict[str, float]:
    """OpenKBP OAR metrics of one ROI's voxel doses: ``D_0.1_cc`` and ``mean`` (Gy); NaN when empty."""
    if voxels.size == 0:
        return {m: float("nan") for m in OAR_METRICS}
    percentile = 100.0 - voxels_in_tenth_cc(voxel_volume_mm3) / voxels.size * 100.0
    return {
        "D_0.1_cc": float(np.percentile(voxels, max(percentile, 0.0))),
        "mean": float(np.mean(voxels)),
    }


def target_metrics(voxels: np.ndarray) -> dict[str, float]:
    """OpenKBP target metrics of one ROI's voxel doses: ``D_99``, ``D_95``, ``D_1`` (Gy); NaN when empty."""
    values = d_percent(voxels, _TARGET_VOLUME_PERCENT)
    return dict(zip(TARGET_METRICS, (float(v) for v in values)))


def roi_voxels(dose: np.ndarray, structures: Mapping[str, np.ndarray], names: Iterable[str]) -> dict[str, np.ndarray]:
    """Voxel doses of each named ROI that is present and non-empty: ``{name: dose[mask]}`` (1-D arrays)."""
    return {n: dose[structures[n]] for n in names if n in structures and structures[n].any()}


def dvh_metrics(
    dose: np.ndarray, structures: Mapping[str, np.ndarray], rois: RoiConfig, voxel_volume_mm3: float
) -> MetricTable:
    """All OpenKBP DVH metrics of one dose, ``{(roi, metric): Gy}``, for the ROIs present and non-empty."""
    return metrics_from_voxels(roi_voxels(dose, structures, rois.all), rois, voxel_volume_mm3)


def metrics_from_voxels(voxels: Mapping[str, np.ndarray], rois: RoiConfig, voxel_volume_mm3: float) -> MetricTable:
    """:func:`dvh_metrics` on already extracted voxel lists (``{roi: dose[mask]}``); empty lists are skipped."""
    table: MetricTable = {}
    for name, v in voxels.items():
        if v.size == 0:
            continue
        if name in rois.oars:
            values = oar_metrics(v, voxel_volume_mm3)
        elif name in rois.targets:
            values = target_metrics(v)
        else:
            continue
        table.update({(name, metric): value for metric, value in values.items()})
    return table


def dvh_differences(reference: MetricTable, prediction: MetricTable) -> MetricTable:
    """``|reference - prediction|`` per (ROI, metric) present in the reference; NaN where either is NaN."""
    return {key: abs(value - prediction.get(key, float("nan"))) for key, value in reference.items()}


def dose_score(reference: np.ndarray, prediction: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    """One patient's OpenKBP dose score (Gy): ``sum |reference - prediction|`` over the whole grid / mask voxels.

    Raises:
        ValueError: the possible-dose mask is empty (the official score would divide by zero).
    """
    n_mask = int(np.count_nonzero(possible_dose_mask))
    if n_mask == 0:
        raise ValueError("the possible-dose mask is empty: the OpenKBP dose score is undefined")
    diff = np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(prediction, dtype=np.float64))
    return float(diff.sum() / n_mask)


def dvh_score(differences: Iterable[MetricTable]) -> float:
    """The OpenKBP DVH score: NaN-mean of the absolute differences pooled over all (patient, ROI, metric).

    Args:
        differences: one :func:`dvh_differences` table per patient.

    Returns:
        The pooled mean in Gy; NaN when every entry is NaN (or there is none).
    """
    values = np.array([v for table in differences for v in table.values()], dtype=np.float64)
    kept = values[~np.isnan(values)]  # np.nanmean semantics, without its empty-slice warning
    return float(kept.mean()) if kept.size else float("nan")
