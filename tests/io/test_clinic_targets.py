"""A clinic's targets: none mapped is refused with the fix, any prescription is stated and scales the prediction,
an RTDOSE far from its prescription and a patient out of the model's scope are named (issue 33, parts 1-3)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mddose.data.dataset import DataConfig
from mddose.data.openkbp import read_dose_csv, read_patient
from mddose.data.patient import Patient, RoiConfig
from mddose.data.prescriptions import FILE, dose_scale, parse_prescription_options
from mddose.errors import MddoseError
from mddose.inference.bounds import check_voxel, training_voxel_mm
from mddose.inference.predict import predict
from mddose.inference.pretrained import pretrained_folder
from mddose.inference.scope import profile_of, require_target, scope_warnings
from mddose.io.dicom_import import import_dicom
from mddose.io.dicom_read import read_rtdose_gy
from mddose.io.roi_map import assign_dosed_targets, map_roi_names
from tests.io.conftest import GRID64

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "dicom" / "nsclc-lung1-003"


def real_dicom() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"the real clinical DICOM patient is not at {REAL}: real-patient test skipped")
    return REAL


def mddose(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mddose.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_real_patient_without_a_mapped_target_is_refused_with_the_fix(tmp_path: Path) -> None:
    out = mddose("import-dicom", real_dicom(), tmp_path / "pts" / "pt_3", cwd=tmp_path)
    assert out.returncode == 1
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no target" in error[0] and "PTV-1" in error[0]
    assert '"PTV-1": {"roi": "PTV70", "prescription_gy": GY}' in error[0]  # the --roi-map line that fixes it
    assert not (tmp_path / "pts").exists()


@pytest.mark.slow
def test_real_patient_with_a_stated_prescription_is_predicted_on_target(tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"PTV-1": {"roi": "PTV70", "prescription_gy": 60}}))
    out = mddose("import-dicom", real_dicom(), "pts/pt_3", "--roi-map", "map.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "pts" / "pt_3" / FILE).read_text()) == {"PTV70": 60.0}
    out = mddose("predict", "openkbp", "pts", "preds", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "out of the model's scope: only 2 of the model's 7 OARs" in out.stderr  # a lung, not head and neck
    record = json.loads((tmp_path / "preds" / "prediction.json").read_text())["patients"]["pt_3"]
    assert record["dose_scale"] == pytest.approx(60 / 70)
    patient = read_patient(tmp_path / "pts" / "pt_3")
    target = read_dose_csv(tmp_path / "preds" / "pt_3.csv")[patient.structures["PTV70"]]
    assert abs(target.mean() / 60 - 1) < 0.1  # the dose sits on the target, at its stated prescription
    # the rest of the README's DICOM flow: the RTDOSE on the CT, and qa of the planning system's own plan
    out = mddose("export-dicom", "preds/pt_3.csv", real_dicom(), "RD_mddose.dcm", "--patient-dir", "pts/pt_3",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    exported = read_rtdose_gy(tmp_path / "RD_mddose.dcm")
    assert exported.dose.max() == pytest.approx(float(read_dose_csv(tmp_path / "preds" / "pt_3.csv").max()), abs=0.01)
    out = mddose("qa", "openkbp", real_dicom(), "--roi-map", "map.json", "--samples", "1",
                 "--no-gamma", "--out", "qa", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    qa = json.loads((tmp_path / "qa" / "qa.json").read_text())
    assert qa["dose_scale"] == pytest.approx(60 / 70) and qa["stated_prescriptions"] == {"PTV70": 60.0}
    assert any(row["roi"] == "PTV70" for row in qa["rows"])


def test_predict_refuses_a_patient_without_target(imported64, tmp_path: Path) -> None:
    folder = tmp_path / "pts" / "pt_2"
    folder.mkdir(parents=True)
    for path in imported64.patient_dir.iterdir():
        if not path.name.startswith("PTV"):
            (folder / path.name).write_bytes(path.read_bytes())
    sidecar = json.loads((folder / "dicom_geometry.json").read_text())
    (folder / "dicom_geometry.json").write_text(json.dumps(sidecar | {"unmapped_roi_names": ["PTV_boost", "Lung"]}))
    with pytest.raises(MddoseError, match=r'no target.*PTV_boost, Lung.*"PTV_boost": \{"roi": "PTV70"'):
        require_target(folder, RoiConfig())
    with pytest.raises(MddoseError, match="no target"):
        predict(pretrained_folder("openkbp"), tmp_path / "pts", tmp_path / "preds", device="cpu", progress=False)
    assert not list((tmp_path / "preds").glob("*.csv"))


def test_targets_named_with_other_doses_map_by_rank() -> None:
    rois = RoiConfig()
    names = [("PTV-1", "PTV"), ("PTV_60", "PTV"), ("PTV 54Gy", "PTV"), ("Cord", "ORGAN")]
    mapping, unmapped = map_roi_names(names, rois)
    mapping, unmapped, stated = assign_dosed_targets(mapping, unmapped, rois)
    assert mapping["PTV70"] == ["PTV_60"] and mapping["PTV63"] == ["PTV 54Gy"] and unmapped == ["PTV-1"]
    assert stated == {"PTV70": 60.0, "PTV63": 54.0}  # "PTV-1": an index, not a dose
    assert parse_prescription_options(["PTV70=66", "PTV56=50.4Gy"]) == {"PTV70": 66.0, "PTV56": 50.4}
    with pytest.raises(MddoseError, match="expected TARGET=GY"):
        parse_prescription_options(["PTV70:66"])


def test_dose_scale_and_levels_that_do_not_scale_alike() -> None:
    trained = {"PTV70": 70.0, "PTV56": 56.0}
    assert dose_scale(trained, {}) == (1.0, None)
    assert dose_scale(trained, {"PTV70": 60.0, "PTV56": 48.0}) == (pytest.approx(60 / 70), None)
    scale, note = dose_scale(trained, {"PTV70": 66.0, "PTV56": 50.0})
    assert scale == pytest.approx(66 / 70) and "PTV56" in note


def test_import_names_a_target_whose_dose_is_far_from_its_prescription(
    tmp_path: Path, dicom64: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        result = import_dicom(dicom64, tmp_path / "pt_2", grid=GRID64, prescriptions={"PTV70": 40.0})
    assert json.loads((result.patient_dir / FILE).read_text()) == {"PTV70": 40.0}
    assert "target PTV70 receives a median" in caplog.text and "prescription 40.0 Gy" in caplog.text


def _patient(slices: int, spacing: tuple[float, float, float], oars: int = 7) -> Patient:
    shape = (96, 96, 96)
    mask = np.zeros(shape, bool)
    mask[8:88, 8:88, :slices] = True  # 80 voxels in-plane
    rois = RoiConfig()
    structures = {name: mask.copy() for name in rois.oars[:oars]} | {"PTV70": mask.copy()}
    return Patient("pt_9", np.zeros(shape), mask, spacing, structures, None, rois)


def test_scope_warnings_name_what_lies_outside_the_training_set() -> None:
    entries = [{"slices": list(range(60)), "spacing": [3.9, 3.9, 2.5], "crop_shape": [80, 90, 60]},
               {"slices": list(range(120)), "spacing": [2.7, 2.7, 2.5], "crop_shape": [100, 110, 120]}]
    profile = profile_of(entries)
    assert profile["z_extent_mm"] == {"min": 150.0, "max": 300.0} and profile["width_mm"]["max"] == 351.0
    data = DataConfig(context_slices=1)
    assert scope_warnings(_patient(80, (3.9, 3.9, 2.5)), data, profile) == []
    few = scope_warnings(_patient(2, (3.9, 3.9, 2.5), oars=2), data, profile)
    assert any("only 2 axial slices: fewer than the 3" in w for w in few)
    assert any("only 2 of the model's 7 OARs" in w for w in few)
    assert any("dose region along z 5 mm (training set 150–300 mm)" in w for w in few)
    fine = scope_warnings(_patient(80, (1.0, 1.0, 2.5)), data, profile)  # 1 mm voxels: inference/bounds refuses
    assert all(w.startswith("pt_9: out of") and "voxels" not in w for w in fine)
    with pytest.raises(MddoseError, match="another scale than its training patients"):
        check_voxel((1.0, 1.0, 2.5), (96, 96, 96), training_voxel_mm(Path("no-run"), data), data, "pt_9")


def test_a_short_ct_is_named_at_import(tmp_path: Path, dicom64: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = tmp_path / "short"
    short.mkdir()
    slices = sorted(dicom64.glob("CT_*.dcm"))
    middle = len(slices) // 2
    for path in slices[middle - 2: middle + 2] + [dicom64 / "RS.dcm"]:  # 4 CT slices around the middle
        (short / path.name).write_bytes(path.read_bytes())
    with caplog.at_level(logging.WARNING):
        try:
            import_dicom(short, tmp_path / "pt_2", grid=GRID64)
        except MddoseError:
            pass  # the contours may miss these slices: the warning comes first
    assert "the CT has only 4 slices" in caplog.text


def test_export_refuses_a_patient_without_target(imported64, dicom64: Path, tmp_path: Path) -> None:
    from mddose.io.dicom_export import export_dose_dicom

    folder = tmp_path / "pt_2"
    folder.mkdir()
    for path in imported64.patient_dir.iterdir():
        if not path.name.startswith("PTV"):
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(MddoseError, match="no target"):
        export_dose_dicom(folder, dicom64, tmp_path / "out" / "RD.dcm")
    assert not (tmp_path / "out").exists()
