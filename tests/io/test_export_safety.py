"""export-dicom refuses a dose that is not this patient's and an output that overwrites an input or lands in the
DICOM folder (issue 33, part 4); a second RTDOSE in a DICOM folder never silently becomes the plan's dose."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mddose.data.openkbp import write_dose_csv
from mddose.data.phantom import make_phantom
from mddose.errors import MddoseError
from mddose.io.dicom_export import export_dose_dicom
from mddose.io.dicom_import import SIDECAR, ImportResult, import_dicom
from mddose.io.dicom_write import export_patient_dicom
from tests.io.conftest import GRID64


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mddose.cli", *map(str, args)], capture_output=True, text=True,
                          check=False)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, dicom64: Path, imported64: ImportResult) -> dict[str, Path]:
    """Two patients as a clinic has them: DICOM_pt_1 / imp/pt_1 (a new phantom) and pt_2 (the shared one), and
    each one's prediction out/pt_N.csv (its imported dose made 5 % cooler, zero outside its possible-dose mask)."""
    root = tmp_path_factory.mktemp("two")
    dicom1 = export_patient_dicom(make_phantom(2, 64, "pt_1"), root / "DICOM_pt_1")
    imported1 = import_dicom(dicom1, root / "imp" / "pt_1", grid=GRID64)
    out = root / "out"
    for result in (imported1, imported64):
        write_dose_csv(out / f"{result.patient.patient_id}.csv", 0.95 * result.patient.dose,
                       result.patient.possible_dose_mask)
    return {"root": root, "dicom1": dicom1, "imp1": imported1.patient_dir, "dicom2": dicom64,
            "imp2": imported64.patient_dir, "out": out}


def test_another_patients_prediction_is_refused_in_one_line(two: dict[str, Path], tmp_path: Path) -> None:
    """The issue's command: pt_2's prediction exported as pt_1's RTDOSE."""
    before = _digest(two["root"])
    proc = _cli("export-dicom", two["out"] / "pt_2.csv", two["dicom1"], tmp_path / "RD.dcm", "--patient-dir",
                two["imp1"])
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(err) == 1 and err[0].startswith("error: "), proc.stderr
    assert "named for patient pt_2" in err[0] and "is patient pt_1" in err[0]
    assert not (tmp_path / "RD.dcm").exists() and _digest(two["root"]) == before
    ok = _cli("export-dicom", two["out"] / "pt_1.csv", two["dicom1"], tmp_path / "RD.dcm", "--patient-dir",
              two["imp1"])
    assert ok.returncode == 0, ok.stderr


