"""Figures: slice choice, units and legends, line styles, symmetric error scale, PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mddose.data.patient import Patient
from mddose.viz.figures import comparison_figure, default_slice, dose_wash_figure, dvh_figure, save_png

SHAPE = (40, 40, 12)


def small_patient(with_targets: bool = True) -> Patient:
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    body = (x - 20) ** 2 + (y - 20) ** 2 < 15**2
    ptv70 = ((x - 18) ** 2 + (y - 22) ** 2 < 16) & (z >= 7) & (z <= 9)  # centroid z = 8
    ptv56 = ((x - 24) ** 2 + (y - 14) ** 2 < 9) & (z >= 2) & (z <= 4)
    cord = (abs(x - 30) <= 1) & (abs(y - 20) <= 1)
    structures = {"SpinalCord": cord}
    if with_targets:
        structures |= {"PTV70": ptv70, "PTV56": ptv56}
    dose = np.where(body, 72.0 * np.exp(-((x - 18) ** 2 + (y - 22) ** 2) / 120.0), 0.0) * (z + 1) / 12
    return Patient("pt_7", np.where(body, 30.0, -1000.0), body, (3.0, 3.0, 2.5), structures, dose)


def test_default_slice() -> None:
    patient = small_patient()
    assert default_slice(patient) == 8  # through PTV70's centroid, not PTV56's
    no_target = small_patient(with_targets=False)
    assert default_slice(no_target, no_target.dose) == SHAPE[2] - 1  # the slice with the most dose
    assert default_slice(no_target) == SHAPE[2] // 2


def test_dvh_figure_styles_units_legends() -> None:
    patient = small_patient()
    ref = patient.dose.astype(np.float64)
    fig = dvh_figure(patient, ref, {"A": ref * 0.95, "B": ref * 1.05})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Dose (Gy)" and ax.get_ylabel() == "Volume (%)"
    lines = ax.get_lines()
    assert len(lines) == 3 * 3  # 3 ROIs x (reference + 2 predictions)
    styles = [line.get_linestyle() for line in lines[:3]]
    assert styles[0] == "-" and "-" not in styles[1:]  # reference solid, predictions dashed
    assert len({line.get_color() for line in lines}) == 3  # one colour per ROI
    titles = [legend.get_title().get_text() for legend in fig.legends]
    assert titles == ["ROI", "Dose"]
    assert [t.get_text() for t in fig.legends[1].get_texts()] == ["Reference", "A", "B"]


def test_comparison_figure_symmetric_error_and_labels() -> None:
    patient = small_patient()
    ref = patient.dose.astype(np.float64)
    fig = comparison_figure(patient, ref, {"Model": ref + 2.0 * patient.possible_dose_mask})
    error_images = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "RdBu_r"]
    assert len(error_images) == 1
    vmin, vmax = error_images[0].get_clim()
    assert vmin == -vmax and vmax == pytest.approx(2.0)
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"Dose (Gy)", "Prediction − reference (Gy)"} <= labels
    assert [ax.get_title() for ax in fig.axes[:3]] == ["Model", "Reference (GT)", "Model − reference"]


def test_dose_wash_png(tmp_path: Path) -> None:
    patient = small_patient()
    fig = dose_wash_figure(patient, {"Reference": patient.dose})
    legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_text[0] == "20 % (14.0 Gy)" and legend_text[-1] == "107 % (74.9 Gy)"
    assert any(ax.get_ylabel() == "Dose (Gy)" for ax in fig.axes)
    path = save_png(fig, tmp_path / "wash.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["wash.png"]  # written atomically, no temporary left
    with pytest.raises(ValueError):
        comparison_figure(patient, patient.dose, {})
