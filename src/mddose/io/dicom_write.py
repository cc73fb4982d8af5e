"""Write DICOM: CT slices, an RTSTRUCT and RTDOSEs from our arrays and their :class:`VolumeGeometry`.

:func:`export_patient_dicom` writes a whole :class:`~mddose.data.patient.Patient` (e.g. a phantom) as a CT
series + RTSTRUCT + RTDOSE, the input a clinic would hand to ``import-dicom``; :func:`rtdose_dataset` is
shared with ``export-dicom``.

Layout: ``array[:, :, k]`` is one image; array axis 0 runs down the rows (DICOM's column direction, the
second half of ImageOrientationPatient), axis 1 along a row (the first half). An RTDOSE's frames must run
along the normal (row direction × column direction), so when array axis 2 points the other way (our model
grid: superior → inferior) the frames are written in reverse order; GridFrameOffsetVector then starts at 0
and increases, with ImagePositionPatient at the first frame written.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from mddose import __version__
from mddose.atomic import atomic_dir, atomic_path
from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.io.dicom_import import body_mask
from mddose.io.dicom_scan import CT_STORAGE, RTDOSE_STORAGE, RTSTRUCT_STORAGE
from mddose.io.geometry import VolumeGeometry, default_geometry
from mddose.io.rasterise import mask_to_contours

log = logging.getLogger(__name__)

IDENTITY_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")
#: RTDOSE pixels are 16-bit unsigned, as planning systems write them (and as validators such as dicom3tools'
#: dciodvfy read them): the dose step is max / 65535, about 1 mGy for a 70 Gy plan.
DOSE_MAX_PIXEL = 2**16 - 1


@dataclass(frozen=True)
class DoseLabel:
    """What an RTDOSE says it is: its series description, DoseSummationType, the RT Plans it is the dose of
    (ReferencedRTPlanSequence items; the standard requires one for PLAN, FRACTION, BEAM, ...), a DoseComment
    (≤ 64 characters) and a DerivationDescription (where the values come from)."""

    description: str
    summation: str = "PLAN"
    plan_refs: tuple[Dataset, ...] = ()
    comment: str | None = None
    derivation: str | None = None


def _ds(value: float) -> str:
    """A decimal string (DS, ≤ 16 characters) for ``value``."""
    return format_number_as_ds(float(value))


def identity_from(ds: Dataset) -> dict[str, object]:
    """Patient and study attributes of a dataset, to copy into new objects of the same study."""
    return {tag: ds.get(tag) for tag in IDENTITY_TAGS if tag in ds}


def _base(sop_class: str, modality: str, identity: Mapping[str, object], series_uid: str, frame_uid: str,
          description: str, series_number: int) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.Modality = modality
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "mddose", "mddose", __version__
    ds.SeriesDescription = description
    for tag in _TYPE2:
        setattr(ds, tag, "")
    for tag, value in identity.items():
        setattr(ds, tag, value)
    if "StudyInstanceUID" not in identity:
        ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
    ds.OperatorsName = ""  # type 2 in the RT Series module
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    return ds


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write a dataset as a DICOM file (with preamble and file meta), atomically."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _plane(geometry: VolumeGeometry) -> tuple[list[str], list[str]]:
    """(ImageOrientationPatient, PixelSpacing) of the images ``array[:, :, k]``."""
    d = np.asarray(geometry.direction)
    iop = [_ds(v) for v in np.concatenate([d[:, 1], d[:, 0]])]
    return iop, [_ds(geometry.spacing[0]), _ds(geometry.spacing[1])]


def ct_datasets(ct: np.ndarray, geometry: VolumeGeometry, identity: Mapping[str, object], frame_uid: str
                ) -> list[Dataset]:
    """One CT Image Storage dataset per ``ct[:, :, k]`` (HU, stored as signed 16-bit, rescale 1/0)."""
    series_uid = generate_uid()
    iop, pixel_spacing = _plane(geometry)
    pixels = np.clip(np.rint(ct), -32768, 32767).astype("<i2")
    out = []
    for k in range(ct.shape[2]):
        ds = _base(CT_STORAGE, "CT", identity, series_uid, frame_uid, "mddose CT", 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in geometry.index_to_world(np.array([0.0, 0.0, k]))]
        ds.ImageOrientationPatient, ds.PixelSpacing = iop, pixel_spacing
        ds.SliceThickness = _ds(geometry.spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ct.shape[0], ct.shape[1]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k]).tobytes()
        out.append(ds)
    return out


def rtstruct_dataset(structures: Mapping[str, np.ndarray], geometry: VolumeGeometry, ct: list[Dataset],
                     interpreted: Mapping[str, str] | None = None) -> Dataset:
    """An RTSTRUCT outlining each mask (0.5 level of every axial slice) on the CT series ``ct``."""
    interpreted = interpreted or {}
    first = ct[0]
    frame_uid = str(first.FrameOfReferenceUID)
    ds = _base(RTSTRUCT_STORAGE, "RTSTRUCT", identity_from(first), generate_uid(), frame_uid, "mddose ROIs", 2)
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator  # not part of the structure set modules
    ds.StructureSetLabel, ds.StructureSetName = "mddose", "mddose"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.InstanceNumber = 1

    def image_ref(k: int) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ct[k].SOPClassUID, ct[k].SOPInstanceUID
        return ref

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([image_ref(k) for k in range(len(ct))])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management, as RT systems use
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    rois, contours, observations = [], [], []
    colours = (np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]]))
    for number, (name, mask) in enumerate(structures.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [int(v) for v in colours[(number - 1) % len(colours)]]
        seq = []
        for k, points in mask_to_contours(mask, geometry):
            c = Dataset()
            c.ContourImageSequence = DicomSequence([image_ref(k)])
            c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
            c.ContourData = [_ds(v) for v in points.ravel()]
            seq.append(c)
        item.ContourSequence = DicomSequence(seq)
        contours.append(item)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType = interpreted.get(name, "PTV" if name.upper().startswith("PTV") else "ORGAN")
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    return ds


def _frames_along_normal(dose: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, VolumeGeometry]:
    """``dose`` and its geometry with the frames running along the image normal (reversed if needed)."""
    d = np.asarray(geometry.direction)
    normal = np.cross(d[:, 1], d[:, 0])
    along = float(d[:, 2] @ normal)
    if abs(abs(along) - 1) > 1e-4:
        raise ValueError("the dose grid's third axis must be perpendicular to its image planes")
    if along > 0:
        return dose, geometry
    last = tuple(geometry.index_to_world(np.array([0.0, 0.0, geometry.shape[2] - 1])))
    flipped = VolumeGeometry(geometry.shape, geometry.spacing, last, np.column_stack([d[:, 0], d[:, 1], -d[:, 2]]))
    return dose[:, :, ::-1], flipped


def dose_pixels(dose: np.ndarray) -> tuple[np.ndarray, float]:
    """(16-bit pixels, DoseGridScaling): pixels × scaling is ``dose`` within half a step (max / 65535)."""
    top = max(float(dose.max()), 1e-6)
    scaling = float(_ds(top / DOSE_MAX_PIXEL))
    while np.rint(top / scaling) > DOSE_MAX_PIXEL:  # DS rounding may have made the step too small
        scaling = float(_ds(scaling * (1 + 1e-9)))
    return np.rint(dose / scaling).astype("<u2"), scaling


def rtdose_dataset(dose: np.ndarray, geometry: VolumeGeometry, identity: Mapping[str, object], frame_uid: str,
                   label: DoseLabel | None = None) -> Dataset:
    """An RTDOSE (GY, PHYSICAL) of ``dose`` (Gy, (rows, cols, frames)) on ``geometry``, described by ``label``
    (default: a plan dose with no plan referenced); 16-bit pixels with DoseGridScaling = max / 65535 (as a DS)."""
    label = label or DoseLabel("mddose dose")
    dose = np.clip(np.nan_to_num(np.asarray(dose, dtype=np.float64)), 0.0, None)
    dose, geometry = _frames_along_normal(dose, geometry)
    pixels, scaling = dose_pixels(dose)
    ds = _base(RTDOSE_STORAGE, "RTDOSE", identity, generate_uid(), frame_uid, label.description, 900)
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [_ds(v) for v in geometry.origin]
    ds.ImageOrientationPatient, ds.PixelSpacing = _plane(geometry)
    ds.SliceThickness = _ds(geometry.spacing[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = dose.shape[0], dose.shape[1], dose.shape[2]
    ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
    ds.GridFrameOffsetVector = [_ds(k * geometry.spacing[2]) for k in range(dose.shape[2])]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", label.summation
    ds.DoseGridScaling = _ds(scaling)
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if label.comment:
        ds.DoseComment = label.comment[:64]
    if label.derivation:
        ds.DerivationDescription = label.derivation
    if label.plan_refs:
        ds.ReferencedRTPlanSequence = DicomSequence(list(label.plan_refs))
    ds.PixelData = np.ascontiguousarray(np.transpose(pixels, (2, 0, 1))).tobytes()  # (frames, rows, cols)
    return ds


def export_patient_dicom(patient: Patient, out_dir: str | Path, geometry: VolumeGeometry | None = None,
                         patient_name: str | None = None, body: bool = True) -> Path:
    """Write ``patient`` as DICOM into the folder ``out_dir`` (new, or one this function wrote).

    Files: ``CT_<k>.dcm`` slices, ``RS.dcm`` (the structures, plus an EXTERNAL ``BODY`` outline when ``body``)
    and, with a dose, ``RD.dcm`` covering the possible-dose mask's bounding box (as a plan's dose grid covers
    the treated region, not the whole CT).

    Args:
        geometry: where the arrays lie in patient coordinates; default :func:`default_geometry`.
        patient_name: DICOM PatientName; default the patient id.
    """
    geometry = geometry or default_geometry(patient.shape, patient.spacing)
    if geometry.shape != patient.shape:
        raise ValueError(f"geometry shape {geometry.shape} differs from the patient's {patient.shape}")
    identity = {"PatientName": patient_name or patient.patient_id, "PatientID": patient.patient_id,
                "StudyInstanceUID": generate_uid(), "StudyID": "1"}
    frame_uid = generate_uid()
    cts = ct_datasets(patient.ct, geometry, identity, frame_uid)
    structures = dict(patient.structures)
    interpreted = {}
    if body:
        structures["BODY"], interpreted["BODY"] = body_mask(patient.ct), "EXTERNAL"
    rs = rtstruct_dataset(structures, geometry, cts, interpreted)
    out_dir = Path(out_dir)
    ours = out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / "RS.dcm").is_file())
    if out_dir.exists() and not ours:
        raise MddoseError("output exists and is not a folder this writer made; choose a new folder", out_dir)
    with atomic_dir(out_dir) as tmp:
        for k, ds in enumerate(cts):
            save_dataset(ds, tmp / f"CT_{k + 1:04d}.dcm")
        save_dataset(rs, tmp / "RS.dcm")
        if patient.dose is not None:
            mask = patient.possible_dose_mask if patient.possible_dose_mask.any() else patient.dose > 0
            axes = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
            lo = np.array([a[0] if len(a) else 0 for a in axes])
            hi = np.array([a[-1] + 1 if len(a) else n for a, n in zip(axes, patient.shape)])
            dose = patient.dose[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            rd = rtdose_dataset(dose, geometry.crop(lo, hi), identity_from(cts[0]), frame_uid)
            save_dataset(rd, tmp / "RD.dcm")
    log.info("wrote %s as DICOM (%d CT slices, %d ROIs) to %s", patient.patient_id, len(cts), len(structures),
             out_dir)
    return out_dir
