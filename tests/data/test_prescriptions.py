"""Stated prescriptions scale the prediction from the trained levels (docs/dicom.md states the tolerance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mddose.data.openkbp import read_dose_csv, read_patient, write_dose_csv
from mddose.data.prescriptions import FILE
from mddose.errors import MddoseError
from mddose.inference.predict import predict
from mddose.inference.pretrained import pretrained_folder

SCALE = 60 / 70
STATED = {"PTV70": 60.0, "PTV63": 54.0, "PTV56": 48.0}  # OpenKBP's levels × 60/70
TOLERANCE_GY = 0.001  # the submission CSV's rounding; the method itself is exact


def _scaled_copy(source: Path, target: Path) -> None:
    """The patient with its dose and prescriptions scaled by 60/70 (links to the anatomy's files)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if not path.name.startswith("dose."):
            (target / path.name).symlink_to(path)
    patient = read_patient(source)
    write_dose_csv(target / "dose.csv", patient.dose * SCALE, patient.possible_dose_mask)
    (target / FILE).write_text(json.dumps(STATED))


@pytest.mark.slow
def test_a_scaled_openkbp_patient_is_predicted_as_the_original_scaled(openkbp_validation: Path, tmp_path: Path) -> None:
    source = openkbp_validation / "pt_201"
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "pt_201").symlink_to(source)
    _scaled_copy(source, tmp_path / "scaled" / "pt_201")
    model = pretrained_folder("openkbp")
    for name in ("orig", "scaled"):
        predict(model, tmp_path / name, tmp_path / f"pred-{name}", device="cpu", nifti=False, progress=False)
    original = read_dose_csv(tmp_path / "pred-orig" / "pt_201.csv")
    scaled = read_dose_csv(tmp_path / "pred-scaled" / "pt_201.csv")
    assert np.abs(scaled - original * SCALE).max() <= TOLERANCE_GY
    record = json.loads((tmp_path / "pred-scaled" / "prediction.json").read_text())["patients"]["pt_201"]
    assert record["dose_scale"] == pytest.approx(SCALE) and record["stated_prescriptions"] == STATED
    reference = read_patient(tmp_path / "scaled" / "pt_201")  # scored against the scaled plan, as well as before
    before = read_patient(source)
    mask = before.possible_dose_mask
    error_scaled = np.abs(scaled - reference.dose)[mask].mean()
    assert error_scaled == pytest.approx(np.abs(original - before.dose)[mask].mean() * SCALE, abs=0.01)


def test_a_command_line_prescription_wins_and_absurd_ones_are_refused(openkbp_validation: Path,
                                                                     tmp_path: Path) -> None:
    source = openkbp_validation / "pt_201"
    (tmp_path / "pts").mkdir()
    (tmp_path / "pts" / "pt_201").symlink_to(source)
    with pytest.raises(MddoseError, match="more than 2× from the model's trained 70 Gy"):
        predict(pretrained_folder("openkbp"), tmp_path / "pts", tmp_path / "pred", device="cpu",
                prescriptions={"PTV70": 20.0}, progress=False)
    with pytest.raises(MddoseError, match="not a model target"):
        predict(pretrained_folder("openkbp"), tmp_path / "pts", tmp_path / "pred2", device="cpu",
                prescriptions={"PTV-1": 60.0}, progress=False)
