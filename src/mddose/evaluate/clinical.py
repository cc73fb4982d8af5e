"""Clinical extras: the per-ROI dose table planners read, and the 3 %/3 mm gamma passing rate.

Per-ROI metrics (all in Gy unless said otherwise), on the ROI's voxel doses:

* ``Dmean``, ``Dmax``; ``D2``, ``D50``, ``D98`` (dose to at least 2 / 50 / 98 % of the volume,
  :func:`mddose.evaluate.dvh.d_percent`);
* targets only: ``V95`` — the percentage of the volume receiving at least 95 % of *that target's*
  prescription (PTV63 → 59.85 Gy) — and ``HI`` (:func:`mddose.evaluate.paper.homogeneity_index`, unitless).

Gamma: global 3 %/3 mm with a 10 % low-dose cut-off, both relative to the reference maximum, computed by
``pymedphys.gamma`` when pymedphys is importable (``pip install mddose[gamma]``); without it the pass rate is
NaN and the reason is reported. Only reference voxels at or above the cut-off are evaluated.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass

import numpy as np

from mddose.evaluate.dvh import d_percent, v_dose
from mddose.evaluate.paper import hi_from

log = logging.getLogger(__name__)

CLINICAL_METRICS: tuple[str, ...] = ("Dmean", "D2", "D50", "D98", "Dmax")
TARGET_CLINICAL_METRICS: tuple[str, ...] = ("V95", "HI")
V_X_OF_PRESCRIPTION = 0.95  # V95: volume receiving at least 95 % of the prescription


def metric_unit(metric: str) -> str:
    """Unit of a metric name used in the per-ROI tables: 'Gy', '%' or '' (HI)."""
    if metric == "HI":
        return ""
    return "%" if metric.startswith("V") else "Gy"


def clinical_metrics(voxels: np.ndarray, prescription: float | None = None) -> dict[str, float]:
    """Dmean, D2, D50, D98, Dmax of one ROI's voxel doses; plus V95 and HI when ``prescription`` is given.

    Args:
        voxels: (N,) the ROI's voxel doses in Gy.
        prescription: the target's prescription in Gy, or None for an OAR.

    Returns:
        metric name -> value; all NaN for an empty ROI.
    """
    empty = voxels.size == 0
    d2, d50, d98 = d_percent(voxels, np.array([2.0, 50.0, 98.0]))
    out = {
        "Dmean": float("nan") if empty else float(voxels.mean()),
        "D2": float(d2),
        "D50": float(d50),
        "D98": float(d98),
        "Dmax": float("nan") if empty else float(voxels.max()),
    }
    if prescription is not None:
        out["V95"] = v_dose(voxels, V_X_OF_PRESCRIPTION * prescription)
        out["HI"] = float("nan") if empty else hi_from(d2, d50, d98)  # the percentiles above, not again
    return out


@dataclass(frozen=True)
class GammaResult:
    """A gamma passing rate in percent, or NaN with the reason it was not computed."""

    pass_rate: float
    reason: str | None = None


GAMMA_CRITERIA = "3%/3mm global, 10% low-dose cut-off"


def gamma_unavailable_reason() -> str | None:
    """None when pymedphys can be imported; otherwise why gamma is not computed."""
    if importlib.util.find_spec("pymedphys") is None:
        return "pymedphys is not installed (pip install 'mddose[gamma]')"
    return None


def gamma_pass_rate(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: tuple[float, ...],
    dose_percent: float = 3.0,
    distance_mm: float = 3.0,
    cutoff_percent: float = 10.0,
) -> GammaResult:
    """Global gamma passing rate (%) of ``prediction`` against ``reference`` with pymedphys.

    Args:
        reference: (X, Y, Z) reference dose in Gy; its maximum is the global normalisation.
        prediction: (X, Y, Z) evaluated dose in Gy, same grid.
        spacing: voxel size in mm per axis.
        dose_percent, distance_mm: the gamma criteria (3 %, 3 mm).
        cutoff_percent: reference voxels below this percent of the reference maximum are not evaluated.

    Returns:
        The percentage of evaluated voxels with gamma ≤ 1, or NaN with a reason (pymedphys missing, zero dose).
    """
    reason = gamma_unavailable_reason()
    if reason is not None:
        return GammaResult(float("nan"), reason)
    pymedphys = importlib.import_module("pymedphys")
    reference = np.asarray(reference, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    top = float(reference.max(initial=0.0))
    if top <= 0.0:
        return GammaResult(float("nan"), "reference dose is zero everywhere")
    # Crop to the evaluated voxels plus the largest search distance pymedphys can reach (max_gamma × distance):
    # the result is unchanged and the search is much smaller than the 128³ grid.
    max_gamma = 1.1  # only gamma ≤ 1 matters for the pass rate; searching further is wasted time
    margin = [int(np.ceil(max_gamma * distance_mm / s)) + 1 for s in spacing]
    hit = np.argwhere(reference >= cutoff_percent / 100.0 * top)
    lo = np.maximum(hit.min(axis=0) - margin, 0)
    hi = np.minimum(hit.max(axis=0) + 1 + np.array(margin), reference.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = tuple(np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing))
    logging.disable(logging.INFO)  # pymedphys logs arrays through the root logger's %-formatting, which fails
    try:
        gamma = pymedphys.gamma(
            axes, reference[box], axes, prediction[box],
            dose_percent_threshold=dose_percent, distance_mm_threshold=distance_mm,
            lower_percent_dose_cutoff=cutoff_percent, global_normalisation=top, max_gamma=max_gamma,
            local_gamma=False, interp_algo="scipy",  # pymedphys' own interpolator needs numba; scipy's does not
        )
    finally:
        logging.disable(logging.NOTSET)
    evaluated = ~np.isnan(gamma)
    if not evaluated.any():
        return GammaResult(float("nan"), "no voxel above the low-dose cut-off")
    return GammaResult(float(100.0 * np.mean(gamma[evaluated] <= 1.0)))
