"""NIfTI in and out for CT, masks and dose (nibabel), keeping spacing and orientation.

NIfTI's world is RAS+ (+x towards the patient's right, +y anterior, +z superior); DICOM's is LPS (+x left,
+y posterior, +z superior). The affine written is ``diag(-1, -1, 1, 1) · geometry.affine``, so a
volume keeps its exact place in the scanner frame: a patient folder made by ``import-dicom`` is written
where its CT was (from ``dicom_geometry.json``); any other patient is placed in our orientation (axis 0
posterior, 1 left, 2 inferior; NIfTI axis codes ``P, L, I``) with its voxel spacing, centred at 0.

Reading reorients any NIfTI to those axis codes by flips and axis swaps only (no resampling), so volumes
from other tools (RAS, LPS, ...) come back in the layout of our arrays with the matching affine.
Files: ``ct.nii.gz`` (HU, float32), ``dose.nii.gz`` (Gy, float32), ``possible_dose_mask.nii.gz`` and one
``<ROI>.nii.gz`` per structure (uint8 0/1).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from mddose.atomic import check_output_dir, write_bytes
from mddose.data.openkbp import check_on_grid, find_file, read_dose_csv, read_patient
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.io.geometry import VolumeGeometry, default_geometry
from mddose.ownership import check_inputs, claim

log = logging.getLogger(__name__)

AXCODES = ("P", "L", "I")  # our array axes in NIfTI (RAS) terms
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SUFFIX = ".nii.gz"


def save_volume(path: str | Path, array: np.ndarray, geometry: VolumeGeometry) -> None:
    """Write one volume (bool → uint8, else float32) with the RAS affine of ``geometry``, atomically."""
    path = Path(path)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} differs from the geometry's {geometry.shape}")
    data = array.astype(np.uint8) if array.dtype == bool else np.asarray(array, dtype=np.float32)
    affine = LPS_TO_RAS @ geometry.affine
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    write_bytes(path, gzip.compress(raw, compresslevel=6, mtime=0) if path.name.endswith(".gz") else raw)


def _decimal(a: np.ndarray) -> np.ndarray:
    """NIfTI keeps the affine in float32: 7.812 comes back as 7.8119998; give the shortest decimal that
    rounds to the same float32 (7.812), as written."""
    return np.vectorize(lambda v: float(str(np.float32(v))))(np.asarray(a, dtype=np.float64))


def load_volume(path: str | Path) -> tuple[np.ndarray, VolumeGeometry]:
    """Read a 3-D NIfTI reoriented to our axes: (array as stored, float or integer; its geometry in LPS)."""
    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MddoseError(f"cannot read NIfTI ({type(e).__name__}: {e})", path) from None
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise MddoseError(f"expected a 3-D volume, got shape {img.shape}", path)
    transform = ornt_transform(io_orientation(img.affine), axcodes2ornt(AXCODES))
    img = img.as_reoriented(transform)
    data = np.asanyarray(img.dataobj)
    lps = _decimal(np.linalg.inv(LPS_TO_RAS) @ img.affine)
    spacing = _decimal(np.linalg.norm(lps[:3, :3], axis=0))
    if np.any(spacing <= 0):
        raise MddoseError("NIfTI affine has a zero voxel size", path)
    geometry = VolumeGeometry(data.shape, tuple(spacing), tuple(lps[:3, 3]), lps[:3, :3] / spacing[None, :])
    return np.asarray(data), geometry


def write_patient_nifti(patient: Patient, out_dir: str | Path, geometry: VolumeGeometry | None = None,
                        dose: np.ndarray | None = None, inputs: Sequence[str | Path | None] = (),
                        overwrite: bool = False) -> Path:
    """Write a patient as NIfTI files into the folder ``out_dir``, as a whole, atomically; ``out_dir`` is claimed
    (:func:`mddose.ownership.claim`): new or empty, or an earlier export replaced with ``overwrite``.

    ``dose`` (e.g. a prediction) replaces the patient's own dose in ``dose.nii.gz``.
    """
    geometry = geometry or default_geometry(patient.shape, patient.spacing)
    dose = patient.dose if dose is None else dose
    with claim(out_dir, "mddose export-nifti", inputs, overwrite=overwrite, whole=True) as tmp:
        save_volume(tmp / f"ct{SUFFIX}", patient.ct, geometry)
        save_volume(tmp / f"possible_dose_mask{SUFFIX}", patient.possible_dose_mask, geometry)
        for name, mask in patient.structures.items():
            save_volume(tmp / f"{name}{SUFFIX}", mask, geometry)
        if dose is not None:
            save_volume(tmp / f"dose{SUFFIX}", np.asarray(dose, dtype=np.float32), geometry)
    return Path(out_dir)


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def read_patient_nifti(folder: str | Path, rois: RoiConfig | None = None, patient_id: str | None = None
                       ) -> tuple[Patient, VolumeGeometry]:
    """Read a folder written by :func:`write_patient_nifti` (or by another tool, any orientation).

    ``ct`` is required; a missing ``possible_dose_mask`` means everywhere, a missing ROI file "not contoured".
    Every volume must share the CT's grid (shape and affine).
    """
    folder = Path(folder)
    rois = rois or RoiConfig()
    ct_path = _find(folder, "ct")
    if ct_path is None:
        raise MddoseError("no ct.nii.gz (or ct.nii) in folder", folder)
    ct, geometry = load_volume(ct_path)

    def same_grid(stem: str) -> np.ndarray | None:
        path = _find(folder, stem)
        if path is None:
            return None
        data, geom = load_volume(path)
        if geom.shape != geometry.shape or not np.allclose(geom.affine, geometry.affine, atol=1e-3):
            raise MddoseError(f"grid differs from ct's (shape {geom.shape} vs {geometry.shape} or affine)", path)
        return data

    possible = same_grid("possible_dose_mask")
    structures = {}
    for name in rois.all:
        mask = same_grid(name)
        if mask is not None:
            structures[name] = mask > 0.5
    dose = same_grid("dose")
    patient = Patient(
        patient_id or folder.name.removesuffix(".nii"),
        ct.astype(np.float32),
        np.ones(ct.shape, dtype=bool) if possible is None else possible > 0.5,
        geometry.spacing,
        structures,
        None if dose is None else dose.astype(np.float32),
        rois,
    )
    return patient, geometry


def patient_geometry(patient_dir: str | Path) -> VolumeGeometry | None:
    """The model grid's place in the DICOM frame, from an imported folder's ``dicom_geometry.json``."""
    from mddose.io.dicom_import import SIDECAR

    path = Path(patient_dir) / SIDECAR
    if not path.is_file():
        return None
    try:
        return VolumeGeometry.from_dict(json.loads(path.read_text(encoding="utf-8"))["model_geometry"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MddoseError(f"bad geometry sidecar ({type(e).__name__}: {e})", path) from None


def export_nifti(patient_dir: str | Path, out_dir: str | Path, prediction: str | Path | None = None,
                 overwrite: bool = False) -> Path:
    """Write an OpenKBP-layout patient folder (and optionally a predicted dose CSV ``pt_N.csv``) as NIfTI.

    The grid is placed where ``dicom_geometry.json`` says (folders made by ``import-dicom``), else in our
    orientation centred at 0.
    """
    patient_dir, out_dir = Path(patient_dir), check_output_dir(out_dir)
    check_inputs(out_dir, [patient_dir, prediction])
    geometry = patient_geometry(patient_dir)
    shape = geometry.shape if geometry is not None else None
    patient = read_patient(patient_dir, shape=shape) if shape else read_patient(patient_dir)
    dose = None
    if prediction is not None:
        prediction = Path(prediction)
        if prediction.is_dir():
            found = find_file(prediction, "dose")
            if found is None:
                raise MddoseError("no dose.csv in prediction folder", prediction)
            prediction = found
        dose = read_dose_csv(prediction, patient.shape)
        check_on_grid(dose, patient.possible_dose_mask, prediction)
    out = write_patient_nifti(patient, out_dir, geometry, dose, inputs=[patient_dir, prediction], overwrite=overwrite)
    log.info("wrote %s as NIfTI to %s", patient.patient_id, out)
    return out
