"""``mddose export-dicom``: a predicted dose → an RTDOSE on the original CT's Frame of Reference.

Inputs:

* the prediction: a patient folder made by ``import-dicom`` whose ``dose.csv`` holds the dose to export, or a
  dose file on that patient's model grid — a submission CSV ``pt_N.csv`` (what ``predict`` writes) or a
  ``.nii``/``.nii.gz`` volume — together with ``patient_dir``, the folder ``import-dicom`` made;
* the original DICOM folder: its CT series (the one recorded in ``dicom_geometry.json``) gives the patient
  and study identity.

Before writing, :mod:`~mddose.io.export_checks` refuses a dose of another patient and an output that is an
input or lies inside the DICOM folder.

The RTDOSE grid is the model grid itself (no resampling), cropped to the part inside the CT: same voxel
values (16-bit, DoseGridScaling = max / 65535), placed by the sidecar's geometry; DoseUnits GY, DoseType
PHYSICAL, a new series, the CT's Study Instance UID and Frame of Reference UID, Manufacturer "mddose" with its
version. What it says it is:

* a **prediction** ("MD-Dose predicted dose") is no RT Plan's dose: it references no RTPLAN, and its
  DoseSummationType is PLAN_OVERVIEW ("dose calculated with respect to plan overview parameters", PS3.3
  C.8.8.3: the one defined term that asks for no plan or treatment record); its DoseComment and
  DerivationDescription say it was predicted;
* the patient folder's **own dose** (the planning system's RTDOSE as imported: exporting the folder, or a file
  equal to its ``dose.csv``) is labelled "Reference dose from the patient folder" and keeps the source RTDOSE's
  DoseSummationType and ReferencedRTPlanSequence when that RTDOSE is still in the DICOM folder.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mddose import __version__
from mddose.data.openkbp import check_dose_range, find_file, read_dose_csv, read_sparse_csv
from mddose.errors import MddoseError
from mddose.io.dicom_import import SIDECAR, SIDECAR_FORMAT
from mddose.io.dicom_scan import PREDICTED_DOSE_DESCRIPTION, DicomFile, find_ct_series, read_header
from mddose.io.dicom_write import DoseLabel, identity_from, rtdose_dataset, save_dataset
from mddose.io.export_checks import check_belongs, check_has_target, check_inside_mask, check_output_place
from mddose.io.geometry import VolumeGeometry
from mddose.ownership import check_output_file

log = logging.getLogger(__name__)


def load_sidecar(patient_dir: str | Path) -> dict[str, Any]:
    """The ``dicom_geometry.json`` of a patient folder made by ``import-dicom``."""
    path = Path(patient_dir) / SIDECAR
    if not path.is_file():
        raise MddoseError(f"no {SIDECAR}: not a patient folder made by import-dicom", patient_dir)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
        VolumeGeometry.from_dict(sidecar["model_geometry"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MddoseError(f"bad geometry sidecar ({type(e).__name__}: {e})", path) from None
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise MddoseError(f"unknown sidecar format {sidecar.get('format')!r} (expected {SIDECAR_FORMAT})", path)
    return sidecar


def _load_prediction(prediction: Path, model: VolumeGeometry) -> np.ndarray:
    if prediction.is_dir():
        found = find_file(prediction, "dose")
        if found is None:
            raise MddoseError("no dose.csv in the patient folder to export", prediction)
        return read_dose_csv(found, model.shape)
    if not prediction.is_file():
        raise MddoseError("prediction does not exist", prediction)
    if prediction.name.endswith((".nii", ".nii.gz")):
        from mddose.io.nifti import load_volume

        dose, geom = load_volume(prediction)
        if geom.shape != model.shape or not np.allclose(geom.affine, model.affine, atol=1e-2):
            raise MddoseError(f"NIfTI grid (shape {geom.shape}) is not this patient's model grid", prediction)
        return np.asarray(dose, dtype=np.float32)
    return read_dose_csv(prediction, model.shape)


REFERENCE_DOSE_DESCRIPTION = "Reference dose from the patient folder"
#: DoseSummationType of a dose that is no RT Plan's (PS3.3 C.8.8.3 asks no plan reference for it).
NO_PLAN_SUMMATION = "PLAN_OVERVIEW"


def predicted_label() -> DoseLabel:
    """How a predicted RTDOSE describes itself: no RT Plan referenced, said to be predicted."""
    return DoseLabel(PREDICTED_DOSE_DESCRIPTION, NO_PLAN_SUMMATION, comment=f"Predicted by mddose {__version__}",
                     derivation=f"Dose predicted by mddose {__version__} from the CT and structures; not calculated "
                     "from an RT Plan")


def reference_label(files: list[DicomFile], sidecar: dict[str, Any]) -> DoseLabel:
    """How the patient folder's own dose describes itself: the source RTDOSE's summation and plan reference."""
    uid = sidecar.get("rtdose_sop_instance_uid")
    source = next((f for f in files if f.kind == "RTDOSE" and uid and str(f.ds.get("SOPInstanceUID", "")) == uid),
                  None)
    refs = tuple(copy.deepcopy(item) for item in source.ds.get("ReferencedRTPlanSequence", [])) if source else ()
    summation = str(source.ds.get("DoseSummationType", "")) if source and refs else NO_PLAN_SUMMATION
    where = f"RTDOSE {uid}" if uid else "the patient folder's dose.csv"
    return DoseLabel(REFERENCE_DOSE_DESCRIPTION, summation, refs, comment="Planned dose, resampled by mddose",
                     derivation=f"The planned dose of {where}, resampled by mddose {__version__} onto its model "
                     "grid (import-dicom)")


def _patient_dir(prediction: Path, patient_dir: str | Path | None) -> Path:
    if patient_dir is not None:
        return Path(patient_dir)
    if not prediction.is_dir():
        raise MddoseError("a dose file needs --patient-dir (the folder import-dicom made for this patient)",
                          prediction)
    return prediction


def _is_own_dose(prediction: Path, dose: np.ndarray, patient_dir: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``dose`` is the patient folder's own dose (the folder itself, or a file equal to its dose.csv)."""
    if prediction.is_dir():
        return True
    own = find_file(patient_dir, "dose")
    return own is not None and np.array_equal(read_dose_csv(own, shape), dose)


