"""``mddose import-dicom``: a clinical CT + RTSTRUCT (+ RTDOSE) → an OpenKBP-layout patient folder.

Steps: find the CT series and its RTSTRUCT (:mod:`~mddose.io.dicom_scan`); rasterise the mapped ROIs on the
CT grid (:mod:`~mddose.io.rasterise`); place the model grid (default 128 × 128 × 128 at 3.906 × 3.906 ×
2.5 mm, OpenKBP's) in the patient's frame; resample CT (linear, area-averaged), masks (area fraction ≥ ½)
and the RTDOSE (linear, DoseGridScaling × pixel data in Gy) onto it; write the folder atomically with
:func:`mddose.data.openkbp.write_patient` plus ``dicom_geometry.json`` (see :data:`SIDECAR`).

Placement: the grid is centred on the body (the EXTERNAL ROI, else the largest connected region of
CT > −500 HU) and snapped to the CT's voxel lattice. Along an axis where the body is longer than the field
(typically cranio-caudally: 128 × 2.5 mm = 320 mm), the grid is centred on the targets instead (else on all
mapped ROIs), kept within the body, and the rest is cropped; a warning is logged, and the crop and each
ROI's volume in the DICOM and inside the field are recorded in the sidecar. Beyond the CT the grid reads air
(−1000 HU). The possible-dose mask is the body (holes filled slice by slice) inside the CT and, when an
RTDOSE is imported, inside its grid; the imported dose is zero outside it, as in OpenKBP.

Targets: a patient none of whose targets maps to the model's is refused (one line naming the unmapped ROIs and
the ROI-map line that fixes it). Stated prescriptions (from the ROI map, from a dose in a target's name, from
``prescriptions``) are written to the folder's ``prescriptions.json`` (:mod:`mddose.data.prescriptions`); a
target whose imported RTDOSE is far from its prescription is named in a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mddose.atomic import write_json
from mddose.data.openkbp import write_patient
from mddose.data.prescriptions import check_prescriptions, write_prescriptions
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.io.dicom_read import RtDose, read_ct_series, read_rtdose_gy, read_rtstruct, split_point_rois
from mddose.io.dicom_scan import DicomStudy, scan_dicom_dir
from mddose.io.geometry import (
    MODEL_DIRECTION,
    ModelGrid,
    VolumeGeometry,
    inside,
    is_axis_aligned,
    model_geometry,
    resample,
    resample_mask,
)
from mddose.io.rasterise import rasterise_roi
from mddose.io.roi_map import (BODY, assign_dosed_targets, load_roi_map, map_roi_names, split_roi_map,
                              target_fix)
from mddose.ownership import claim

log = logging.getLogger(__name__)

SIDECAR = "dicom_geometry.json"
SIDECAR_FORMAT = "mddose-dicom-geometry/1"
BODY_HU = -500.0  # CT above this is tissue when no EXTERNAL ROI outlines the body
#: The patient's ends of each model axis (:data:`MODEL_DIRECTION`): (low end, high end, the axis in words).
AXIS_ENDS = (("anterior", "posterior", "front to back"), ("right", "left", "right to left"),
             ("superior", "inferior", "head to feet"))
#: A ROI with more than this share of its volume outside the model field is reported as cut by the field.
CUT_SHARE = 0.01
AIR_HU = -1000.0


@dataclass
class ImportResult:
    """What :func:`import_dicom` wrote."""

    patient_dir: Path
    patient: Patient
    sidecar: dict[str, Any]

    @property
    def unmapped(self) -> list[str]:
        return list(self.sidecar["unmapped_roi_names"])


def body_mask(ct: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """The largest connected region above ``threshold`` HU, holes filled on each axial (last-axis) slice."""
    labels, n = ndimage.label(ct > threshold)
    if n == 0:
        return np.zeros(ct.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for k in np.flatnonzero(body.any(axis=(0, 1))):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Index bounding box ``[lo, hi)`` of a mask's True voxels, or None."""
    if not mask.any():
        return None
    lo, hi = [], []
    for a in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return np.asarray(lo), np.asarray(hi)


