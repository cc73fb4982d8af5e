"""The paper's HI, DVH score (eq. 9) and dose score (eq. 8) on hand values and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mddose.evaluate.challenge import dvh_differences, target_metrics
from mddose.evaluate.paper import headline_target, homogeneity_index, paper_dose_score, paper_dvh_score


def test_homogeneity_index_by_hand() -> None:
    voxels = np.linspace(60.0, 70.0, 101)  # 60.0, 60.1, ..., 70.0
    # D2 = percentile 98 = 69.8, D98 = percentile 2 = 60.2, D50 = 65.0
    assert homogeneity_index(voxels) == pytest.approx((69.8 - 60.2) / 65.0, abs=1e-12)
    assert homogeneity_index(np.full(50, 70.0)) == 0.0  # uniform dose


def test_homogeneity_index_edge_cases() -> None:
    assert math.isnan(homogeneity_index(np.array([])))  # empty ROI
    assert homogeneity_index(np.array([66.0])) == 0.0  # single voxel
    assert math.isnan(homogeneity_index(np.zeros(10)))  # zero dose: D50 = 0


def test_headline_target_is_highest_prescription() -> None:
    assert headline_target({"PTV56": 56.0, "PTV70": 70.0, "PTV63": 63.0}) == "PTV70"
    assert headline_target({"PTV56": 56.0}) == "PTV56"
    assert headline_target({}) is None


def test_paper_dvh_score_uses_targets_only() -> None:
    ref = {**{("PTV70", m): v for m, v in target_metrics(np.array([60.0, 70.0])).items()},
           ("SpinalCord", "mean"): 30.0}
    pred = {**{("PTV70", m): v + 3.0 for (_, m), v in ref.items() if m.startswith("D_")},
            ("SpinalCord", "mean"): 130.0}
    # (|ΔD1| + |ΔD95| + |ΔD99|) / 3 = 3; the OAR's 100 Gy error does not enter eq. 9.
    assert paper_dvh_score(dvh_differences(ref, pred), ("PTV56", "PTV63", "PTV70")) == pytest.approx(3.0)
    assert math.isnan(paper_dvh_score({("SpinalCord", "mean"): 1.0}, ("PTV70",)))  # no target present


def test_paper_dvh_score_weights_each_ptv_equally() -> None:
    diffs = {("PTV70", "D_1"): 1.0, ("PTV70", "D_95"): 1.0, ("PTV70", "D_99"): 1.0,
             ("PTV56", "D_1"): 4.0, ("PTV56", "D_95"): 4.0, ("PTV56", "D_99"): 4.0}
    assert paper_dvh_score(diffs, ("PTV56", "PTV70")) == pytest.approx(2.5)


def test_paper_dose_score_by_hand() -> None:
    reference = np.array([10.0, 100.0, 0.0, 5.0, 9.999])
    prediction = np.array([12.0, 90.0, 3.0, 50.0, 0.0])
    # cut-off 10 % of max = 10 Gy: only the first two voxels count; |2|/10 = 0.2, |10|/100 = 0.1 -> 15 %
    assert paper_dose_score(reference, prediction) == pytest.approx(15.0)
    assert paper_dose_score(reference, reference) == 0.0


def test_paper_dose_score_zero_dose_is_nan() -> None:
    assert math.isnan(paper_dose_score(np.zeros(8), np.ones(8)))
    with pytest.raises(ValueError, match="cutoff"):
        paper_dose_score(np.ones(3), np.ones(3), cutoff=0.0)
