"""DVH primitives, the per-ROI clinical table and the gamma pass-rate wiring."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types

import numpy as np
import pytest

from mddose.evaluate import clinical
from mddose.evaluate.clinical import clinical_metrics, gamma_pass_rate, metric_unit
from mddose.evaluate.dvh import d_percent, dvh_curve, v_dose


def test_dvh_primitives_by_hand() -> None:
    voxels = np.array([1.0, 2.0, 3.0, 4.0])
    assert d_percent(voxels, 50) == pytest.approx(2.5)  # median
    np.testing.assert_allclose(d_percent(voxels, np.array([100.0, 0.0])), [1.0, 4.0])  # min, max
    assert v_dose(voxels, 2.0) == 75.0  # "at least": 2 counts
    np.testing.assert_allclose(dvh_curve(voxels, np.array([0.0, 2.0, 2.5, 5.0])), [100.0, 75.0, 50.0, 0.0])
    empty = np.array([])
    assert math.isnan(d_percent(empty, 95)) and math.isnan(v_dose(empty, 1.0))
    assert np.isnan(dvh_curve(empty, np.array([0.0, 1.0]))).all()


def test_dvh_curve_is_cumulative_and_non_increasing() -> None:
    voxels = np.random.default_rng(0).uniform(0, 70, 500)
    curve = dvh_curve(voxels, np.linspace(0, 80, 81))
    assert curve[0] == 100.0 and curve[-1] == 0.0 and np.all(np.diff(curve) <= 0)


def test_clinical_metrics_target_and_oar() -> None:
    voxels = np.linspace(60.0, 70.0, 101)
    out = clinical_metrics(voxels, prescription=70.0)
    assert out["Dmean"] == pytest.approx(65.0) and out["Dmax"] == 70.0
    assert out["D50"] == pytest.approx(65.0) and out["D2"] == pytest.approx(69.8) and out["D98"] == pytest.approx(60.2)
    assert out["HI"] == pytest.approx((69.8 - 60.2) / 65.0)
    # V95 of a 63 Gy target: at least 0.95 * 63 = 59.85 Gy
    assert clinical_metrics(np.array([50.0, 59.0, 60.0, 63.0]), prescription=63.0)["V95"] == 50.0
    oar = clinical_metrics(voxels)
    assert "V95" not in oar and "HI" not in oar
    assert all(math.isnan(v) for v in clinical_metrics(np.array([]), prescription=70.0).values())
    assert [metric_unit(m) for m in ("D2", "V95", "HI", "mean")] == ["Gy", "%", "", "Gy"]


def test_gamma_without_pymedphys_reports_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clinical.importlib.util, "find_spec", lambda name: None)
    result = gamma_pass_rate(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1.0, 1.0, 1.0))
    assert math.isnan(result.pass_rate) and "pymedphys is not installed" in result.reason


def test_gamma_wiring_with_a_stand_in_pymedphys(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymedphys is optional: a stand-in module checks what we pass and how the pass rate is formed."""
    calls = {}

    def fake_gamma(axes_ref, dose_ref, axes_eval, dose_eval, **kwargs):
        calls.update(kwargs, shape=dose_ref.shape, axes=axes_ref)
        cutoff = kwargs["lower_percent_dose_cutoff"] / 100 * kwargs["global_normalisation"]
        g = np.where(dose_ref >= cutoff, np.abs(dose_eval - dose_ref), np.nan)  # gamma = |Δ| for the test
        return g

    fake = types.ModuleType("pymedphys")
    fake.__spec__ = importlib.machinery.ModuleSpec("pymedphys", None)
    fake.gamma = fake_gamma
    monkeypatch.setitem(sys.modules, "pymedphys", fake)
    reference = np.zeros((20, 20, 20))
    reference[8:12, 8:12, 8:12] = 10.0  # 64 voxels above the 10 % cut-off
    prediction = reference.copy()
    prediction[8, 8, 8:12] = 12.0  # 4 voxels with |Δ| = 2 > 1: fail
    result = gamma_pass_rate(reference, prediction, (2.0, 2.0, 2.0))
    assert result.reason is None and result.pass_rate == pytest.approx(100 * 60 / 64)
    assert calls["dose_percent_threshold"] == 3.0 and calls["distance_mm_threshold"] == 3.0
    assert calls["lower_percent_dose_cutoff"] == 10.0 and calls["global_normalisation"] == 10.0
    assert calls["local_gamma"] is False
    # cropped to the evaluated voxels plus the search margin (ceil(1.1 * 3 / 2) + 1 = 3 voxels), in mm
    assert calls["shape"] == (10, 10, 10) and calls["axes"][0][0] == pytest.approx(5 * 2.0)


def test_gamma_with_real_pymedphys() -> None:
    pytest.importorskip("pymedphys", reason="pymedphys not installed: real gamma test skipped")
    reference = np.zeros((16, 16, 16))
    reference[4:12, 4:12, 4:12] = 50.0
    result = gamma_pass_rate(reference, reference.copy(), (3.0, 3.0, 3.0))
    assert result.pass_rate == pytest.approx(100.0)
