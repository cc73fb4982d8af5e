"""Find, in a folder of DICOM files, the CT series and the RT objects that belong to it.

Rules (each failure is one :class:`~mddose.errors.MddoseError` line naming the file):

* every file under the folder (recursively; hidden files and ``DICOMDIR`` aside) must be DICOM;
* all files must carry the same PatientID ("mixed patients" otherwise);
* there must be a CT series; with several, the one an RTSTRUCT references is taken;
* the RTSTRUCT must reference that CT (its Frame of Reference and, when given, its series UID); several
  RTSTRUCTs for one CT are ambiguous, so the user keeps one;
* RTDOSEs on the CT's Frame of Reference are candidates; a plan sum (DoseSummationType PLAN) is preferred;
  RTDOSEs on another Frame of Reference are ignored with a warning, and so are doses ``export-dicom`` wrote
  as predictions (:func:`is_predicted_dose`): a prediction is never taken for the plan's dose;
* an RTPLAN on the CT's Frame of Reference is noted, so an exported dose can reference it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mddose.errors import MddoseError

log = logging.getLogger(__name__)

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
#: SeriesDescription of the RTDOSEs ``export-dicom`` writes for a predicted dose.
PREDICTED_DOSE_DESCRIPTION = "MD-Dose predicted dose"


def is_predicted_dose(ds: Dataset) -> bool:
    """Whether an RTDOSE is a dose mddose predicted (not a dose a planning system calculated for a plan)."""
    return (str(ds.get("Manufacturer", "")) == "mddose"
            and str(ds.get("SeriesDescription", "")) == PREDICTED_DOSE_DESCRIPTION)


@dataclass
class DicomFile:
    """One DICOM file's header (no pixel data)."""

    path: Path
    ds: Dataset

    @property
    def kind(self) -> str:
        sop = str(self.ds.get("SOPClassUID", ""))
        modality = str(self.ds.get("Modality", "")).upper()
        if sop == ENHANCED_CT_STORAGE:
            return "ENHANCED_CT"
        if sop == CT_STORAGE or (modality == "CT" and not sop):
            return "CT"
        by_sop = {RTSTRUCT_STORAGE: "RTSTRUCT", RTDOSE_STORAGE: "RTDOSE", RTPLAN_STORAGE: "RTPLAN"}
        return by_sop.get(sop, modality or "OTHER")


@dataclass
class DicomStudy:
    """What :func:`scan_dicom_dir` found for one patient."""

    folder: Path
    patient_id: str
    ct: list[DicomFile]  # the slices of the chosen CT series, unsorted
    rtstruct: DicomFile | None
    rtdose: DicomFile | None
    rtplan: DicomFile | None
    ignored: list[Path] = field(default_factory=list)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.ct[0].ds.FrameOfReferenceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.ct[0].ds.SeriesInstanceUID)


def read_header(path: Path) -> Dataset:
    """Read a DICOM header without pixel data; a file without the 'DICM' preamble is accepted when it parses
    as a dataset with a SOP Class UID (older RT exports). Anything else is an :class:`MddoseError`."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise MddoseError(f"cannot read DICOM file ({type(e).__name__}: {e})", path) from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" in ds and "Modality" in ds:
            return ds
    except Exception:  # noqa: BLE001
        pass
    raise MddoseError("not a DICOM file; the folder must hold only DICOM files (move this one out)", path)


def _files(folder: Path) -> list[Path]:
    paths = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        paths.append(path)
    return paths


def _referenced(rtstruct: Dataset) -> tuple[set[str], set[str]]:
    """Frame of Reference UIDs and series UIDs an RTSTRUCT references."""
    frames, series = set(), set()
    for ref in rtstruct.get("ReferencedFrameOfReferenceSequence", []):
        if "FrameOfReferenceUID" in ref:
            frames.add(str(ref.FrameOfReferenceUID))
        for study in ref.get("RTReferencedStudySequence", []):
            for s in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in s:
                    series.add(str(s.SeriesInstanceUID))
    for roi in rtstruct.get("StructureSetROISequence", []):
        if "ReferencedFrameOfReferenceUID" in roi:
            frames.add(str(roi.ReferencedFrameOfReferenceUID))
    return frames, series


def _matches(rtstruct: Dataset, ct: list[DicomFile]) -> bool:
    frames, series = _referenced(rtstruct)
    ds = ct[0].ds
    return str(ds.get("FrameOfReferenceUID", "")) in frames and (not series or str(ds.SeriesInstanceUID) in series)


def scan_dicom_dir(folder: str | Path, require_rtstruct: bool = True) -> DicomStudy:
    """Classify the files of ``folder`` and pick the CT series, its RTSTRUCT, RTDOSE and RTPLAN."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MddoseError("DICOM folder does not exist", folder)
    files = [f for f in (DicomFile(p, read_header(p)) for p in _files(folder))
             if str(f.ds.get("SOPClassUID", "")) != MEDIA_DIRECTORY_STORAGE]
    if not files:
        raise MddoseError("no DICOM files in folder", folder)
    patient_id = _one_patient(files)
    by_kind: dict[str, list[DicomFile]] = defaultdict(list)
    for f in files:
        by_kind[f.kind].append(f)
    series = _ct_series(by_kind, folder)
    rtstruct, ct = _pick_rtstruct(by_kind.get("RTSTRUCT", []), series, require_rtstruct, folder)
    frame = str(ct[0].ds.FrameOfReferenceUID)
    plans = [f for f in by_kind.get("RTPLAN", []) if str(f.ds.get("FrameOfReferenceUID", "")) == frame]
    ignored = [f.path for k, fs in by_kind.items() if k not in ("CT", "RTSTRUCT", "RTDOSE", "RTPLAN") for f in fs]
    return DicomStudy(
        folder=folder,
        patient_id=patient_id,
        ct=ct,
        rtstruct=rtstruct,
        rtdose=_pick_rtdose(by_kind.get("RTDOSE", []), frame, folder),
        rtplan=plans[0] if len(plans) == 1 else None,
        ignored=ignored,
    )


