"""What an exported RTDOSE says it is, and that the DICOM validator accepts it (issue 33, part 5): dicom3tools'
``dciodvfy`` reports no ``Error`` line on a phantom's and on the real patient's export; a prediction references
no RT Plan; the patient folder's own dose is labelled as the reference; the dose lies on the CT's Frame of
Reference and, on the real patient, on its target."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import mddose
from mddose.data.openkbp import write_dose_csv
from mddose.inference.trivial import trivial_dose
from mddose.io.dicom_export import export_dose_dicom
from mddose.io.dicom_import import ImportResult, import_dicom
from mddose.io.dicom_read import read_ct_series, read_rtdose_gy, read_rtstruct
from mddose.io.dicom_scan import RTPLAN_STORAGE, scan_dicom_dir
from mddose.io.geometry import resample
from mddose.io.rasterise import rasterise_roi
from tests.io.conftest import GRID64
from tests.io.real_patient import RealImport


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports on ``path`` (skips where dicom3tools is not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools: apt-get install dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode >= 0 and "Assertion" not in text, text  # a crash (e.g. on 32-bit pixels) is a failure
    return [line for line in text.splitlines() if line.startswith("Error")]


def _predicted(result: ImportResult, folder: Path) -> Path:
    """A 'prediction' of the patient (its dose, 5 % cooler) as predict names it: pt_N.csv."""
    path = folder / f"{result.patient.patient_id}.csv"
    write_dose_csv(path, 0.95 * result.patient.dose, result.patient.possible_dose_mask)
    return path


def _rtplan_beside(dicom: Path, folder: Path) -> Path:
    """A copy of ``dicom`` with an RTPLAN on the CT's Frame of Reference (what a clinic's folder has)."""
    shutil.copytree(dicom, folder)
    ct = pydicom.dcmread(next(folder.glob("CT_*.dcm")), stop_before_pixels=True)
    plan = Dataset()
    plan.file_meta = FileMetaDataset()
    plan.file_meta.MediaStorageSOPClassUID, plan.file_meta.TransferSyntaxUID = RTPLAN_STORAGE, ExplicitVRLittleEndian
    plan.SOPClassUID, plan.SOPInstanceUID = RTPLAN_STORAGE, generate_uid()
    plan.file_meta.MediaStorageSOPInstanceUID = plan.SOPInstanceUID
    plan.Modality, plan.PatientID, plan.StudyInstanceUID = "RTPLAN", ct.PatientID, ct.StudyInstanceUID
    plan.FrameOfReferenceUID, plan.RTPlanLabel = ct.FrameOfReferenceUID, "clinical"
    plan.save_as(folder / "RP.dcm", enforce_file_format=True)
    return folder


def test_ci_installs_dicom3tools_before_the_tests() -> None:
    script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    body = script.split("install_dicom3tools() {", 1)[1]
    assert "apt-get install -y -qq dicom3tools" in body and "command -v dciodvfy" in body
    assert script.index("\ninstall_dicom3tools\n") < script.index("python3 -m pytest")


def test_phantom_exports_pass_dciodvfy(tmp_path: Path, dicom64: Path, imported64: ImportResult) -> None:
    predicted = export_dose_dicom(_predicted(imported64, tmp_path), dicom64, tmp_path / "RD_pred.dcm",
                                  patient_dir=imported64.patient_dir)
    reference = export_dose_dicom(imported64.patient_dir, dicom64, tmp_path / "RD_ref.dcm")
    assert dciodvfy_errors(predicted) == [] and dciodvfy_errors(reference) == []


def test_a_prediction_references_no_plan_and_says_it_is_predicted(tmp_path: Path, dicom64: Path,
                                                                  imported64: ImportResult) -> None:
    folder = _rtplan_beside(dicom64, tmp_path / "dicom")
    csv = _predicted(imported64, tmp_path)
    first = pydicom.dcmread(export_dose_dicom(csv, folder, tmp_path / "RD1.dcm", patient_dir=imported64.patient_dir))
    again = pydicom.dcmread(export_dose_dicom(csv, folder, tmp_path / "RD2.dcm", patient_dir=imported64.patient_dir))
    assert "ReferencedRTPlanSequence" not in first and first.DoseSummationType == "PLAN_OVERVIEW"
    assert first.SeriesDescription == "MD-Dose predicted dose" and "Predicted by mddose" in first.DoseComment
    assert "not calculated from an RT Plan" in first.DerivationDescription
    assert (first.Manufacturer, first.ManufacturerModelName, first.SoftwareVersions) == (
        "mddose", "mddose", mddose.__version__)
    ct = pydicom.dcmread(next(folder.glob("CT_*.dcm")), stop_before_pixels=True)
    tps = pydicom.dcmread(folder / "RD.dcm", stop_before_pixels=True)
    assert len({first.SeriesInstanceUID, again.SeriesInstanceUID, ct.SeriesInstanceUID, tps.SeriesInstanceUID}) == 4


def test_the_patient_folders_own_dose_is_labelled_the_reference(tmp_path: Path, dicom64: Path,
                                                                  imported64: ImportResult) -> None:
    """The folder itself, or a copy of its dose.csv: the planning system's dose, with the source's plan."""
    folder = tmp_path / "dicom"
    shutil.copytree(dicom64, folder)
    source = pydicom.dcmread(folder / "RD.dcm")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = RTPLAN_STORAGE, "1.2.3.4.5"
    source.ReferencedRTPlanSequence = DicomSequence([ref])
    source.save_as(folder / "RD.dcm")
    imported = import_dicom(folder, tmp_path / "imp" / "pt_2", grid=GRID64)
    copy = tmp_path / "pt_2.csv"
    shutil.copy(next(imported.patient_dir.glob("dose.csv*")), copy)
    for prediction, patient_dir in ((imported.patient_dir, None), (copy, imported.patient_dir)):
        ds = pydicom.dcmread(export_dose_dicom(prediction, folder, tmp_path / "RD_ref.dcm", patient_dir=patient_dir))
        assert ds.SeriesDescription == "Reference dose from the patient folder"
        assert ds.DoseSummationType == "PLAN" and ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"
        assert source.SOPInstanceUID in ds.DerivationDescription
        assert dciodvfy_errors(tmp_path / "RD_ref.dcm") == []
        (tmp_path / "RD_ref.dcm").unlink()


def test_16_bit_pixels_keep_the_dose_within_half_a_step(tmp_path: Path, dicom64: Path,
                                                        imported64: ImportResult) -> None:
    csv = _predicted(imported64, tmp_path)
    ds = pydicom.dcmread(export_dose_dicom(csv, dicom64, tmp_path / "RD.dcm", patient_dir=imported64.patient_dir))
    pixels = ds.pixel_array
    step = float(ds.DoseGridScaling)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    assert pixels.dtype == np.uint16 and int(pixels.max()) == 65535
    dose = 0.95 * imported64.patient.dose
    assert step == pytest.approx(float(dose.max()) / 65535, rel=1e-6)  # 1.1 mGy per step at 70 Gy
    lo, hi = (np.asarray(imported64.sidecar["ct_box"][k]) for k in ("lo", "hi"))
    values = np.transpose(pixels, (1, 2, 0))[:, :, ::-1] * step
    assert np.abs(values - dose[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]).max() <= step / 2 + 1e-6


# ------------------------------------------------------------------ the real patient (CMS XiO export)


def _ptv_on_ct(dicom: Path) -> tuple[np.ndarray, object]:
    """PTV-1 inside the patient's outline ("Patient"), as their contours draw them, rasterised on the original
    CT grid (cropped around it). Near the chest wall PTV-1 reaches into the air outside the skin, where no
    possible-dose mask (and so no prediction) goes."""
    study = scan_dicom_dir(dicom)
    _, ct_geometry, _ = read_ct_series(study.ct)
    rois = {r.name: r for r in read_rtstruct(study.rtstruct.ds)}
    mask = np.ones(ct_geometry.shape, dtype=bool)
    for name in ("PTV-1", "Patient"):
        mask &= rasterise_roi(rois[name].contours, ct_geometry, name, study.rtstruct.path)
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(axis=0) - 12, 0), np.minimum(idx.max(axis=0) + 13, ct_geometry.shape)
    return mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], ct_geometry.crop(lo, hi)


def test_real_patient_exports_pass_dciodvfy_on_the_cts_frame(tmp_path: Path, real_imported: RealImport) -> None:
    result, dicom = real_imported.result, real_imported.dicom
    csv = tmp_path / "pt_1.csv"
    write_dose_csv(csv, trivial_dose(result.patient), result.patient.possible_dose_mask)
    predicted = export_dose_dicom(csv, dicom, tmp_path / "RD_pred.dcm", patient_dir=result.patient_dir)
    reference = export_dose_dicom(result.patient_dir, dicom, tmp_path / "RD_ref.dcm")
    assert dciodvfy_errors(predicted) == [] and dciodvfy_errors(reference) == []
    ct = pydicom.dcmread(dicom / "2.dcm", stop_before_pixels=True)
    tps = pydicom.dcmread(dicom / "113.dcm", stop_before_pixels=True)
    for path in (predicted, reference):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.FrameOfReferenceUID, ds.StudyInstanceUID, ds.PatientID) == (
            ct.FrameOfReferenceUID, ct.StudyInstanceUID, ct.PatientID)
    ds = pydicom.dcmread(reference, stop_before_pixels=True)
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == \
        tps.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID  # what the planning system said, kept
    assert "ReferencedRTPlanSequence" not in pydicom.dcmread(predicted, stop_before_pixels=True)


def test_real_patient_dose_sits_on_its_target(tmp_path: Path, real_imported: RealImport) -> None:
    """Placed by its own header on the CT, the exported dose covers PTV-1 as its contours outline it (inside the
    body): a dose of 70 Gy on the mapped target (PTV-1 → PTV70, the trivial baseline) reads ≥ 95 % of it on
    average there (the rest: the model grid's 3.9 × 3.9 × 2.5 mm voxels at the edge), its dose-weighted centre
    lies within 1.5 mm of PTV-1's centre, and the reference export matches the TPS's RTDOSE there within 1 %."""
    result, dicom = real_imported.result, real_imported.dicom
    csv = tmp_path / "pt_1.csv"
    write_dose_csv(csv, trivial_dose(result.patient), result.patient.possible_dose_mask)
    predicted = read_rtdose_gy(export_dose_dicom(csv, dicom, tmp_path / "RD_pred.dcm", patient_dir=result.patient_dir))
    reference = read_rtdose_gy(export_dose_dicom(result.patient_dir, dicom, tmp_path / "RD_ref.dcm"))
    tps = read_rtdose_gy(dicom / "113.dcm")
    ptv, where = _ptv_on_ct(dicom)
    on_ct = {name: resample(rd.dose, rd.geometry, where, order=order, antialias=False)
             for name, rd, order in (("predicted", predicted, 0), ("reference", reference, 1), ("tps", tps, 1))}
    assert on_ct["predicted"][ptv].mean() >= 0.95 * 70.0
    points = where.index_to_world(np.argwhere(ptv).astype(float))
    weights = predicted.dose.ravel()
    dose_points = predicted.geometry.index_to_world(np.argwhere(predicted.dose >= 0).astype(float))
    centre = (dose_points * weights[:, None]).sum(axis=0) / weights.sum()
    assert np.linalg.norm(centre - points.mean(axis=0)) <= 1.5  # measured: 0.06 mm
    assert on_ct["reference"][ptv].mean() == pytest.approx(on_ct["tps"][ptv].mean(), rel=0.01)
