"""OpenKBP dose and DVH scores against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mddose.data.patient import RoiConfig
from mddose.evaluate.challenge import (
    dose_score,
    dvh_differences,
    dvh_metrics,
    dvh_score,
    oar_metrics,
    target_metrics,
    voxels_in_tenth_cc,
)


def test_voxels_in_tenth_cc_rounds_like_numpy() -> None:
    assert voxels_in_tenth_cc(3.906 * 3.906 * 2.5) == 3  # 38.1 mm³: 2.62 -> 3
    assert voxels_in_tenth_cc(5.422 * 5.422 * 3.0) == 1  # 88.2 mm³: 1.13 -> 1
    assert voxels_in_tenth_cc(40.0) == 2  # 2.5 rounds half to even, as np.round does
    assert voxels_in_tenth_cc(1000.0) == 1  # never fewer than one voxel


def test_oar_metrics_by_hand() -> None:
    voxels = np.arange(10, dtype=np.float64)  # 0..9 Gy
    # 25 mm³ voxels: 0.1 cc = 4 voxels -> percentile 100 - 4/10*100 = 60 -> position 0.6 * 9 = 5.4 -> 5.4 Gy
    out = oar_metrics(voxels, 25.0)
    assert out["D_0.1_cc"] == pytest.approx(5.4, abs=1e-12)
    assert out["mean"] == pytest.approx(4.5, abs=1e-12)


def test_target_metrics_by_hand() -> None:
    voxels = np.array([50.0, 10.0, 30.0, 20.0, 40.0])
    out = target_metrics(voxels)
    # sorted 10..50, percentile p sits at position p/100 * 4
    assert out["D_99"] == pytest.approx(10.4, abs=1e-12)  # percentile 1: 10 + 0.04 * 10
    assert out["D_95"] == pytest.approx(12.0, abs=1e-12)  # percentile 5: 10 + 0.2 * 10
    assert out["D_1"] == pytest.approx(49.6, abs=1e-12)  # percentile 99: 40 + 0.96 * 10


def test_single_voxel_and_empty_roi() -> None:
    one = np.array([7.5])
    assert oar_metrics(one, 38.1) == {"D_0.1_cc": 7.5, "mean": 7.5}  # smaller than 0.1 cc: clipped, no error
    assert target_metrics(one) == {"D_99": 7.5, "D_95": 7.5, "D_1": 7.5}
    # Two voxels with 3 voxels per 0.1 cc: the official percentile would be -50; we take the minimum.
    assert oar_metrics(np.array([4.0, 9.0]), 38.1)["D_0.1_cc"] == 4.0
    empty = np.array([])
    assert all(math.isnan(v) for v in oar_metrics(empty, 38.1).values())
    assert all(math.isnan(v) for v in target_metrics(empty).values())


def test_dvh_metrics_skips_absent_and_empty_rois() -> None:
    rois = RoiConfig()
    dose = np.arange(64, dtype=np.float64).reshape(4, 4, 4)
    ptv = np.zeros((4, 4, 4), dtype=bool)
    ptv[0, 0, :] = True  # doses 0, 1, 2, 3
    cord = np.zeros((4, 4, 4), dtype=bool)
    cord[3, 3, 3] = True  # dose 63
    structures = {"PTV70": ptv, "SpinalCord": cord, "Brainstem": np.zeros((4, 4, 4), dtype=bool)}
    table = dvh_metrics(dose, structures, rois, voxel_volume_mm3=100.0)
    assert set(table) == {("PTV70", "D_99"), ("PTV70", "D_95"), ("PTV70", "D_1"),
                          ("SpinalCord", "D_0.1_cc"), ("SpinalCord", "mean")}
    assert table[("PTV70", "D_99")] == pytest.approx(0.03)  # percentile 1 of 0..3: 0.01 * 3
    assert table[("PTV70", "D_95")] == pytest.approx(0.15)
    assert table[("PTV70", "D_1")] == pytest.approx(2.97)
    assert table[("SpinalCord", "D_0.1_cc")] == 63.0 and table[("SpinalCord", "mean")] == 63.0


def test_dose_score_uses_whole_grid_over_mask_count() -> None:
    reference = np.zeros((2, 2, 2))
    prediction = np.zeros((2, 2, 2))
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0] = True  # 4 voxels
    prediction[0, 0, 0] = 1.0  # inside the mask
    prediction[1, 1, 1] = 3.0  # outside the mask: still counted in the sum
    assert dose_score(reference, prediction, mask) == pytest.approx((1.0 + 3.0) / 4)
    assert dose_score(reference, reference, mask) == 0.0
    with pytest.raises(ValueError, match="possible-dose mask is empty"):
        dose_score(reference, prediction, np.zeros_like(mask))


def test_dvh_score_pools_entries_not_patients() -> None:
    patient_a = {("PTV70", "D_99"): 1.0, ("PTV70", "D_95"): 1.0, ("PTV70", "D_1"): 4.0}  # patient mean 2
    patient_b = {("SpinalCord", "mean"): 5.0, ("Larynx", "mean"): float("nan")}  # NaN entry ignored
    assert dvh_score([patient_a, patient_b]) == pytest.approx(11.0 / 4)  # not (2 + 5) / 2
    assert math.isnan(dvh_score([]))


def test_dvh_differences_absolute() -> None:
    ref = {("PTV70", "D_99"): 60.0, ("SpinalCord", "mean"): 10.0}
    pred = {("PTV70", "D_99"): 62.5, ("SpinalCord", "mean"): 9.0}
    assert dvh_differences(ref, pred) == {("PTV70", "D_99"): 2.5, ("SpinalCord", "mean"): 1.0}
