"""The trivial baseline: prescriptions inside targets (highest wins), zero elsewhere and outside the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mddose.data.openkbp import read_dose_csv, write_patient
from mddose.inference.trivial import predict_trivial, trivial_dose
from tests.conftest import toy_patient


def test_trivial_dose_and_files(tmp_path: Path) -> None:
    p = toy_patient()
    p.structures["PTV56"] = p.structures["PTV56"] | p.structures["PTV70"]  # overlap: 70 must win
    dose = trivial_dose(p)
    assert (dose[p.structures["PTV70"] & p.possible_dose_mask] == 70).all()
    assert (dose[(p.structures["PTV56"] & ~p.structures["PTV70"]) & p.possible_dose_mask] == 56).all()
    assert (dose[~(p.structures["PTV56"])] == 0).all() and (dose[~p.possible_dose_mask] == 0).all()
    write_patient(p, tmp_path / "data" / "pt_1")
    (path,) = predict_trivial(tmp_path / "data", tmp_path / "out", progress=False)
    np.testing.assert_array_equal(read_dose_csv(path), dose)
