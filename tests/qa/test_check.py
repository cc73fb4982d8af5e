"""QA flags on a phantom with a known achievable dose (its modelled dose) and a stated error table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mddose.data.patient import Patient
from mddose.data.phantom import make_phantom
from mddose.errors import MddoseError
from mddose.qa.check import check_plan
from mddose.qa.tolerance import ErrorTable, MetricError
from mddose.inference.slicewise import PatientDose
from tests.qa.helpers import cut_coverage, known, raised_oar, stated_table


@pytest.fixture(scope="module")
def phantom() -> Patient:
    return make_phantom(0, 128, "pt_1")


def test_plan_equal_to_achievable_is_not_flagged(phantom: Patient) -> None:
    ref = phantom.dose
    result = check_plan(phantom, ref, known(ref), stated_table())
    assert result.flagged == []
    assert all(r.difference == pytest.approx(0.0, abs=1e-6) for r in result.rows)
    assert {r.roi for r in result.rows} == set(phantom.present_rois())


def test_raised_parotid_flags_that_parotid_only(phantom: Patient) -> None:
    ref = phantom.dose
    plan = raised_oar(phantom, ref, "LeftParotid")
    result = check_plan(phantom, plan, known(ref), stated_table())
    assert result.flagged == ["LeftParotid"]
    dmean = next(r for r in result.rows if r.roi == "LeftParotid" and r.metric == "Dmean")
    assert dmean.difference > dmean.tolerance > 0


def test_cut_coverage_flags_the_ptv(phantom: Patient) -> None:
    ref = phantom.dose
    result = check_plan(phantom, cut_coverage(phantom, ref), known(ref), stated_table())
    assert "PTV70" in result.flagged
    assert not [roi for roi in result.flagged if roi not in phantom.prescriptions]  # no OAR is worse
    d95 = next(r for r in result.rows if r.roi == "PTV70" and r.metric == "D95")
    assert d95.flag and d95.difference < -d95.tolerance


def test_bias_and_sample_spread_enter_the_comparison(phantom: Patient) -> None:
    ref = phantom.dose
    table = stated_table()
    # a model known to over-predict the parotid's Dmean by 5 Gy: a plan 4 Gy below its prediction is achievable
    table.metrics["LeftParotid"]["Dmean"] = MetricError(5.0, 1.0, 5.0, 30)
    lowered = np.where(phantom.structures["LeftParotid"], np.maximum(ref - 4.0, 0), ref).astype(np.float32)
    row = next(r for r in check_plan(phantom, ref, known(lowered), table).rows
               if r.roi == "LeftParotid" and r.metric == "Dmean")
    assert row.achievable == pytest.approx(row.predicted - 5.0)
    assert row.difference == pytest.approx(row.plan - row.predicted + 5.0)
    # two samples that disagree widen the tolerance beyond the table's alone
    spread = check_plan(phantom, ref, known(ref * 0.9, ref * 1.1), stated_table())
    rows = {(r.roi, r.metric): r for r in spread.rows}
    assert rows[("LeftParotid", "Dmean")].sample_sd > 0
    assert rows[("LeftParotid", "Dmean")].tolerance > 1.645 * 1.5


def test_the_prediction_is_taken_as_the_predictor_gave_it(phantom: Patient) -> None:
    """The mean and spread QA shows are the predictor's (what ``mddose predict`` writes), not recomputed from the
    draws; the draws give the per-sample spread of each metric, and a prediction without draws is one draw."""
    ref = phantom.dose
    spread = np.full_like(ref, 0.25)
    drawn = PatientDose(ref, spread, np.stack([ref * 0.9, ref * 1.1]))
    result = check_plan(phantom, ref, drawn, stated_table())
    assert np.array_equal(result.mean, ref) and np.array_equal(result.spread, spread)
    assert result.samples.shape == (2, *ref.shape)
    assert next(r for r in result.rows if (r.roi, r.metric) == ("LeftParotid", "Dmean")).sample_sd > 0
    alone = check_plan(phantom, ref, PatientDose(ref, spread), stated_table())
    assert alone.samples.shape == (1, *ref.shape) and all(r.sample_sd == 0 for r in alone.rows)


def test_tolerance_floor_and_unknown_metric() -> None:
    table = ErrorTable(["A"], {"A": {"Dmean": MetricError(0.0, 0.1, 0.1, 5)}})
    assert table.tolerance("A", "Dmean") == 1.0  # the floor, not 1.645 · 0.1
    assert table.tolerance("A", "Dmean", sample_sd=2.0, z=2.0) == pytest.approx(2.0 * math.sqrt(0.01 + 4.0))
    assert math.isnan(table.tolerance("A", "D2"))


def test_error_table_round_trip_and_bad_files(tmp_path: Path) -> None:
    diffs = {"PTV70": {"D95": [1.0, -1.0, 2.0], "HI": [0.1]}}
    table = ErrorTable.from_differences(["PTV70"], diffs, patients=3)
    assert table.error("PTV70", "D95") == MetricError(pytest.approx(2 / 3), pytest.approx(1.5275, rel=1e-3),
                                                      pytest.approx(4 / 3), 3)
    assert table.error("PTV70", "HI") is None  # one patient: no spread, not judged
    loaded = ErrorTable.load(table.save(tmp_path / "t.json"))
    assert loaded.metrics == table.metrics and loaded.info["patients"] == 3
    with pytest.raises(MddoseError, match="qa-calibrate"):
        ErrorTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(MddoseError, match="not a QA error table"):
        ErrorTable.load(tmp_path / "bad.json")
