"""Figures a person would rather look at than read: dose washes, the paper's Fig. 3 and Fig. 4.

* :func:`dose_wash_figure`: CT (grey, W400/L40) with the dose as a colour wash (voxels below 5 % of the
  maximum left clear) and isodose lines at 20/50/80/95/100/107 % of the highest prescription, legend in Gy.
* :func:`comparison_figure` (Fig. 3): top row the predictions and the reference (last), bottom row each
  prediction's error map, prediction − reference, on a diverging colour map symmetric around 0.
* :func:`dvh_figure` (Fig. 4): cumulative DVHs, one colour per ROI, reference solid, predictions dashed.

Slices are axial (the last array axis); the default is the slice through the centroid of the PTV with the
highest prescription. Images are shown in mm with a 5 cm scale bar, cropped to the body. Each function
returns a :class:`~matplotlib.figure.Figure` built with Matplotlib's object API (no pyplot state, headless Agg
canvas); :func:`save_png` writes it atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from mddose.atomic import atomic_path
from mddose.data.patient import Patient
from mddose.evaluate.dvh import dvh_curve
from mddose.evaluate.paper import headline_target

CT_LEVEL, CT_WIDTH = 40.0, 400.0  # soft-tissue window, HU
WASH_FLOOR = 0.05  # dose below this fraction of the colour scale's maximum is not washed
ISODOSE_PERCENT = (20, 50, 80, 95, 100, 107)  # of the highest prescription
ISODOSE_COLORS = ("#1f4fff", "#00b7ff", "#00c853", "#ffd600", "#ff6d00", "#d50000")
DOSE_CMAP, ERROR_CMAP = "jet", "RdBu_r"
PREDICTION_STYLES = ((0, (5, 2)), (0, (1, 1)), (0, (5, 1, 1, 1)), (0, (8, 3, 2, 3)), (0, (2, 2)),
                     (0, (10, 2, 1, 2, 1, 2)), (0, (1, 3)))  # one per method: Table I compares five


def default_slice(patient: Patient, dose: np.ndarray | None = None) -> int:
    """Axial index through the highest-prescription PTV's centroid; else the slice of most dose; else middle."""
    target = headline_target(patient.prescriptions)
    if target is not None:
        return int(round(float(np.argwhere(patient.structures[target])[:, -1].mean())))
    if dose is not None and np.any(dose > 0):
        return int(np.argmax(dose.sum(axis=(0, 1))))
    return patient.shape[-1] // 2


def _reference_gy(patient: Patient, reference: np.ndarray) -> float:
    """The dose the isodose percentages refer to: the highest prescription present, else the maximum dose."""
    return max(patient.prescriptions.values()) if patient.prescriptions else float(max(reference.max(), 1e-6))


def _crop(patient: Patient, z: int, margin: int = 4) -> tuple[slice, slice]:
    """Bounding box of the body (CT > -500 HU or possible-dose mask) on slice ``z``, with a margin."""
    body = (patient.ct[:, :, z] > -500) | patient.possible_dose_mask[:, :, z]
    if not body.any():
        return slice(None), slice(None)
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    n0, n1 = body.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, n0)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, n1)))


class _Slice:
    """One cropped axial slice in mm: ``extent`` for imshow and the pixel-centre coordinates for contours."""

    def __init__(self, patient: Patient, z: int) -> None:
        self.z = z
        self.box = _crop(patient, z)
        sx, sy = patient.spacing[0], patient.spacing[1]
        r, c = self.box
        r0, r1, _ = r.indices(patient.shape[0])
        c0, c1, _ = c.indices(patient.shape[1])
        self.extent = (c0 * sy, c1 * sy, r1 * sx, r0 * sx)  # rows down (anterior at the top)
        self.cols = (np.arange(c0, c1) + 0.5) * sy
        self.rows = (np.arange(r0, r1) + 0.5) * sx
        self.z_mm = z * patient.spacing[2]

    def take(self, volume: np.ndarray) -> np.ndarray:
        return volume[self.box[0], self.box[1], self.z]


