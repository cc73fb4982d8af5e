"""Read a CT series, an RTSTRUCT and an RTDOSE into arrays with their :class:`VolumeGeometry`.

Index layout on the DICOM side: ``array[r, c, s]`` is row ``r``, column ``c`` of slice (frame) ``s``, slices
sorted along the slice normal (row direction × column direction). For the usual axial CT (orientation
``1,0,0,0,1,0``) rows run anterior → posterior, columns right → left and slices inferior → superior; the
model grid (:mod:`mddose.io.geometry`) flips the last axis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mddose.errors import MddoseError
from mddose.io.dicom_scan import DicomFile
from mddose.io.geometry import VolumeGeometry

log = logging.getLogger(__name__)

_SPACING_TOLERANCE = 0.01  # relative deviation of slice spacings still called uniform


#: RTROIInterpretedTypes of points (a marker, an isocentre), not volumes.
POINT_TYPES = ("MARKER", "ISOCENTER")


@dataclass
class RoiContours:
    """One ROI of a structure set: its closed planar contours in LPS mm (and how many POINT contours it had)."""

    number: int
    name: str
    interpreted_type: str  # RTROIInterpretedType, e.g. PTV, ORGAN, EXTERNAL ('' when absent)
    contours: list[np.ndarray]  # (N, 3) each
    points: int = 0  # POINT contours (skipped)

    @property
    def is_point(self) -> bool:
        """A point (marker, isocentre) rather than a volume: POINT contours or a point type, no closed contour."""
        return not self.contours and (self.points > 0 or self.interpreted_type.upper() in POINT_TYPES)


def split_point_rois(rois: list[RoiContours]) -> tuple[list[RoiContours], list[str]]:
    """(the ROIs that are volumes, the names of those that are points)."""
    return [r for r in rois if not r.is_point], [r.name for r in rois if r.is_point]


def _floats(value: object, n: int, what: str, path: Path) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise MddoseError(f"{what} is not {n} numbers", path) from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise MddoseError(f"{what} is not {n} finite numbers", path)
    return out


def _plane_axes(ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, normal, pixel spacing) of an image plane."""
    if "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds or "ImagePositionPatient" not in ds:
        raise MddoseError("missing ImageOrientationPatient, ImagePositionPatient or PixelSpacing", path)
    iop = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
    row_dir, col_dir = iop[:3], iop[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if max(abs(norms[0] - 1), abs(norms[1] - 1), abs(row_dir @ col_dir)) > 1e-3:
        raise MddoseError(f"ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors", path)
    spacing = _floats(ds.PixelSpacing, 2, "PixelSpacing", path)
    if np.any(spacing <= 0):
        raise MddoseError(f"PixelSpacing {spacing.tolist()} is not positive", path)
    return row_dir, col_dir, np.cross(row_dir, col_dir), spacing


def _uniform_step(positions: np.ndarray, what: str, path: Path) -> float:
    if len(positions) < 2:
        return 0.0
    steps = np.diff(positions)
    step = float(np.median(steps))
    if step <= 1e-6:
        raise MddoseError(f"{what}: two slices at the same position", path)
    if np.max(np.abs(steps - step)) > _SPACING_TOLERANCE * step + 1e-3:
        raise MddoseError(
            f"{what}: slice spacing is not uniform ({steps.min():.3g} to {steps.max():.3g} mm; missing slices?)",
            path,
        )
    return step


def read_ct_series(slices: Sequence[DicomFile]) -> tuple[np.ndarray, VolumeGeometry, list[Dataset]]:
    """Read a CT series: ((rows, cols, slices) float32 HU, geometry, headers sorted like the slices)."""
    first = slices[0]
    row_dir, col_dir, normal, pixel_spacing = _plane_axes(first.ds, first.path)
    shape2d = (int(first.ds.Rows), int(first.ds.Columns))
    positions, origins = [], []
    for f in slices:
        r, c, _, s = _plane_axes(f.ds, f.path)
        if not (np.allclose(r, row_dir, atol=1e-4) and np.allclose(c, col_dir, atol=1e-4)):
            raise MddoseError("CT slice orientation differs from the rest of the series", f.path)
        if (int(f.ds.Rows), int(f.ds.Columns)) != shape2d or not np.allclose(s, pixel_spacing, rtol=1e-4):
            raise MddoseError("CT slice size or pixel spacing differs from the rest of the series", f.path)
        ipp = _floats(f.ds.ImagePositionPatient, 3, "ImagePositionPatient", f.path)
        origins.append(ipp)
        positions.append(float(ipp @ normal))
    order = np.argsort(positions, kind="stable")
    positions_sorted = np.asarray(positions)[order]
    sorted_files = [slices[i] for i in order]
    where = sorted_files[0].path.parent
    step = _uniform_step(positions_sorted, "CT series", where)
    if step == 0.0:
        step = float(first.ds.get("SliceThickness", 0) or 1.0)
    origin = origins[order[0]]
    for i, f in zip(order, sorted_files):
        offset = origins[i] - origin
        if np.linalg.norm(offset - (offset @ normal) * normal) > 0.1 * float(pixel_spacing.min()):
            raise MddoseError("CT slices are sheared (gantry tilt); resample the CT to axial slices first", f.path)
    ct = np.empty(shape2d + (len(sorted_files),), dtype=np.float32)
    for k, f in enumerate(sorted_files):
        try:
            ds = pydicom.dcmread(f.path, force=True)
            pixels = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - codecs raise many types
            raise MddoseError(f"cannot read CT pixel data ({type(e).__name__}: {e})", f.path) from None
        if pixels.shape != shape2d:
            raise MddoseError(f"CT pixel data has shape {pixels.shape}, header says {shape2d}", f.path)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        ct[:, :, k] = pixels.astype(np.float32) * slope + intercept
    direction = np.column_stack([col_dir, row_dir, normal])  # array axes: rows, columns, slices
    spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]), step)
    geometry = VolumeGeometry(ct.shape, spacing, tuple(origin), direction)
    return ct, geometry, [f.ds for f in sorted_files]


