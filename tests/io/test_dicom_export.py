"""export-dicom: a predicted dose as an RTDOSE on the original CT, read back by pydicom and by our importer."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mddose.cli import main
from mddose.data.openkbp import write_dose_csv
from mddose.io.dicom_export import export_dose_dicom
from mddose.io.dicom_import import ImportResult, import_dicom
from mddose.io.dicom_read import read_rtdose_gy
from mddose.io.geometry import VolumeGeometry, resample
from tests.io.conftest import GRID64


def _prediction(result: ImportResult, seed: int = 0) -> np.ndarray:
    """A plausible 'prediction': the imported dose, perturbed, zero outside the possible-dose mask."""
    rng = np.random.default_rng(seed)
    dose = result.patient.dose * 0.95 + rng.uniform(0, 2, result.patient.shape)
    return np.where(result.patient.possible_dose_mask, dose, 0).astype(np.float32)


def _read_back(ds: pydicom.Dataset) -> np.ndarray:
    """RTDOSE pixels × scaling in our (rows, cols, frames) layout, frames as written (superior last)."""
    return np.transpose(ds.pixel_array, (1, 2, 0)).astype(np.float64) * float(ds.DoseGridScaling)


def test_export_reads_back_with_pydicom(tmp_path: Path, dicom64: Path, imported64: ImportResult) -> None:
    predicted = _prediction(imported64)
    csv = tmp_path / "pt_2.csv"
    write_dose_csv(csv, predicted, imported64.patient.possible_dose_mask)
    out = export_dose_dicom(csv, dicom64, tmp_path / "RD_pred.dcm", patient_dir=imported64.patient_dir)
    ds = pydicom.dcmread(out)
    ct = pydicom.dcmread(sorted(dicom64.glob("CT_*.dcm"))[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2" and ds.Modality == "RTDOSE"
    assert (ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("GY", "PHYSICAL", "PLAN_OVERVIEW")
    assert ds.SeriesDescription == "MD-Dose predicted dose" and "ReferencedRTPlanSequence" not in ds
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID and ds.StudyInstanceUID == ct.StudyInstanceUID
    assert (ds.PatientID, str(ds.PatientName)) == (ct.PatientID, str(ct.PatientName))
    assert ds.SeriesInstanceUID != ct.SeriesInstanceUID and ds.SOPInstanceUID != ct.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    model = VolumeGeometry.from_dict(imported64.sidecar["model_geometry"])
    lo, hi = (np.asarray(imported64.sidecar["ct_box"][k]) for k in ("lo", "hi"))
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [7.812, 7.812]
    # frames run along +z: the first frame is the model grid's most inferior slice of the CT box
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                               model.index_to_world(np.array([lo[0], lo[1], hi[2] - 1])), atol=1e-3)
    offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
    np.testing.assert_allclose(offsets, 5.0 * np.arange(hi[2] - lo[2]), atol=1e-6)
    assert (ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == tuple(hi - lo)
    # the exported grid lies on the CT's slice positions
    ct_z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
                  for p in dicom64.glob("CT_*.dcm"))
    assert set(np.round(float(ds.ImagePositionPatient[2]) + offsets, 3)) <= set(np.round(ct_z, 3))

    values = _read_back(ds)[:, :, ::-1]  # back to superior → inferior
    expected = predicted[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    assert np.abs(values - expected).max() <= float(ds.DoseGridScaling) + 1e-5 * expected.max()


def test_exported_dose_reads_back_on_the_model_grid_and_is_never_taken_for_the_plan(
    tmp_path: Path, dicom64: Path, imported64: ImportResult, caplog: pytest.LogCaptureFixture
) -> None:
    predicted = _prediction(imported64, seed=1)
    csv = tmp_path / "pt_2.csv"
    write_dose_csv(csv, predicted, imported64.patient.possible_dose_mask)
    folder = tmp_path / "with_prediction"
    shutil.copytree(dicom64, folder, ignore=shutil.ignore_patterns("RD.dcm"))
    export_dose_dicom(csv, dicom64, folder / "RD_mddose.dcm", patient_dir=imported64.patient_dir)
    model = VolumeGeometry.from_dict(imported64.sidecar["model_geometry"])
    rd = read_rtdose_gy(folder / "RD_mddose.dcm")  # placed by its own header, resampled onto the model grid
    back = np.where(imported64.patient.possible_dose_mask, resample(rd.dose, rd.geometry, model), 0.0)
    assert np.abs(back - predicted).max() <= rd.scaling / 2 + 1e-5 * predicted.max()  # 16 bit: half a step
    assert rd.scaling == pytest.approx(predicted.max() / 65535, rel=1e-6)
    with caplog.at_level(logging.WARNING):  # a prediction beside the CT is no plan's dose: not imported as one
        again = import_dicom(folder, tmp_path / "pt_2", grid=GRID64)
    assert again.sidecar["model_geometry"] == imported64.sidecar["model_geometry"] and again.patient.dose is None
    assert "RD_mddose.dcm: a dose MD-Dose predicted, not a plan's: ignored" in caplog.text


def test_export_from_a_patient_folder(tmp_path: Path, dicom64: Path, imported64: ImportResult) -> None:
    ds = pydicom.dcmread(export_dose_dicom(imported64.patient_dir, dicom64, tmp_path / "RD.dcm"))
    lo, hi = (np.asarray(imported64.sidecar["ct_box"][k]) for k in ("lo", "hi"))
    expected = imported64.patient.dose[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    assert np.abs(_read_back(ds)[:, :, ::-1] - expected).max() <= float(ds.DoseGridScaling) + 1e-5


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mddose", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_import_then_export(
    tmp_path: Path, dicom64: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(monkeypatch, capsys, "import-dicom", str(dicom64), str(tmp_path / "pts" / "pt_2"))
    assert code == 0 and "PTV70" in out
    csv = tmp_path / "preds" / "pt_2.csv"
    csv.parent.mkdir()
    shutil.copy(next((tmp_path / "pts" / "pt_2").glob("dose.csv*")), csv)
    code, out, err = _cli(monkeypatch, capsys, "export-dicom", str(csv), str(dicom64), str(tmp_path / "RD.dcm"),
                          "--patient-dir", str(tmp_path / "pts" / "pt_2"))
    assert code == 0, err
    assert pydicom.dcmread(tmp_path / "RD.dcm").DoseUnits == "GY"
    code, _, err = _cli(monkeypatch, capsys, "export-dicom", str(csv), str(dicom64), str(tmp_path / "RD2.dcm"))
    assert code == 1 and "--patient-dir" in err.strip().splitlines()[-1]
    assert not (tmp_path / "RD2.dcm").exists()


@pytest.mark.slow
def test_import_predict_pretrained_export(tmp_path: Path, dicom64: Path) -> None:
    """A clinic's DICOM through the shipped model: import-dicom -> predict openkbp -> export-dicom."""
    import subprocess

    patients = tmp_path / "patients"
    run = lambda *args: subprocess.run([sys.executable, "-m", "mddose.cli", *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True)
    for args in (("import-dicom", dicom64, patients / "pt_2"),
                 ("predict", "openkbp", patients, tmp_path / "preds", "--steps", "2"),
                 ("export-dicom", tmp_path / "preds" / "pt_2.csv", dicom64, tmp_path / "RD_mddose.dcm",
                  "--patient-dir", patients / "pt_2")):
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(tmp_path / "RD_mddose.dcm")
    dose = ds.pixel_array * float(ds.DoseGridScaling)
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY" and np.isfinite(dose).all() and 0 < dose.max() < 90
