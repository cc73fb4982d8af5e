"""QA's inputs: the patient (an OpenKBP-layout folder, or a DICOM folder imported on the fly) and the plan dose
(an OpenKBP dose CSV on the patient's grid, or an RTDOSE on the patient's Frame of Reference), each checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mddose.data.openkbp import check_dose, check_on_grid, find_file, read_dose_csv, read_patient
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.io.dicom_export import load_sidecar
from mddose.io.dicom_read import read_rtdose_gy
from mddose.io.dicom_scan import find_sop_instance
from mddose.io.geometry import ModelGrid, VolumeGeometry, inside, resample

#: An RTDOSE grid must cover this share of the possible-dose mask.
MIN_COVERAGE = 0.99


def is_openkbp_folder(folder: Path) -> bool:
    return folder.is_dir() and find_file(folder, "ct") is not None


def read_qa_patient(patient_dir: Path, rois: RoiConfig, work: Path, roi_map: Path | None = None,
                    grid: ModelGrid | None = None) -> tuple[Patient, Path]:
    """The patient and the OpenKBP-layout folder it was read from (a DICOM folder is imported into ``work``)."""
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise MddoseError("patient folder does not exist (expected an OpenKBP patient folder or a DICOM folder)",
                          patient_dir)
    if not is_openkbp_folder(patient_dir):
        from mddose.io.dicom_import import import_dicom

        imported = import_dicom(patient_dir, work / patient_dir.name, roi_map=roi_map, grid=grid, rois=rois)
        patient_dir = imported.patient_dir
    patient = read_patient(patient_dir, rois)
    if not patient.prescriptions:
        raise MddoseError(f"no target ROI of the model ({', '.join(rois.targets)}) in the patient: QA needs at "
                          "least one", patient_dir)
    return patient, patient_dir


def plan_source(plan: Path | None, patient_dir: Path, folder: Path) -> Path:
    """The file the plan dose was read from, as the user knows it: ``plan``, the patient folder's dose.csv, or the
    RTDOSE of the DICOM folder (not the temporary folder it was imported into); absolute."""
    if plan is not None:
        return plan.absolute()
    if folder == patient_dir:
        return (find_file(folder, "dose") or folder).absolute()
    uid = load_sidecar(folder).get("rtdose_sop_instance_uid")
    found = find_sop_instance(patient_dir, str(uid)) if uid else None
    return (found or patient_dir).absolute()


def read_plan(plan: Path | None, patient: Patient, patient_dir: Path) -> np.ndarray:
    """The plan dose (Gy) on the patient's grid: ``plan``, or the patient's own dose when ``plan`` is None."""
    if plan is None:
        if patient.dose is None:
            raise MddoseError("no plan dose: give PLAN_DOSE or put the plan's dose.csv (or RTDOSE) in the patient "
                              "folder", patient_dir)
        source = find_file(patient_dir, "dose") or patient_dir
        dose, on_grid = np.asarray(patient.dose, dtype=np.float32), False
    elif not plan.is_file():
        raise MddoseError("plan dose file does not exist", plan)
    elif plan.name.endswith((".csv", ".csv.xz", ".csv.gz")):
        source, dose, on_grid = plan, read_dose_csv(plan, patient.shape), False
    else:  # an RTDOSE, resampled onto the grid (so 0 outside the mask by construction)
        source, dose, on_grid = plan, _rtdose_on_grid(plan, patient, patient_dir), True
    _check_plan(dose, patient, source, check_grid=not on_grid)
    return dose


def _rtdose_on_grid(path: Path, patient: Patient, patient_dir: Path) -> np.ndarray:
    """An RTDOSE resampled onto the patient's model grid, after checking its frame, units and extent."""
    try:
        sidecar = load_sidecar(patient_dir)
    except MddoseError:
        raise MddoseError("an RTDOSE plan needs the patient's DICOM folder (or a folder made by import-dicom) to "
                          "place it", path) from None
    rd = read_rtdose_gy(path)
    frame = sidecar.get("frame_of_reference_uid")
    if rd.frame_of_reference_uid and frame and rd.frame_of_reference_uid != frame:
        raise MddoseError(f"the plan is on Frame of Reference {rd.frame_of_reference_uid}, the patient's CT on "
                          f"{frame}", path)
    model = VolumeGeometry.from_dict(sidecar["model_geometry"])
    mask = patient.possible_dose_mask
    covered = inside(rd.geometry, model)
    share = float((covered & mask).sum()) / max(int(mask.sum()), 1)
    if share < MIN_COVERAGE:
        raise MddoseError(f"the plan's dose grid covers only {100 * share:.1f} % of the patient's possible-dose "
                          "mask", path)
    return np.where(mask, resample(rd.dose, rd.geometry, model, order=1, cval=0.0), 0.0).astype(np.float32)


def _check_plan(dose: np.ndarray, patient: Patient, source: Path, check_grid: bool) -> None:
    check_dose(dose, source)
    if float(dose.sum()) <= 0:
        raise MddoseError("the plan dose is zero everywhere", source)
    if check_grid:
        check_on_grid(dose, patient.possible_dose_mask, source, "plan dose")