def _ct(ax, patient: Patient, sl: _Slice) -> None:
    ax.imshow(sl.take(patient.ct), cmap="gray", vmin=CT_LEVEL - CT_WIDTH / 2, vmax=CT_LEVEL + CT_WIDTH / 2,
              extent=sl.extent, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.add_artist(AnchoredSizeBar(ax.transData, 50, "5 cm", "lower right", pad=0.3, color="white",
                                  frameon=False, size_vertical=1))


def _wash(ax, patient: Patient, sl: _Slice, dose: np.ndarray, vmax: float, rx: float):
    """CT + dose wash + isodose lines on ``ax``; returns the wash image (for a colour bar)."""
    _ct(ax, patient, sl)
    d = sl.take(dose)
    image = ax.imshow(np.ma.masked_less(d, WASH_FLOOR * vmax), cmap=DOSE_CMAP, vmin=0, vmax=vmax, alpha=0.35,
                      extent=sl.extent, interpolation="nearest")
    _isodose_lines(ax, sl, dose, rx, width=1.3)
    return image


def _isodose_lines(ax, sl: _Slice, dose: np.ndarray, rx: float, width: float = 1.0) -> None:
    """The isodose lines (``ISODOSE_PERCENT`` of ``rx``) that cross this slice of ``dose``."""
    d = sl.take(dose)
    levels = [(p / 100 * rx, c) for p, c in zip(ISODOSE_PERCENT, ISODOSE_COLORS) if d.min() < p / 100 * rx < d.max()]
    if levels:
        ax.contour(sl.cols, sl.rows, d, levels=[lv for lv, _ in levels], colors=[c for _, c in levels],
                   linewidths=width)


def _isodose_legend(fig: Figure, rx: float) -> None:
    handles = [Line2D([], [], color=c, lw=1.5) for c in ISODOSE_COLORS]
    labels = [f"{p} % ({p / 100 * rx:.1f} Gy)" for p in ISODOSE_PERCENT]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False,
               title=f"Isodose lines (% of {rx:g} Gy)", title_fontsize=8)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically; returns the path."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def dose_wash_figure(
    patient: Patient, doses: Mapping[str, np.ndarray], slice_index: int | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per dose (e.g. reference and a prediction): CT, dose wash, isodose lines; shared colour bar."""
    if not doses:
        raise ValueError("dose_wash_figure needs at least one dose")
    first = next(iter(doses.values()))
    sl = _Slice(patient, default_slice(patient, first) if slice_index is None else slice_index)
    rx = _reference_gy(patient, first)
    vmax = max(float(d.max()) for d in doses.values()) or 1.0
    fig = Figure(figsize=(4.2 * len(doses) + 1.2, 5.0), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.1, 1, 0.9))
    axes = fig.subplots(1, len(doses), squeeze=False)[0]
    for ax, (label, dose) in zip(axes, doses.items()):
        image = _wash(ax, patient, sl, dose, vmax, rx)
        ax.set_title(label, fontsize=10)
    fig.colorbar(image, ax=list(axes), label="Dose (Gy)", shrink=0.9)
    _isodose_legend(fig, rx)
    fig.suptitle(title or f"{patient.patient_id}: axial slice {sl.z} (z = {sl.z_mm:.0f} mm)", fontsize=11)
    return fig


def comparison_figure(
    patient: Patient, reference: np.ndarray, predictions: Mapping[str, np.ndarray],
    slice_index: int | None = None, title: str | None = None,
    reference_label: str = "Reference (GT)", reference_short: str = "reference",
) -> Figure:
    """The paper's Fig. 3: predictions then the reference (top), prediction − reference maps (bottom).

    ``reference_label`` titles the reference panel, ``reference_short`` names it in the difference maps (plan QA
    shows a plan against the predicted dose with them)."""
    if not predictions:
        raise ValueError("comparison_figure needs at least one prediction")
    sl = _Slice(patient, default_slice(patient, reference) if slice_index is None else slice_index)
    rx = _reference_gy(patient, reference)
    vmax = max(float(d.max()) for d in [reference, *predictions.values()]) or 1.0
    inside = sl.take(patient.possible_dose_mask)
    errors = {name: sl.take(d) - sl.take(reference) for name, d in predictions.items()}
    # Symmetric scale: the 99th percentile of |error| inside the mask, at most 20 % of the prescription (so a
    # few edge voxels do not wash out the rest, and maps of good predictions stay comparable); beyond it the
    # colours saturate and the colour bar shows arrows.
    magnitude = np.concatenate([np.abs(e[inside]) for e in errors.values()])
    emax = float(np.clip(np.percentile(magnitude, 99) if magnitude.size else 0.0, 0.5, max(0.2 * rx, 0.5)))
    n = len(predictions) + 1
    fig = Figure(figsize=(3.6 * n + 1.4, 7.8), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))
    axes = fig.subplots(2, n, squeeze=False)
    for ax, (label, dose) in zip(axes[0], [*predictions.items(), (reference_label, reference)]):
        wash = _wash(ax, patient, sl, dose, vmax, rx)
        ax.set_title(label, fontsize=10)
    for ax, (label, error) in zip(axes[1], errors.items()):
        _ct(ax, patient, sl)
        diff = ax.imshow(np.ma.masked_where(~inside, error), cmap=ERROR_CMAP, vmin=-emax, vmax=emax,
                         extent=sl.extent, interpolation="nearest")
        ax.set_title(f"{label} − {reference_short}", fontsize=10)
    axes[1, -1].axis("off")
    fig.colorbar(wash, ax=list(axes[0]), label="Dose (Gy)", shrink=0.9)
    shown = next(iter(predictions)) if len(predictions) == 1 and reference_short != "reference" else "Prediction"
    fig.colorbar(diff, ax=list(axes[1]), label=f"{shown} − {reference_short} (Gy)", shrink=0.9,
                 extend="both" if magnitude.size and magnitude.max() > emax else "neither")
    _isodose_legend(fig, rx)
    fig.suptitle(title or f"{patient.patient_id}: axial slice {sl.z} (z = {sl.z_mm:.0f} mm)", fontsize=11)
    return fig


def dvh_figure(
    patient: Patient, reference: np.ndarray, predictions: Mapping[str, np.ndarray],
    title: str | None = None,
) -> Figure:
    """The paper's Fig. 4: cumulative DVH per ROI; reference solid, each prediction in its own dash style."""
    rois = patient.present_rois()
    top = max(float(d.max()) for d in [reference, *predictions.values()])
    levels = np.linspace(0.0, 1.05 * top if top > 0 else 1.0, 400)
    colors = [f"C{i % 10}" for i in range(len(rois))]
    fig = Figure(figsize=(9.0, 5.5), layout="constrained")
    ax = fig.subplots()
    for roi, color in zip(rois, colors):
        mask = patient.structures[roi]
        ax.plot(levels, dvh_curve(reference[mask], levels), color=color, lw=1.6)
        for i, dose in enumerate(predictions.values()):
            style = PREDICTION_STYLES[i % len(PREDICTION_STYLES)]
            ax.plot(levels, dvh_curve(dose[mask], levels), color=color, lw=1.4, linestyle=style)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_xlim(0, levels[-1])
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    fig.legend([Line2D([], [], color=c, lw=2) for c in colors], rois, title="ROI", loc="outside right upper",
               fontsize=8, title_fontsize=9)
    style_handles = [Line2D([], [], color="k", lw=1.6)]
    style_handles += [Line2D([], [], color="k", lw=1.4, linestyle=PREDICTION_STYLES[i % len(PREDICTION_STYLES)])
                      for i in range(len(predictions))]
    fig.legend(style_handles, ["Reference", *predictions], title="Dose", loc="outside right lower", fontsize=8,
               title_fontsize=9)
    ax.set_title(title or f"{patient.patient_id}: dose-volume histograms")
    return fig


def evaluation_figures(folder: Path, patient: Patient, reference: np.ndarray,
                       predictions: Mapping[str, np.ndarray]) -> list[Path]:
    """What ``mddose evaluate --figures`` writes per patient: dose washes, the paper's Fig. 3 and Fig. 4."""
    pid = patient.patient_id
    return [
        save_png(dose_wash_figure(patient, {"Reference": reference, **predictions}), folder / f"{pid}_dose.png"),
        save_png(comparison_figure(patient, reference, predictions), folder / f"{pid}_comparison.png"),
        save_png(dvh_figure(patient, reference, predictions), folder / f"{pid}_dvh.png"),
    ]
