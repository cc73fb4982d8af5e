"""Dose-volume primitives on the list of one ROI's voxel doses.

Every metric in :mod:`mddose.evaluate` is built from these three functions. They take ``voxels``, the 1-D
array of dose values (Gy) of the voxels inside one ROI (``dose[mask]``), and never a mask, so that a ROI's
voxel list is extracted once and shared by all metrics.

Convention: ``D_x`` is the dose that at least ``x`` % of the ROI's volume receives, i.e. the
``(100 - x)``-th percentile of the voxel doses, with NumPy's default linear interpolation (the convention
of the OpenKBP evaluator, ``ababier/open-kbp`` ``provided_code/dose_evaluation_class.py``: D99 is
``np.percentile(roi_dose, 1)``). An empty ROI has no dose-volume metric: every function returns NaN.
"""

from __future__ import annotations

import numpy as np


def d_percent(voxels: np.ndarray, volume_percent: float | np.ndarray) -> float | np.ndarray:
    """D_x: the dose (Gy) received by at least ``volume_percent`` % of the ROI, ``np.percentile(v, 100 - x)``.

    ``volume_percent`` may be an array (one percentile call for all of them). NaN for an empty ROI.
    """
    x = np.asarray(volume_percent, dtype=np.float64)
    if voxels.size == 0:
        return np.full(x.shape, np.nan) if x.ndim else float("nan")
    out = np.percentile(voxels, 100.0 - x)
    return out if x.ndim else float(out)


def v_dose(voxels: np.ndarray, threshold_gy: float) -> float:
    """V_d: the percentage of the ROI's volume that receives at least ``threshold_gy`` Gy. NaN when empty."""
    if voxels.size == 0:
        return float("nan")
    return float(100.0 * np.count_nonzero(voxels >= threshold_gy) / voxels.size)


def dvh_curve(voxels: np.ndarray, dose_levels: np.ndarray) -> np.ndarray:
    """Cumulative DVH: for each dose level d, the percentage of the ROI's volume receiving at least d Gy.

    Args:
        voxels: (N,) voxel doses of one ROI.
        dose_levels: (K,) dose levels in Gy.

    Returns:
        (K,) volume percentages, non-increasing in the dose level; all NaN for an empty ROI.
    """
    levels = np.asarray(dose_levels, dtype=np.float64)
    if voxels.size == 0:
        return np.full(levels.shape, np.nan)
    ordered = np.sort(voxels)
    below = np.searchsorted(ordered, levels, side="left")  # voxels with dose < level
    return 100.0 * (ordered.size - below) / ordered.size
