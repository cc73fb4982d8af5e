"""The QA page (``qa.html``) and its figures: summary cards, the per-ROI table, DVHs of the plan against the
prediction (with the spread of the samples as a band), and dose and difference washes on the worst slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mddose.atomic import write_text
from mddose.data.patient import Patient
from mddose.evaluate.dvh import dvh_curve
from mddose.io.geometry import VolumeGeometry
from mddose.qa.check import QaResult
from mddose.viz.figures import comparison_figure, save_png
from mddose.viz.report_html import card, esc, fmt, image, json_block, page

WORST_SLICES = 3


def dvh_band_figure(patient: Patient, plan: np.ndarray, result: QaResult, flagged: set[str]) -> Figure:
    """Cumulative DVH per ROI: plan solid, mean prediction dashed, the samples' min–max as a band."""
    rois = patient.present_rois()
    top = max(float(plan.max()), float(result.samples.max()))
    levels = np.linspace(0.0, 1.05 * top if top > 0 else 1.0, 300)
    fig = Figure(figsize=(9.5, 5.6), layout="constrained")
    ax = fig.subplots()
    for i, roi in enumerate(rois):
        mask, color = patient.structures[roi], f"C{i % 10}"
        curves = np.stack([dvh_curve(s[mask], levels) for s in result.samples])
        ax.fill_between(levels, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.18, lw=0)
        ax.plot(levels, dvh_curve(result.mean[mask], levels), color=color, lw=1.4, linestyle="--")
        ax.plot(levels, dvh_curve(plan[mask], levels), color=color, lw=2.4 if roi in flagged else 1.6)
    ax.set(xlabel="Dose (Gy)", ylabel="Volume (%)", xlim=(0, levels[-1]), ylim=(0, 101))
    ax.grid(alpha=0.3)
    labels = [f"{roi} (flagged)" if roi in flagged else roi for roi in rois]
    fig.legend([Line2D([], [], color=f"C{i % 10}", lw=2) for i in range(len(rois))], labels, title="ROI",
               loc="outside right upper", fontsize=8, title_fontsize=9)
    fig.legend([Line2D([], [], color="k", lw=1.6), Line2D([], [], color="k", lw=1.4, linestyle="--")],
               ["Plan", "Predicted (mean)"], title="Dose", loc="outside right lower", fontsize=8,
               title_fontsize=9)
    ax.set_title(f"{patient.patient_id}: plan against prediction (band: {len(result.samples)} samples, min–max)")
    return fig


def worst_slices(patient: Patient, plan: np.ndarray, result: QaResult, n: int = WORST_SLICES) -> list[int]:
    """Axial slices where the plan exceeds the prediction most: inside the flagged ROIs first, then the others."""
    excess = np.clip(plan - result.mean, 0.0, None)
    others = sorted((r for r in patient.present_rois() if r not in result.flagged),
                    key=lambda r: -float(excess[patient.structures[r]].sum()))
    picks: list[int] = []
    for roi in [*result.flagged, *others]:
        per_slice = (excess * patient.structures[roi]).sum(axis=(0, 1))
        z = int(np.argmax(per_slice)) if per_slice.max() > 0 else int(np.argwhere(patient.structures[roi])[:, 2].mean())
        if z not in picks:
            picks.append(z)
        if len(picks) == n:
            break
    return picks


def slice_label(z: int, geometry: VolumeGeometry | None) -> str:
    """"axial slice 64 (z = −40.4 mm)": the slice's z in the patient coordinates a planning system shows (DICOM
    LPS, from the imported geometry); without one (an OpenKBP folder) the index alone."""
    if geometry is None:
        return f"axial slice {z}"
    z_mm = float(geometry.index_to_world(np.array([0.0, 0.0, float(z)]))[2])
    return f"axial slice {z} (z = {z_mm:.1f} mm)".replace("-", "−")


