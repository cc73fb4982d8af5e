"""Bad DICOM input: one clear MddoseError line, exit status 1 from the CLI, and no output left behind."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mddose.cli import main
from mddose.errors import MddoseError
from mddose.io.dicom_export import export_dose_dicom
from mddose.io.dicom_import import import_dicom
from mddose.io.dicom_write import export_patient_dicom


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_ct(folder: Path, other: Path) -> None:
    for p in folder.glob("CT_*.dcm"):
        p.unlink()


def _rtstruct_for_other_ct(folder: Path, other: Path) -> None:
    shutil.copy(other / "RS.dcm", folder / "RS.dcm")


def _contour_outside(folder: Path, other: Path) -> None:
    rs = pydicom.dcmread(folder / "RS.dcm")
    contour = rs.ROIContourSequence[0].ContourSequence[0]
    pts = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
    pts[:, 0] += 400.0  # 40 cm to the patient's left: beyond the 50 cm field
    contour.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    rs.save_as(folder / "RS.dcm")


def _non_dicom(folder: Path, other: Path) -> None:
    (folder / "notes.txt").write_text("plan approved\n")


def _mixed_patients(folder: Path, other: Path) -> None:
    path = sorted(folder.glob("CT_*.dcm"))[3]
    ds = pydicom.dcmread(path)
    ds.PatientID = "someone_else"
    ds.save_as(path)


def _relative_dose(folder: Path, other: Path) -> None:
    ds = pydicom.dcmread(folder / "RD.dcm")
    ds.DoseUnits = "RELATIVE"
    ds.save_as(folder / "RD.dcm")


CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "no CT series": (_no_ct, "no CT series"),
    "RTSTRUCT for another CT": (_rtstruct_for_other_ct, "RTSTRUCT is for another CT"),
    "contour outside the image": (_contour_outside, "outside the CT image"),
    "non-DICOM file": (_non_dicom, "not a DICOM file"),
    "mixed patients": (_mixed_patients, "mixed patients"),
    "relative dose": (_relative_dose, "DoseUnits is 'RELATIVE'"),
}


@pytest.fixture(scope="module")
def other_ct(tmp_path_factory: pytest.TempPathFactory, phantom64) -> Path:
    """The same patient on another CT (another Frame of Reference)."""
    return export_patient_dicom(phantom64, tmp_path_factory.mktemp("other") / "pt_2", body=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_one_line(case: str, tmp_path: Path, dicom64: Path, other_ct: Path) -> None:
    spoil, message = CASES[case]
    folder = _copy(dicom64, tmp_path / "dicom")
    spoil(folder, other_ct)
    out = tmp_path / "pt_2"
    with pytest.raises(MddoseError) as exc:
        import_dicom(folder, out)
    text = str(exc.value)
    assert message in text and "\n" not in text
    assert exc.value.path is not None
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["dicom"]


@pytest.mark.parametrize("case", ["non-DICOM file", "mixed patients", "RTSTRUCT for another CT"])
def test_cli_bad_input_exits_1(
    case: str, tmp_path: Path, dicom64: Path, other_ct: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    spoil, message = CASES[case]
    folder = _copy(dicom64, tmp_path / "dicom")
    spoil(folder, other_ct)
    monkeypatch.setattr(sys, "argv", ["mddose", "import-dicom", str(folder), str(tmp_path / "pt_2")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "pt_2").exists()


def test_output_folder_that_is_not_an_import_is_refused(tmp_path: Path, dicom64: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(MddoseError, match="mddose import-dicom did not make .thesis.tex"):
        import_dicom(dicom64, out)
    assert (out / "thesis.tex").read_text() == "x"


def test_several_plan_doses_are_ambiguous(tmp_path: Path, dicom64: Path) -> None:
    folder = _copy(dicom64, tmp_path / "dicom")
    ds = pydicom.dcmread(folder / "RD.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "RD_copy.dcm")
    with pytest.raises(MddoseError, match="several RTDOSE files"):
        import_dicom(folder, tmp_path / "pt_2")


def test_export_refuses_another_ct(tmp_path: Path, imported64, other_ct: Path) -> None:
    with pytest.raises(MddoseError, match="is not in this folder"):
        export_dose_dicom(imported64.patient_dir, other_ct, tmp_path / "RD.dcm")
    assert not (tmp_path / "RD.dcm").exists()
