"""Outputs: checked before any work, never half-written, and an unfinished folder is never read as finished.
Wrong doses (another grid, negative) are refused where they would be exported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mddose.atomic import INCOMPLETE
from mddose.data.openkbp import read_dose_csv, write_sparse_csv
from tests.reliability.conftest import assert_clean_error


def _commands(world: dict[str, Path], out: Path) -> dict[str, list[object]]:
    data, run = world["data"], world["run"]
    return {
        "baseline": ["baseline", data, out],
        "prepare": ["prepare", data, out],
        "evaluate": ["evaluate", data, data, "--out", out],
        "predict": ["predict", run, data, out, "--steps", "1"],
        "train": ["train", world["cache"], out, "--max-steps", "1"],
        "export-nifti": ["export-nifti", data / "pt_1", out],
        "qa": ["qa", run, data / "pt_1", "--out", out],
    }


@pytest.mark.parametrize("command", ["baseline", "prepare", "evaluate", "predict", "train", "export-nifti", "qa"])
def test_output_under_a_file_is_refused_before_work(command: str, world: dict[str, Path], tmp_path: Path,
                                                    mddose) -> None:
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "out"
    result = mddose(*_commands(world, out)[command])
    assert_clean_error(result, "a_file", "is a file")
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "bogus", "mps"])
def test_unusable_device(device: str, world: dict[str, Path], tmp_path: Path, mddose) -> None:
    result = mddose("predict", world["run"], world["data"], tmp_path / "p", "--steps", "1", "--device", device)
    assert_clean_error(result, device)
    assert not (tmp_path / "p").exists()


def test_unfinished_prediction_folder_is_refused(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    out = tmp_path / "p"
    assert mddose("baseline", world["data"], out).code == 0
    (out / INCOMPLETE).write_text("mddose predict did not finish writing this folder; run it again to complete it\n")
    assert_clean_error(mddose("evaluate", world["data"], out, "--out", tmp_path / "e"), "unfinished",
                       "mddose predict")
    assert not (tmp_path / "e").exists()
    assert mddose("baseline", world["data"], out).code == 0  # running the command again finishes the folder
    assert not (out / INCOMPLETE).exists()
    assert mddose("evaluate", world["data"], out, "--out", tmp_path / "e", "--no-gamma").code == 0


def _shifted(world: dict[str, Path], path: Path) -> Path:
    """pt_1's dose moved 30 voxels along axis 0: mostly outside its possible-dose mask, as a dose of another grid."""
    dose = read_dose_csv(world["data"] / "pt_1" / "dose.csv", (64, 64, 64))
    write_sparse_csv(path, np.roll(dose, 30, axis=0))
    return path


def test_dose_on_another_grid_is_refused_everywhere(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    wrong = _shifted(world, tmp_path / "pt_1.csv")
    result = mddose("export-nifti", world["data"] / "pt_1", tmp_path / "n", "--prediction", wrong)
    assert_clean_error(result, "pt_1.csv", "not on this patient's grid")
    assert not (tmp_path / "n").exists()
    preds = tmp_path / "preds"
    preds.mkdir()
    shutil.copy(wrong, preds / "pt_1.csv")
    assert_clean_error(mddose("evaluate", world["data"], preds, "--out", tmp_path / "e"), "not on this patient's grid")
    plan = mddose("qa", world["run"], world["data"] / "pt_1", wrong, "--out", tmp_path / "q", "--errors",
                  tmp_path / "none.json")
    assert_clean_error(plan, "none.json", "qa-calibrate")  # the error table is checked before any work
    assert not (tmp_path / "q").exists()


def test_export_dicom_refuses_wrong_doses(tmp_path: Path, mddose) -> None:
    from mddose.data.phantom import make_phantom
    from mddose.io.dicom_write import export_patient_dicom

    phantom = make_phantom(1, 64, "pt_2")
    dicom = export_patient_dicom(phantom, tmp_path / "dicom")
    assert mddose("import-dicom", dicom, tmp_path / "pts" / "pt_2").code == 0
    patient = tmp_path / "pts" / "pt_2"
    shape = (128, 128, 128)
    dose = read_dose_csv(patient / "dose.csv", shape)
    # named as predict names them (pt_2.csv), so that what is refused is the dose itself, not its name
    write_sparse_csv(tmp_path / "shifted" / "pt_2.csv", np.roll(dose, 60, axis=0))
    write_sparse_csv(tmp_path / "negative" / "pt_2.csv", np.where(dose > 0, -dose, 0.0))
    for name, problem in (("shifted", "lies outside"), ("negative", "negative dose")):
        result = mddose("export-dicom", tmp_path / name / "pt_2.csv", dicom, tmp_path / "RD.dcm", "--patient-dir",
                        patient)
        assert_clean_error(result, name, problem)
        assert not (tmp_path / "RD.dcm").exists()