_CONTOUR_DATA = 0x30060050


def _contour_data(contour: Dataset) -> np.ndarray:
    """ContourData as floats; parsed from the raw bytes when pydicom has not converted them yet (much faster than
    pydicom's per-value DS objects on large structure sets: docs/measurements.md)."""
    raw = contour.get_item(_CONTOUR_DATA)
    if raw is None:
        raise KeyError("ContourData")
    if isinstance(raw.value, bytes):
        return np.array(raw.value.split(b"\\"), dtype=float) if raw.value.strip() else np.zeros(0)
    return np.asarray([float(v) for v in contour.ContourData], dtype=float)


def read_rtstruct(ds: Dataset, path: Path | None = None) -> list[RoiContours]:
    """The ROIs of a structure set with their closed planar contours (POINT and OPEN_PLANAR skipped)."""
    where = path or "RTSTRUCT"
    names = {
        int(r.ROINumber): str(r.get("ROIName", f"ROI{r.ROINumber}")) for r in ds.get("StructureSetROISequence", [])
    }
    types = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
        for o in ds.get("RTROIObservationsSequence", [])
        if "ReferencedROINumber" in o
    }
    rois = []
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        name = names.get(number, f"ROI{number}")
        contours, points = [], 0
        for c in item.get("ContourSequence", []):
            kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            points += kind == "POINT"
            if kind != "CLOSED_PLANAR":
                log.debug("%s: ROI %s: %s contour skipped", where, name, kind)
                continue
            try:
                points = _contour_data(c)
            except (KeyError, AttributeError, TypeError, ValueError):
                raise MddoseError(f"ROI '{name}': contour without valid ContourData", where) from None
            if points.size % 3 or not np.all(np.isfinite(points)):
                raise MddoseError(f"ROI '{name}': ContourData is not a list of x, y, z triplets", where)
            if points.size < 9:
                log.debug("%s: ROI %s: contour with fewer than 3 points skipped", where, name)
                continue
            contours.append(points.reshape(-1, 3))
        rois.append(RoiContours(number, name, types.get(number, ""), contours, points))
    return rois


@dataclass
class RtDose:
    """An RTDOSE grid: ``dose[r, c, f]`` (DoseGridScaling × pixel data) in ``units`` on ``geometry``."""

    dose: np.ndarray
    geometry: VolumeGeometry
    units: str
    scaling: float
    summation: str
    frame_of_reference_uid: str


def read_rtdose(path: str | Path) -> RtDose:
    """Read an RTDOSE file: frames sorted along the normal; GridFrameOffsetVector relative or absolute (z)."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True)
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as e:  # noqa: BLE001
        raise MddoseError(f"cannot read RTDOSE ({type(e).__name__}: {e})", path) from None
    row_dir, col_dir, normal, pixel_spacing = _plane_axes(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns))
    ipp = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)
    if "GridFrameOffsetVector" in ds and ds.GridFrameOffsetVector is not None:
        raw = ds.GridFrameOffsetVector
        raw = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
        if len(raw) < frames:
            raise MddoseError(f"GridFrameOffsetVector has {len(raw)} values for {frames} frames", path)
        offsets = _floats(raw[:frames], frames, "GridFrameOffsetVector", path)  # extra values: ignored
    elif frames == 1:
        offsets = np.zeros(1)
    else:
        raise MddoseError("multi-frame RTDOSE without GridFrameOffsetVector", path)
    if offsets[0] != 0.0:  # absolute z positions (allowed for axial grids): make them relative
        offsets = offsets - float(ipp @ normal)
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    step = _uniform_step(offsets, "RTDOSE frames", path) or float(ds.get("SliceThickness", 0) or 1.0)
    scaling = float(ds.get("DoseGridScaling", 1.0) or 1.0)
    dose = np.ascontiguousarray(np.transpose(pixels[order], (1, 2, 0)) * scaling, dtype=np.float32)
    origin = ipp + offsets[0] * normal
    direction = np.column_stack([col_dir, row_dir, normal])
    spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]), step)
    geometry = VolumeGeometry(dose.shape, spacing, tuple(origin), direction)
    return RtDose(
        dose=dose,
        geometry=geometry,
        units=str(ds.get("DoseUnits", "")).upper(),
        scaling=scaling,
        summation=str(ds.get("DoseSummationType", "")).upper(),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
    )


def read_rtdose_gy(path: str | Path) -> RtDose:
    """:func:`read_rtdose`, refusing a dose that is not absolute (DoseUnits other than GY)."""
    dose = read_rtdose(path)
    if dose.units != "GY":
        raise MddoseError(f"DoseUnits is '{dose.units}', not GY: an absolute dose in Gy is needed", path)
    return dose