def _extent(geometry: VolumeGeometry, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extent along the model axes (mm, in :data:`MODEL_DIRECTION` coordinates) of an index box's voxels."""
    corners = np.array(np.meshgrid(*[(lo[a] - 0.5, hi[a] - 0.5) for a in range(3)], indexing="ij")).reshape(3, -1).T
    u = geometry.index_to_world(corners) @ MODEL_DIRECTION
    return u.min(axis=0), u.max(axis=0)


def place_model_grid(
    ct_geometry: VolumeGeometry,
    grid: ModelGrid,
    body_box: tuple[np.ndarray, np.ndarray],
    focus_box: tuple[np.ndarray, np.ndarray] | None,
    focus_name: str,
) -> tuple[VolumeGeometry, list[dict[str, Any]]]:
    """Centre the model grid on the body; along axes where the body exceeds the field, on the focus (kept
    inside the body). Returns the grid and one record per cropped axis."""
    lo, hi = _extent(ct_geometry, *body_box)
    centre = (lo + hi) / 2
    field = grid.field_mm
    crops = []
    focus = _extent(ct_geometry, *focus_box) if focus_box is not None else None
    for a in range(3):
        if hi[a] - lo[a] <= field[a] + 1e-6:
            continue
        name = "body"
        if focus is not None:
            name = focus_name
            half = field[a] / 2
            centre[a] = float(np.clip((focus[0][a] + focus[1][a]) / 2, lo[a] + half, hi[a] - half))
        low, high = AXIS_ENDS[a][:2]
        cut_low = round(float(max(0.0, (centre[a] - field[a] / 2) - lo[a])), 2)
        cut_high = round(float(max(0.0, hi[a] - (centre[a] + field[a] / 2))), 2)
        crops.append({
            "axis": a,
            "body_extent_mm": round(float(hi[a] - lo[a]), 2),
            "field_mm": round(float(field[a]), 2),
            "centred_on": name,
            "cropped_mm_low": cut_low,
            "cropped_mm_high": cut_high,
            f"cropped_mm_{low}": cut_low,
            f"cropped_mm_{high}": cut_high,
        })
    geometry = model_geometry(grid, MODEL_DIRECTION @ centre)
    if is_axis_aligned(ct_geometry, geometry):  # snap to the CT lattice: equal spacings then resample exactly
        snapped = ct_geometry.index_to_world(np.rint(ct_geometry.world_to_index(np.asarray(geometry.origin))))
        geometry = VolumeGeometry(grid.shape, grid.spacing, tuple(snapped), MODEL_DIRECTION)
    return geometry, crops


@dataclass
class _RoiMask:
    """A ROI rasterised on the CT grid, kept as its bounding box only."""

    box: tuple[np.ndarray, np.ndarray]  # CT index box [lo, hi)
    mask: np.ndarray  # the mask within the box
    geometry: VolumeGeometry  # the box's geometry
    volume_cc: float


def _rasterise(mapping: dict[str, list[str]], contours: dict[str, list[np.ndarray]], ct_geometry: VolumeGeometry,
               source: Path) -> dict[str, _RoiMask]:
    """Rasterise each model ROI (the union of its clinical ROIs) on the CT grid; empty ones are left out."""
    out = {}
    for model_name, clinical in mapping.items():
        mask = np.zeros(ct_geometry.shape, dtype=bool)
        for name in clinical:
            mask |= rasterise_roi(contours[name], ct_geometry, name, source)
        box = _box(mask)
        if box is None:
            log.warning("ROI %s (%s) has no contours on the CT: left out", model_name, ", ".join(clinical))
            continue
        (i0, j0, k0), (i1, j1, k1) = box
        cropped = mask[i0:i1, j0:j1, k0:k1]
        volume = float(cropped.sum()) * float(np.prod(ct_geometry.spacing)) / 1000.0
        out[model_name] = _RoiMask(box, cropped, ct_geometry.crop(*box), volume)
    return out


def import_dicom(
    dicom_dir: str | Path,
    out_dir: str | Path,
    roi_map: str | Path | dict[str, str | None] | None = None,
    grid: ModelGrid | None = None,
    rois: RoiConfig | None = None,
    prescriptions: dict[str, float] | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Import one patient's DICOM folder into the patient folder ``out_dir`` (its name is the patient id).

    Args:
        dicom_dir: folder with the CT series, an RTSTRUCT and optionally an RTDOSE (and RTPLAN).
        out_dir: patient folder to write, claimed (:func:`mddose.ownership.claim`): new or empty, or one written
            by a previous import, replaced with ``overwrite``; never inside ``dicom_dir``.
        roi_map: ROI-name map: a JSON/YAML file or a dict (see :mod:`mddose.io.roi_map`).
        grid: the model grid; default :class:`ModelGrid` (OpenKBP geometry).
        rois: the model's ROI names; default OpenKBP's.
        prescriptions: stated prescriptions (model target → Gy), over those of the ROI map and the names.
        overwrite: replace an earlier import in ``out_dir``.

    Raises:
        MddoseError: bad input (see :mod:`mddose.io.dicom_scan` and :mod:`mddose.io.rasterise`); nothing is
            written then.
    """
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    grid, rois = grid or ModelGrid(), rois or RoiConfig()
    map_path = Path(roi_map) if isinstance(roi_map, str | Path) else None
    map_dict, stated = split_roi_map(load_roi_map(map_path) if map_path is not None else roi_map or {}, rois,
                                     map_path)
    stated |= check_prescriptions(prescriptions or {}, rois)
    with claim(out_dir, "mddose import-dicom", [dicom_dir, map_path], overwrite=overwrite, whole=True) as tmp:
        patient, sidecar, stated = _import(dicom_dir, out_dir.name, grid, rois, map_dict, map_path, stated)
        write_patient(patient, tmp)
        write_prescriptions(tmp, stated)
        write_json(tmp / SIDECAR, sidecar)
    log.info("imported %s: %d ROIs, CT %s → model %s", dicom_dir, len(patient.structures),
             tuple(sidecar["ct_geometry"]["shape"]), grid.shape)
    return ImportResult(out_dir, patient, sidecar)


def _import(dicom_dir: Path, patient_id: str, grid: ModelGrid, rois: RoiConfig, map_dict: Any,
            map_path: Path | None, stated: dict[str, float]) -> tuple[Patient, dict[str, Any], dict[str, float]]:
    """The patient on the model grid, its ``dicom_geometry.json`` and its prescriptions (those the targets' names
    state, under ``stated``: the ROI map's and the user's), read from the DICOM folder."""
    # read: CT, contours mapped to the model's ROIs, the dose
    study = scan_dicom_dir(dicom_dir)
    assert study.rtstruct is not None
    ct, ct_geometry, ct_headers = read_ct_series(study.ct)
    _warn_short_ct(ct_geometry, grid)
    masks, mapping, unmapped, named = _read_masks(study, ct_geometry, rois, map_dict, map_path)
    stated = named | stated
    dose = _read_dose(study)
    # place the model grid on the body (centred on the targets where the body is too long) and resample
    body_src, body_box = _body_box(masks, mapping, ct, study)
    model, crops = _place(ct_geometry, grid, masks, rois, body_box)
    ct_model = resample(ct, ct_geometry, model, order=1, cval=AIR_HU)
    structures, volumes = _masks_on_grid(masks, model, grid)
    body = structures.pop(BODY) if BODY in structures else body_mask(ct_model)
    possible = body & inside(ct_geometry, model)
    dose_model = None
    if dose is not None:
        possible &= inside(dose.geometry, model)
        dose_model = np.where(possible, resample(dose.dose, dose.geometry, model, order=1, cval=0.0), 0.0)
    _warn_if_unusable(possible, structures, rois, dose is not None)
    patient = Patient(patient_id, ct_model, possible, grid.spacing, structures, dose_model, rois)
    _require_target(patient, unmapped, dicom_dir)
    _warn_off_prescription(patient, stated)
    sidecar = _sidecar(study, ct_headers, ct_geometry, model, crops, body_src, mapping, unmapped, volumes, dose)
    return patient, sidecar, stated


def _read_masks(study: DicomStudy, ct_geometry: VolumeGeometry, rois: RoiConfig, map_dict: Any, map_path: Path | None
                ) -> tuple[dict[str, _RoiMask], dict[str, list[str]], list[str], dict[str, float]]:
    """The RTSTRUCT's contours, mapped to the model's ROI names and rasterised on the CT, and the prescriptions
    that targets named with another dose state."""
    roi_list, points = split_point_rois(read_rtstruct(study.rtstruct.ds, study.rtstruct.path))
    if points:
        log.info("point ROIs (markers, isocentres: points, not volumes; not imported): %s", ", ".join(points))
    mapping, unmapped = map_roi_names([(r.name, r.interpreted_type) for r in roi_list], rois, map_dict, map_path)
    mapping, unmapped, named = assign_dosed_targets(mapping, unmapped, rois)
    if unmapped:
        log.warning("unmapped ROI names (not imported; map them with --roi-map): %s", ", ".join(unmapped))
    by_name: dict[str, list[np.ndarray]] = {}
    for r in roi_list:
        by_name.setdefault(r.name, []).extend(r.contours)
    return _rasterise(mapping, by_name, ct_geometry, study.rtstruct.path), mapping, unmapped, named


def _read_dose(study: DicomStudy) -> RtDose | None:
    if study.rtdose is None:
        return None
    return read_rtdose_gy(study.rtdose.path)


def _body_box(masks: dict[str, _RoiMask], mapping: dict[str, list[str]], ct: np.ndarray,
              study: DicomStudy) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    """Where the body is (its ROI, else the CT above the body threshold) and how that was found."""
    if BODY in masks:
        return f"ROI {', '.join(mapping[BODY])}", masks[BODY].box
    box = _box(body_mask(ct))
    if box is None:
        raise MddoseError(f"no body found in the CT (no voxel above {BODY_HU:g} HU)", study.ct[0].path.parent)
    return f"CT > {BODY_HU:g} HU", box


def _place(ct_geometry: VolumeGeometry, grid: ModelGrid, masks: dict[str, _RoiMask], rois: RoiConfig,
           body_box: tuple[np.ndarray, np.ndarray]) -> tuple[VolumeGeometry, list[dict[str, Any]]]:
    """The model grid on the body, centred on the targets (else the ROIs) along an axis where the body is longer."""
    focus_names = [t for t in rois.targets if t in masks] or [r for r in masks if r != BODY]
    focus_box = None
    if focus_names:
        focus_box = (np.min([masks[n].box[0] for n in focus_names], axis=0),
                     np.max([masks[n].box[1] for n in focus_names], axis=0))
    focus_name = "targets" if focus_names and focus_names[0] in rois.targets else "ROIs"
    model, crops = place_model_grid(ct_geometry, grid, body_box, focus_box, focus_name)
    for c in crops:
        low, high, words = AXIS_ENDS[c["axis"]]
        log.warning(
            "patient longer than the model field %s (%.0f mm > %.0f mm): centred on the %s, %.0f mm cut off at "
            "the %s end and %.0f mm at the %s end", words, c["body_extent_mm"], c["field_mm"], c["centred_on"],
            c["cropped_mm_low"], low, c["cropped_mm_high"], high,
        )
    return model, crops


def _masks_on_grid(masks: dict[str, _RoiMask], model: VolumeGeometry, grid: ModelGrid
                   ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Every ROI resampled onto the model grid, with its volume in DICOM, inside the field (both on the CT grid)
    and on the model grid (cc). A ROI is said to be cut only when part of it lies outside the field: the
    model-grid volume also differs by resampling, which cuts nothing."""
    structures, volumes = {}, {}
    for name, roi in masks.items():
        mask = resample_mask(roi.mask, roi.geometry, model)
        voxel_cc = float(np.prod(roi.geometry.spacing)) / 1000.0
        in_field_cc = float((roi.mask & inside(model, roi.geometry)).sum()) * voxel_cc
        model_cc = float(mask.sum()) * float(np.prod(grid.spacing)) / 1000.0
        volumes[name] = {"dicom_cc": round(roi.volume_cc, 3), "in_field_cc": round(in_field_cc, 3),
                         "model_cc": round(model_cc, 3)}
        if roi.volume_cc - in_field_cc > CUT_SHARE * roi.volume_cc:
            log.warning("ROI %s extends beyond the model field: %.1f of its %.1f cc lie inside", name, in_field_cc,
                        roi.volume_cc)
        structures[name] = mask
    return structures, volumes


def _warn_if_unusable(possible: np.ndarray, structures: dict[str, np.ndarray], rois: RoiConfig,
                      with_dose: bool) -> None:
    if not possible.any():
        log.warning("the possible-dose mask is empty: no body inside the CT%s",
                    " and the dose grid" if with_dose else "")


def _require_target(patient: Patient, unmapped: list[str], dicom_dir: Path) -> None:
    """No patient folder without a target: the model would predict a dose aimed at nothing."""
    if patient.prescriptions:
        return
    raise MddoseError(f"no target: none of the ROIs maps to the model's targets {', '.join(patient.rois.targets)} "
                      f"(unmapped: {', '.join(unmapped) or 'none'}); {target_fix(unmapped, patient.rois)}", dicom_dir)


#: a CT shorter than this fraction of the model field along z is named (a few slices around the target)
SHORT_CT = 0.25


def _warn_short_ct(ct_geometry: VolumeGeometry, grid: ModelGrid) -> None:
    """One line when the CT covers a small part of the model field along z: the 2.5D model reads each slice's
    neighbours, and its training patients spanned 90 mm or more (predict checks the model's own range)."""
    n = ct_geometry.shape[2]
    extent, field = n * ct_geometry.spacing[2], float(grid.field_mm[2])
    if extent < SHORT_CT * field:
        log.warning("the CT has only %d slices (%.0f mm of the model field's %.0f mm along z): the prediction "
                    "lacks the anatomy above and below; predict says whether the model can take it", n, extent, field)


#: a target whose imported dose (median) differs from its prescription by more than this fraction is named
PRESCRIPTION_WARNING = 0.15


def _warn_off_prescription(patient: Patient, stated: dict[str, float]) -> None:
    """Name each target whose RTDOSE median is far from its (stated, else trained) prescription."""
    if patient.dose is None:
        return
    for target, trained in patient.prescriptions.items():
        rx = stated.get(target, trained)
        median = float(np.median(patient.dose[patient.structures[target]]))
        if abs(median / rx - 1) > PRESCRIPTION_WARNING:
            log.warning("target %s receives a median %.1f Gy in the RTDOSE, %.0f %% from its prescription %.1f Gy: "
                        "state its prescription (--prescription %s=GY or the ROI map)", target, median,
                        100 * (median / rx - 1), rx, target)


def _sidecar(study: DicomStudy, ct_headers: list[Any], ct_geometry: VolumeGeometry, model: VolumeGeometry,
             crops: list[dict[str, Any]], body_src: str, mapping: dict[str, list[str]], unmapped: list[str],
             volumes: dict[str, dict[str, float]], dose: RtDose | None) -> dict[str, Any]:
    """``dicom_geometry.json``: where the grid lies in the CT's frame, and what was imported from where."""
    ct_box = _box(inside(ct_geometry, model))
    return {
        "format": SIDECAR_FORMAT,
        "patient_id": study.patient_id,
        "frame_of_reference_uid": study.frame_of_reference_uid,
        "study_instance_uid": str(ct_headers[0].get("StudyInstanceUID", "")),
        "ct_series_instance_uid": study.series_instance_uid,
        "rtstruct_sop_instance_uid": str(study.rtstruct.ds.get("SOPInstanceUID", "")),
        "rtdose_sop_instance_uid": str(study.rtdose.ds.get("SOPInstanceUID", "")) if study.rtdose else None,
        "model_geometry": model.to_dict(),
        "model_affine_lps": model.affine.tolist(),
        "ct_geometry": ct_geometry.to_dict(),
        "ct_box": {"lo": ct_box[0].tolist(), "hi": ct_box[1].tolist()} if ct_box else None,
        "crop": crops,
        "body_from": body_src,
        "roi_names": mapping,
        "unmapped_roi_names": unmapped,
        "roi_volumes": volumes,
        "dose": None if dose is None else {"units": dose.units, "summation": dose.summation,
                                           "scaling": dose.scaling},
    }