def _one_patient(files: list[DicomFile]) -> str:
    """The PatientID all files share (one patient per folder)."""
    first = files[0]
    patient_id = str(first.ds.get("PatientID", ""))
    for f in files:
        if str(f.ds.get("PatientID", "")) != patient_id:
            got = f.ds.get("PatientID", "")
            raise MddoseError(
                f"mixed patients: PatientID '{got}' here but '{patient_id}' in {first.path.name}; "
                "import one patient per folder", f.path,
            )
    return patient_id


def _ct_series(by_kind: dict[str, list[DicomFile]], folder: Path) -> dict[str, list[DicomFile]]:
    """The folder's single-slice CT series by Series Instance UID, each slice with a Frame of Reference."""
    if by_kind.get("ENHANCED_CT") and not by_kind.get("CT"):
        raise MddoseError("only an Enhanced CT (multi-frame) series found; export the CT as single slices", folder)
    series: dict[str, list[DicomFile]] = defaultdict(list)
    for f in by_kind.get("CT", []):
        series[str(f.ds.get("SeriesInstanceUID", ""))].append(f)
    if not series:
        kinds = ", ".join(sorted(by_kind)) or "none"
        raise MddoseError(f"no CT series in folder (found: {kinds})", folder)
    for slices in series.values():
        bad = next((s for s in slices if "FrameOfReferenceUID" not in s.ds), None)
        if bad is not None:
            raise MddoseError("CT slice has no FrameOfReferenceUID", bad.path)
    return series


def _pick_rtstruct(rtstructs: list[DicomFile], series: dict[str, list[DicomFile]], required: bool,
                   folder: Path) -> tuple[DicomFile | None, list[DicomFile]]:
    """The one RTSTRUCT that references a CT series of the folder, and that series."""
    matching = [(rs, ct) for rs in rtstructs for ct in series.values() if _matches(rs.ds, ct)]
    if rtstructs and not matching:
        frames, refs = _referenced(rtstructs[0].ds)
        here = ", ".join(sorted(series))
        raise MddoseError(
            f"RTSTRUCT is for another CT: it references series {', '.join(sorted(refs)) or '?'} (frame of "
            f"reference {', '.join(sorted(frames)) or '?'}) but the folder's CT series is {here}", rtstructs[0].path,
        )
    if len(matching) > 1:
        names = ", ".join(rs.path.name for rs, _ in matching)
        raise MddoseError(f"several RTSTRUCTs reference the CT ({names}); keep one in the folder", folder)
    if matching:
        rtstruct, ct = matching[0]
    elif required:
        raise MddoseError("no RTSTRUCT in folder (the contours are needed)", folder)
    elif len(series) > 1:
        raise MddoseError(f"{len(series)} CT series in folder and no RTSTRUCT to choose one; keep one", folder)
    else:
        rtstruct, ct = None, next(iter(series.values()))
    if len(series) > 1:
        log.info("%d CT series in %s: using %s, the one the RTSTRUCT references", len(series), folder,
                 ct[0].ds.SeriesInstanceUID)
    return rtstruct, ct


def _pick_rtdose(doses: list[DicomFile], frame: str, folder: Path) -> DicomFile | None:
    """The RTDOSE on the CT's frame (a plan sum where there are several), or None; predicted doses aside."""
    on_frame = []
    for f in doses:
        if is_predicted_dose(f.ds):
            log.warning("%s: a dose MD-Dose predicted, not a plan's: ignored", f.path)
        elif str(f.ds.get("FrameOfReferenceUID", "")) == frame:
            on_frame.append(f)
        else:
            log.warning("%s: RTDOSE on another Frame of Reference than the CT: ignored", f.path)
    plan_sums = [f for f in on_frame if str(f.ds.get("DoseSummationType", "")).upper() == "PLAN"]
    candidates = plan_sums or on_frame
    if len(candidates) > 1:
        names = ", ".join(f.path.name for f in candidates)
        raise MddoseError(f"several RTDOSE files for the CT ({names}); keep one (a plan sum) in the folder", folder)
    return candidates[0] if candidates else None


def find_ct_series(folder: str | Path, series_uid: str) -> tuple[list[DicomFile], list[DicomFile]]:
    """The slices of CT series ``series_uid`` in ``folder``, and every DICOM file of the folder (headers).
    A non-DICOM file is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MddoseError("DICOM folder does not exist", folder)
    files = [DicomFile(p, read_header(p)) for p in _files(folder)]
    ct = [f for f in files if f.kind == "CT" and str(f.ds.get("SeriesInstanceUID", "")) == series_uid]
    if not ct:
        found = sorted({str(f.ds.get("SeriesInstanceUID", "")) for f in files if f.kind == "CT"})
        raise MddoseError(
            f"the CT series the patient was imported from ({series_uid}) is not in this folder "
            f"(CT series here: {', '.join(found) or 'none'})", folder,
        )
    return ct, files


def find_sop_instance(folder: str | Path, sop_uid: str) -> Path | None:
    """The file of ``folder`` (recursively) whose SOP Instance UID is ``sop_uid``, or None."""
    for path in _files(Path(folder)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
        except Exception:  # noqa: BLE001 - anything unreadable is not the file looked for
            continue
        if str(ds.get("SOPInstanceUID", "")) == sop_uid:
            return path
    return None
