"""The report's patient figure: reference, prediction, error and uncertainty side by side on a few slices.

One row per axial slice (superior to inferior), one column per quantity, all over the CT (W400/L40):

* **Reference** and **prediction**: dose washes with their own isodose lines (as :func:`mddose.viz.figures.
  dose_wash_figure`, same colour scale for both);
* **Error**, prediction − reference in Gy, on a diverging map symmetric around 0 (as the paper's Fig. 3);
* **Uncertainty**, the per-voxel standard deviation over the sampled doses (Gy), when there is one.

Error and uncertainty carry the *reference's* isodose lines, so that each error can be placed in the dose
distribution (is it in the high-dose target, in the fall-off, in the low-dose bath?). The slices default to
the 20th, 50th and 80th percentile of the targets' axial extent, the middle one moved to the centroid of the
highest-prescription target (:func:`~mddose.viz.figures.default_slice`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mddose.data.patient import Patient
from mddose.viz.figures import (
    ERROR_CMAP,
    WASH_FLOOR,
    _ct,
    _isodose_legend,
    _isodose_lines,
    _reference_gy,
    _Slice,
    _wash,
    default_slice,
)

UNCERTAINTY_CMAP = "magma"
ERROR_LIMIT_FRACTION = 0.2  # the error scale saturates at most at this fraction of the prescription


def report_slices(patient: Patient, reference: np.ndarray, n: int = 3) -> list[int]:
    """Up to ``n`` distinct axial slices through the targets (or the high dose), superior to inferior.

    The headline target's centroid slice, plus slices spread from the 20th to the 80th percentile of the
    targets' axial extent; where these coincide, the slices farthest from those already chosen fill in.
    """
    middle = default_slice(patient, reference)
    targets = [patient.structures[t] for t in patient.prescriptions]
    region = np.logical_or.reduce(targets) if targets else reference > 0.5 * max(float(reference.max()), 1e-6)
    zs = np.flatnonzero(region.any(axis=(0, 1)))
    if zs.size == 0 or n <= 1:
        return [middle]
    spread = [int(round(float(np.percentile(zs, q)))) for q in np.linspace(20, 80, n)]
    spread[int(np.argmin([abs(z - middle) for z in spread]))] = middle
    picks = set(spread)
    while len(picks) < n and len(picks) < zs.size:
        picks.add(int(max((z for z in zs if z not in picks), key=lambda z: min(abs(z - p) for p in picks))))
    return sorted(picks)


def error_limit(patient: Patient, errors: list[np.ndarray], rx: float) -> tuple[float, bool]:
    """Symmetric error scale: 99th percentile of |error| in the mask, within [0.5, 20 % of rx] Gy; clipped?"""
    inside = patient.possible_dose_mask
    magnitude = np.concatenate([np.abs(e[inside]) for e in errors]) if errors else np.zeros(0)
    if magnitude.size == 0:
        return 1.0, False
    emax = float(np.clip(np.percentile(magnitude, 99), 0.5, max(ERROR_LIMIT_FRACTION * rx, 0.5)))
    return emax, bool(magnitude.max() > emax)


def patient_figure(
    patient: Patient,
    reference: np.ndarray,
    prediction: np.ndarray,
    uncertainty: np.ndarray | None = None,
    slices: list[int] | None = None,
    method: str = "Prediction",
    title: str | None = None,
) -> Figure:
    """Rows of axial slices; columns reference, prediction, error and (if given) uncertainty; see module doc."""
    slices = slices or report_slices(patient, reference)
    rx = _reference_gy(patient, reference)
    vmax = max(float(reference.max()), float(prediction.max())) or 1.0
    error = prediction - reference
    emax, clipped = error_limit(patient, [error], rx)
    inside = patient.possible_dose_mask
    smax = float(np.percentile(uncertainty[inside], 99.5)) if uncertainty is not None and inside.any() else 0.0
    smax = max(smax, 0.1)
    columns = ["Reference", method, f"{method} − reference"] + (["Uncertainty (SD of samples)"]
                                                                 if uncertainty is not None else [])
    n_rows, n_cols = len(slices), len(columns)
    fig = Figure(figsize=(3.3 * n_cols + 0.6, 3.1 * n_rows + 1.6), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.075, 1, 0.925), h_pad=0.04, w_pad=0.04)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    images: list = [None] * n_cols
    for row, z in enumerate(slices):
        sl = _Slice(patient, z)
        images[0] = _wash(axes[row, 0], patient, sl, reference, vmax, rx)
        images[1] = _wash(axes[row, 1], patient, sl, prediction, vmax, rx)
        ax = axes[row, 2]
        _ct(ax, patient, sl)
        images[2] = ax.imshow(np.ma.masked_where(~sl.take(inside), sl.take(error)), cmap=ERROR_CMAP, vmin=-emax,
                              vmax=emax, alpha=0.8, extent=sl.extent, interpolation="nearest")
        _isodose_lines(ax, sl, reference, rx, width=0.8)
        if uncertainty is not None:
            ax = axes[row, 3]
            _ct(ax, patient, sl)
            s = sl.take(uncertainty)
            images[3] = ax.imshow(np.ma.masked_where(~sl.take(inside) | (s < WASH_FLOOR * smax), s),
                                  cmap=UNCERTAINTY_CMAP, vmin=0, vmax=smax, alpha=0.75, extent=sl.extent,
                                  interpolation="nearest")
            _isodose_lines(ax, sl, reference, rx, width=0.8)
        axes[row, 0].set_ylabel(f"slice {z} (z = {sl.z_mm:.0f} mm)", fontsize=9)
    for col, label in enumerate(columns):
        axes[0, col].set_title(label, fontsize=10)
    labels = ["Dose (Gy)", "Dose (Gy)", "Error (Gy)", "SD (Gy)"]
    fig.colorbar(images[0], ax=list(axes[:, :2].ravel()), location="bottom", shrink=0.6, aspect=30,
                 label=labels[0])
    fig.colorbar(images[2], ax=list(axes[:, 2]), location="bottom", shrink=0.9, aspect=15, label=labels[2],
                 extend="both" if clipped else "neither")
    if uncertainty is not None:
        fig.colorbar(images[3], ax=list(axes[:, 3]), location="bottom", shrink=0.9, aspect=15, label=labels[3],
                     extend="max")
    _isodose_legend(fig, rx)
    fig.suptitle(title or f"{patient.patient_id}: {method} against the reference", fontsize=12)
    return fig