def _exported_rtdose(path: Path) -> bool:
    """Whether ``path`` is an RTDOSE this exporter wrote (its Manufacturer is mddose)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - pydicom raises many types for what is not DICOM
        return False
    return ds.get("Modality") == "RTDOSE" and ds.get("Manufacturer") == "mddose"


def export_dose_dicom(
    prediction: str | Path, dicom_dir: str | Path, out_file: str | Path, patient_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``prediction`` as an RTDOSE file ``out_file`` on the CT of ``dicom_dir``.

    Args:
        prediction: a patient folder made by ``import-dicom`` (its ``dose.csv`` is exported), or a dose CSV
            (``pt_N.csv``) / NIfTI on that patient's model grid.
        dicom_dir: the DICOM folder the patient was imported from.
        out_file: the RTDOSE file to write (not inside ``dicom_dir``).
        patient_dir: the folder made by ``import-dicom``; needed when ``prediction`` is a file, defaults to
            ``prediction`` when it is a folder.
        overwrite: replace an RTDOSE an earlier export wrote at ``out_file`` (any other file is refused).
    """
    prediction, dicom_dir, out_file = Path(prediction), Path(dicom_dir), Path(out_file)
    patient_dir = _patient_dir(prediction, patient_dir)
    if out_file.is_dir():
        raise MddoseError("output is a folder; give a file name such as RD_predicted.dcm", out_file)
    check_output_place(out_file, dicom_dir)
    check_output_file(out_file, "mddose export-dicom", [prediction, dicom_dir, patient_dir], _exported_rtdose,
                      overwrite)
    sidecar = load_sidecar(patient_dir)
    check_has_target(patient_dir, sidecar)
    check_belongs(prediction, patient_dir, sidecar)
    model = VolumeGeometry.from_dict(sidecar["model_geometry"])
    dose = _load_prediction(prediction, model)
    check_dose_range(dose, prediction)
    mask_path = find_file(patient_dir, "possible_dose_mask")
    if mask_path is not None:
        check_inside_mask(dose, read_sparse_csv(mask_path, model.shape, mask=True), prediction, patient_dir)
    ct, files = find_ct_series(dicom_dir, str(sidecar["ct_series_instance_uid"]))
    first = _check_ct(ct, sidecar)
    own = _is_own_dose(prediction, dose, patient_dir, model.shape)
    label = reference_label(files, sidecar) if own else predicted_label()
    cropped, geometry = _cropped(dose, model, sidecar)
    ds = rtdose_dataset(cropped, geometry, identity_from(first), str(sidecar["frame_of_reference_uid"]), label)
    save_dataset(ds, out_file)
    log.info("wrote RTDOSE %s (%s: %s voxels, max %.2f Gy, step %s Gy)", out_file, label.description,
             "×".join(map(str, cropped.shape)), float(cropped.max()), ds.DoseGridScaling)
    return out_file


def _check_ct(ct: list[DicomFile], sidecar: dict[str, Any]) -> Any:
    """The first CT header, after checking it is the imported patient's CT (Frame of Reference, PatientID)."""
    first = read_header(ct[0].path)
    frame_uid = str(first.get("FrameOfReferenceUID", ""))
    if frame_uid != sidecar["frame_of_reference_uid"]:
        raise MddoseError(f"CT Frame of Reference {frame_uid} differs from the imported one "
                          f"({sidecar['frame_of_reference_uid']})", ct[0].path)
    recorded = sidecar.get("patient_id")
    if recorded is not None and str(first.get("PatientID", "")) != str(recorded):
        raise MddoseError(f"the CT is of PatientID {first.get('PatientID', '')!r}, the patient folder was imported "
                          f"from PatientID {recorded!r}", ct[0].path)
    return first


def _cropped(dose: np.ndarray, model: VolumeGeometry, sidecar: dict[str, Any]) -> tuple[np.ndarray, VolumeGeometry]:
    """The dose and its geometry cropped to the part of the model grid inside the CT (warning of any loss)."""
    box = sidecar.get("ct_box") or {"lo": [0, 0, 0], "hi": list(model.shape)}
    lo, hi = np.asarray(box["lo"], dtype=int), np.asarray(box["hi"], dtype=int)
    cropped = dose[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    total = float(np.abs(dose).sum())
    outside = total - float(np.abs(cropped).sum())
    if outside > 1e-3 * max(total, 1e-9):
        log.warning("%.1f %% of the dose lies outside the CT and is not exported", 100 * outside / total)
    return cropped, model.crop(lo, hi)
