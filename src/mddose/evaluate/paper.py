"""The MD-Dose paper's metrics (Sec. III-A, eqs. 8-10), each made well defined and documented here.

**Homogeneity Index**, eq. (10): ``HI = (D_2% - D_98%) / D_50%`` of the dose inside a PTV, with ``D_x`` the
dose received by at least x % of the volume (:func:`mddose.evaluate.dvh.d_percent`). 0 is a perfectly uniform
target dose. The paper reports "HI" as the discrepancy between prediction and reference; we report
``|HI(prediction) - HI(reference)|``. *Which PTV*: the paper has a single PTV ("the PTV"); OpenKBP patients
have up to three. We compute the HI of every PTV present and take as headline the PTV with the highest
prescription present (PTV70 in OpenKBP) — the one whose uniformity a plan is optimised for.
HI is NaN for an empty PTV and where D_50 is 0 (zero dose); a single-voxel PTV has HI 0.

**DVH score**, eq. (9): per patient the mean of ``|ΔD_1|, |ΔD_95|, |ΔD_99|``, then the mean over patients.
The paper's prose calls D_1 "the 1st percentile" but D_95 "the median"; we use the standard DVH convention,
which is also that of its reference [24] and of OpenKBP: ``D_x`` = the dose to x % of the volume =
percentile ``100 - x`` (D_1 = near-maximum, D_99 = near-minimum). With several PTVs, the per-patient value is
the mean over all PTVs present of their three absolute differences (each PTV weighted equally). These are the
same target metrics as OpenKBP's (:func:`mddose.evaluate.challenge.target_metrics`), so both scores agree on
what D_1/D_95/D_99 mean.

**Dose score**, eq. (8): as printed, ``1/n Σ (ŷ_i - y_i) / y_i`` is a *signed* relative error (over- and
under-dosage cancel) that is undefined wherever the reference dose ``y_i`` is 0 — most of the grid. We keep
its per-voxel relative form but make it well defined: the **mean absolute relative error, in percent, over the
voxels whose reference dose is at least 10 % of the reference's maximum**,
``100 / |S| Σ_{i∈S} |ŷ_i - y_i| / y_i`` with ``S = {i : y_i ≥ 0.1 · max y}``. The absolute value makes it
the "average relative deviation" the text describes; the cut-off is the usual global low-dose cut-off of the
3 %/3 mm gamma analysis (:mod:`mddose.evaluate.clinical`), so the denominator is never below 10 % of the
maximum. NaN when the reference dose is zero everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from mddose.evaluate.dvh import d_percent
from mddose.evaluate.challenge import MetricTable

PAPER_DOSE_CUTOFF = 0.1  # fraction of the reference maximum below which voxels do not enter eq. (8)


def homogeneity_index(voxels: np.ndarray) -> float:
    """HI = (D_2% - D_98%) / D_50% of one PTV's voxel doses (eq. 10). NaN when empty or D_50% is 0."""
    if voxels.size == 0:
        return float("nan")
    return hi_from(*d_percent(voxels, np.array([2.0, 50.0, 98.0])))


def hi_from(d2: float, d50: float, d98: float) -> float:
    """HI from percentiles already computed: (D2 - D98) / D50, NaN when D50 is not positive (or NaN)."""
    return float((d2 - d98) / d50) if d50 > 0 else float("nan")


def headline_target(prescriptions: Mapping[str, float]) -> str | None:
    """The PTV whose HI is the headline: the highest prescription present (first in order on a tie)."""
    return max(prescriptions, key=lambda name: prescriptions[name]) if prescriptions else None


def paper_dvh_score(differences: MetricTable, targets: Iterable[str]) -> float:
    """One patient's eq. (9) value: mean of |ΔD_1|, |ΔD_95|, |ΔD_99| over all PTVs present (Gy).

    Args:
        differences: the patient's OpenKBP absolute differences (:func:`~mddose.evaluate.challenge.dvh_differences`).
        targets: the target ROI names.

    Returns:
        The mean in Gy, NaN when the patient has no target.
    """
    names = set(targets)
    values = np.array([v for (roi, _), v in differences.items() if roi in names], dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def paper_dose_score(reference: np.ndarray, prediction: np.ndarray, cutoff: float = PAPER_DOSE_CUTOFF) -> float:
    """Well-defined eq. (8): mean |ŷ - y| / y in percent over voxels with y ≥ ``cutoff`` · max y (see module doc).

    Args:
        reference: (X, Y, Z) reference dose y in Gy.
        prediction: (X, Y, Z) predicted dose ŷ in Gy.
        cutoff: low-dose cut-off as a fraction of the reference maximum (0 < cutoff ≤ 1).

    Returns:
        The score in percent; NaN when the reference dose is 0 everywhere.
    """
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must be in (0, 1], got {cutoff}")
    reference = np.asarray(reference, dtype=np.float64)
    top = float(reference.max(initial=0.0))
    if top <= 0.0:
        return float("nan")
    selected = reference >= cutoff * top
    y = reference[selected]
    y_hat = np.asarray(prediction, dtype=np.float64)[selected]
    return float(100.0 * np.mean(np.abs(y_hat - y) / y))