def _table(summary: dict[str, Any]) -> str:
    head = ["ROI", "metric", "plan", "predicted", "achievable", "difference", "tolerance", "spread", "flag"]
    body = []
    for r in summary["rows"]:
        cls = ' class="flagged"' if r["flag"] else ""
        unit = f" {esc(r['unit'])}" if r["unit"] else ""
        cells = [f'<td class="text">{esc(r["roi"])}</td>', f'<td class="text">{esc(r["metric"])}{unit}</td>']
        cells += [f"<td>{fmt(r[k], 2)}</td>" for k in ("plan", "predicted", "achievable", "difference")]
        cells += [f"<td>±{fmt(r['tolerance'], 2)}</td>", f"<td>{fmt(r['sample_sd'], 2)}</td>"]
        cells.append(f'<td class="text">{"FLAG" if r["flag"] else ""}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    header = "".join(f'<th class="text">{h}</th>' if i < 2 else f"<th>{h}</th>" for i, h in enumerate(head))
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cards(summary: dict[str, Any], n_rois: int) -> str:
    flagged, g = summary["flagged"], summary["gamma"]
    rate = f"{g['pass_rate']:.1f} %" if g["pass_rate"] is not None else "—"
    return "".join([
        card("Flagged ROIs", f"{len(flagged)} of {n_rois}", ", ".join(flagged) or "none", win=not flagged),
        card("Gamma pass rate", rate, f"{esc(g['criteria'])}, plan vs prediction" if g["pass_rate"] is not None
             else esc(g["reason"] or "")),
        card("Samples", str(summary["model"]["samples"]), f"{esc(summary['model']['sampler'])}, "
             f"{summary['model']['steps']} steps"),
        card("Error table", f"{summary['error_table'].get('patients') or '—'} patients",
             f"validation, {esc(summary['error_table'].get('date') or '')}"),
    ])


def write_page(out: Path, patient: Patient, plan: np.ndarray, result: QaResult, summary: dict[str, Any],
               geometry: VolumeGeometry | None = None) -> Path:
    """Write the figures under ``out/figures`` and ``out/qa.html``; returns the page's path. ``geometry``: where
    the patient's grid lies in the DICOM frame (slices are then named by their z there)."""
    figures = out / "figures"
    flagged = set(result.flagged)
    dvh = save_png(dvh_band_figure(patient, plan, result, flagged), figures / "dvh.png")
    labels = {z: slice_label(z, geometry) for z in worst_slices(patient, plan, result)}
    washes = [(save_png(comparison_figure(patient, result.mean, {"Plan": plan}, slice_index=z,
                                          title=f"{patient.patient_id}: {label}", reference_label="Predicted",
                                          reference_short="predicted"), figures / f"slice_{z}.png"), label)
              for z, label in labels.items()]
    warnings = "".join(f'<p class="warning">{esc(w)}</p>' for w in summary["warnings"])
    body = (
        f'{warnings}<div class="cards">{_cards(summary, len(patient.present_rois()))}</div>'
        '<h2 id="rois">Per ROI</h2><p class="note">achievable = predicted − the model\'s mean validation error on '
        'that metric; difference = plan − achievable; tolerance = max(floor, z·√(sd² + spread²)) with sd the '
        'model\'s validation error and spread that of the samples. OARs are flagged when the plan is higher, '
        'target coverage (D95, D98, V95) when it differs either way, target D2 and HI when higher.</p>'
        f"{_table(summary)}"
        f'<h2 id="dvh">Dose-volume histograms</h2>{image(dvh, "DVHs", "Plan solid, prediction dashed, band: samples.")}'
        '<h2 id="slices">Worst slices</h2>'
        + "".join(image(p, label, f"{label[0].upper()}{label[1:]}. Top: plan and predicted dose; bottom: plan − "
                        "predicted.") for p, label in washes)
        + json_block(summary, "qa.json")
    )
    subtitle = (f"{esc(summary['patient'])} · plan {esc(summary['plan'])} · model "
                f"{esc(summary['model']['checkpoint'])}")
    html = page(f"Plan QA: {summary['patient']}", subtitle,
                [("rois", "Per ROI"), ("dvh", "DVHs"), ("slices", "Worst slices")], body,
                "mddose qa: knowledge-based plan check against the model's achievable dose. Not a substitute for "
                "clinical judgement.")
    write_text(out / "qa.html", html)
    return out / "qa.html"