def test_a_renamed_prediction_is_caught_by_the_possible_dose_mask(two: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "pt_1.csv"  # pt_2's prediction, named as pt_1's
    shutil.copy(two["out"] / "pt_2.csv", renamed)
    with pytest.raises(MddoseError, match=r"% of this dose lies outside the possible-dose mask of pt_1") as exc:
        export_dose_dicom(renamed, two["dicom1"], tmp_path / "RD.dcm", patient_dir=two["imp1"])
    assert "\n" not in str(exc.value) and not (tmp_path / "RD.dcm").exists()


def test_the_dicom_patient_id_also_names_the_patient(two: dict[str, Path], tmp_path: Path) -> None:
    patient_id = json.loads((two["imp1"] / SIDECAR).read_text())["patient_id"]
    named = tmp_path / f"{patient_id}.csv"
    shutil.copy(two["out"] / "pt_1.csv", named)
    assert export_dose_dicom(named, two["dicom1"], tmp_path / "RD.dcm", patient_dir=two["imp1"]).is_file()


def test_a_spread_is_not_exported_as_a_dose(two: dict[str, Path], tmp_path: Path) -> None:
    spread = tmp_path / "uncertainty" / "pt_1.csv"
    spread.parent.mkdir()
    shutil.copy(two["out"] / "pt_1.csv", spread)
    with pytest.raises(MddoseError, match="spread of a prediction"):
        export_dose_dicom(spread, two["dicom1"], tmp_path / "RD.dcm", patient_dir=two["imp1"])


@pytest.mark.parametrize("where", ["a CT slice", "new file in the DICOM folder", "the prediction",
                                   "the patient folder's dose"])
def test_output_over_an_input_or_in_the_dicom_folder_is_refused(where: str, two: dict[str, Path],
                                                                tmp_path: Path) -> None:
    dicom = tmp_path / "DICOM_pt_1"
    shutil.copytree(two["dicom1"], dicom)
    imp = tmp_path / "pt_1"
    shutil.copytree(two["imp1"], imp)
    prediction = tmp_path / "out" / "pt_1.csv"
    prediction.parent.mkdir()
    shutil.copy(two["out"] / "pt_1.csv", prediction)
    out, message = {
        "a CT slice": (dicom / "CT_0001.dcm", "is a file of the DICOM folder"),
        "new file in the DICOM folder": (dicom / "RD_mddose.dcm", "a second RTDOSE beside the planning system's"),
        "the prediction": (prediction, "is also an input of this command"),
        "the patient folder's dose": (next(imp.glob("dose.csv*")), "lies inside an input of this command"),
    }[where]
    before = _digest(tmp_path)
    proc = _cli("export-dicom", prediction, dicom, out, "--patient-dir", imp)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(err) == 1 and message in err[0], proc.stderr
    assert _digest(tmp_path) == before  # nothing written, nothing overwritten


def test_a_second_tps_rtdose_makes_the_folder_ambiguous_in_one_line(two: dict[str, Path], tmp_path: Path) -> None:
    """What a later import-dicom (and so qa) does with two planning-system RTDOSEs: one line naming both."""
    folder = tmp_path / "dicom"
    shutil.copytree(two["dicom1"], folder)
    ds = pydicom.dcmread(folder / "RD.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "RD_second.dcm")
    with pytest.raises(MddoseError) as exc:
        import_dicom(folder, tmp_path / "pt_1", grid=GRID64)
    text = str(exc.value)
    assert "several RTDOSE files" in text and "RD.dcm" in text and "RD_second.dcm" in text and "\n" not in text


def test_a_predicted_rtdose_copied_into_the_folder_is_not_the_plan(two: dict[str, Path], tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Copied there anyway, our prediction is ignored with one warning line: the plan's RTDOSE stays the plan."""
    exported = export_dose_dicom(two["out"] / "pt_1.csv", two["dicom1"], tmp_path / "RD_mddose.dcm",
                                 patient_dir=two["imp1"])
    folder = tmp_path / "dicom"
    shutil.copytree(two["dicom1"], folder)
    shutil.copy(exported, folder / "RD_mddose.dcm")
    with caplog.at_level(logging.WARNING):
        again = import_dicom(folder, tmp_path / "pt_1", grid=GRID64)
    plan = import_dicom(two["dicom1"], tmp_path / "plan_only" / "pt_1", grid=GRID64)
    assert np.array_equal(again.patient.dose, plan.patient.dose)
    assert again.sidecar["rtdose_sop_instance_uid"] == plan.sidecar["rtdose_sop_instance_uid"]
    assert [r.getMessage() for r in caplog.records if "RD_mddose.dcm" in r.getMessage()] == [
        f"{folder / 'RD_mddose.dcm'}: a dose MD-Dose predicted, not a plan's: ignored"]


def test_a_ct_of_another_patient_id_is_refused(two: dict[str, Path], tmp_path: Path) -> None:
    imp = tmp_path / "pt_1"
    shutil.copytree(two["imp1"], imp)
    sidecar = json.loads((imp / SIDECAR).read_text())
    sidecar["patient_id"] = "someone-else"
    (imp / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(MddoseError, match="imported from PatientID 'someone-else'"):
        export_dose_dicom(imp, two["dicom1"], tmp_path / "RD.dcm")
    assert not (tmp_path / "RD.dcm").exists()
