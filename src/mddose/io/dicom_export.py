"""``mddose export-dicom``: a predicted dose → an RTDOSE on the original CT's Frame of Reference.

Inputs:

* the prediction: a patient folder made by ``import-dicom`` whose ``dose.csv`` holds the dose to export, or a
  dose file on that patient's model grid — a submission CSV ``pt_N.csv`` (what ``predict`` writes) or a
  ``.nii``/``.nii.gz`` volume — together with ``patient_dir``, the folder ``import-dicom`` made;
* the original DICOM folder: its CT series (the one recorded in ``dicom_geometry.json``) gives the patient
  and study identity, and an RTPLAN on the same Frame of Reference, if there is exactly one, is referenced.

The RTDOSE grid is the model grid itself (no resampling), cropped to the part inside the CT: same voxel
values, placed by the sidecar's geometry. DoseUnits GY, DoseType PHYSICAL, DoseSummationType PLAN, new
Series and SOP Instance UIDs, the CT's Study Instance UID and Frame of Reference UID.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mddose.data.openkbp import check_dose_range, check_on_grid, find_file, read_dose_csv, read_sparse_csv
from mddose.errors import MddoseError
from mddose.io.dicom_import import SIDECAR, SIDECAR_FORMAT
from mddose.io.dicom_scan import find_ct_series, read_header
from mddose.io.dicom_write import identity_from, rtdose_dataset, save_dataset
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
        out_file: the RTDOSE file to write.
        patient_dir: the folder made by ``import-dicom``; needed when ``prediction`` is a file, defaults to
            ``prediction`` when it is a folder.
        overwrite: replace an RTDOSE an earlier export wrote at ``out_file`` (any other file is refused).
    """
    prediction, dicom_dir, out_file = Path(prediction), Path(dicom_dir), Path(out_file)
    if patient_dir is None:
        if not prediction.is_dir():
            raise MddoseError("a dose file needs --patient-dir (the folder import-dicom made for this patient)",
                              prediction)
        patient_dir = prediction
    if out_file.is_dir():
        raise MddoseError("output is a folder; give a file name such as RD_predicted.dcm", out_file)
    check_output_file(out_file, "mddose export-dicom", [prediction, dicom_dir, patient_dir], _exported_rtdose,
                      overwrite)
    sidecar = load_sidecar(patient_dir)
    model = VolumeGeometry.from_dict(sidecar["model_geometry"])
    dose = _load_prediction(prediction, model)
    check_dose_range(dose, prediction)
    mask_path = find_file(Path(patient_dir), "possible_dose_mask")
    if mask_path is not None:
        check_on_grid(dose, read_sparse_csv(mask_path, model.shape, mask=True), prediction)
    ct, rtplan = find_ct_series(dicom_dir, str(sidecar["ct_series_instance_uid"]))
    first = read_header(ct[0].path)
    frame_uid = str(first.get("FrameOfReferenceUID", ""))
    if frame_uid != sidecar["frame_of_reference_uid"]:
        raise MddoseError(f"CT Frame of Reference {frame_uid} differs from the imported one "
                          f"({sidecar['frame_of_reference_uid']})", ct[0].path)
    box = sidecar.get("ct_box") or {"lo": [0, 0, 0], "hi": list(model.shape)}
    lo, hi = np.asarray(box["lo"], dtype=int), np.asarray(box["hi"], dtype=int)
    cropped = dose[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    outside = float(np.abs(dose).sum() - np.abs(cropped).sum())
    if outside > 1e-3 * max(float(np.abs(dose).sum()), 1e-9):
        log.warning("%.1f %% of the dose lies outside the CT and is not exported",
                    100 * outside / float(np.abs(dose).sum()))
    ds = rtdose_dataset(cropped, model.crop(lo, hi), identity_from(first), frame_uid,
                        rtplan=rtplan.ds if rtplan is not None else None, description="MD-Dose predicted dose")
    save_dataset(ds, out_file)
    log.info("wrote RTDOSE %s (%s voxels, max %.2f Gy, scaling %s)", out_file, "×".join(map(str, cropped.shape)),
             float(cropped.max()), ds.DoseGridScaling)
    return out_file
