"""What ``export-dicom`` checks before it writes: that the dose belongs to the patient it is exported for, and that
the RTDOSE goes where it overwrites no input and confuses no later ``import-dicom`` or ``qa``.

Each refusal is one :class:`~mddose.errors.MddoseError` line; nothing is written then.

* **Whose dose.** ``predict`` names its files after the patient folder (``pt_1.csv``,
  ``nifti/pt_1_dose.nii.gz``); a patient folder's own dose is its ``dose.csv``. The id so named must be the
  patient folder's name (or the DICOM PatientID that ``import-dicom`` recorded). A second guard: at most
  :data:`MAX_OUTSIDE_SHARE` of the dose may lie outside the patient's possible-dose mask (a prediction is zero
  outside the mask it was made for, so another patient's prediction shows up there).
* **Where.** The output may not be an input (a file of the DICOM folder, of the patient folder, or the dose
  itself) and may not lie inside the DICOM folder: a second RTDOSE beside the planning system's makes the
  folder ambiguous for a later ``import-dicom`` or ``qa`` (and a name like ``CT_0001.dcm`` overwrites a slice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mddose.data.openkbp import find_file
from mddose.data.patient import RoiConfig
from mddose.errors import MddoseError
from mddose.io.roi_map import target_fix

#: A dose with more of its total than this outside the possible-dose mask was not made for this patient.
MAX_OUTSIDE_SHARE = 0.01
_SUFFIXES = (".csv.gz", ".csv.xz", ".csv", ".nii.gz", ".nii")


def dose_file_patient(path: Path) -> str:
    """The patient id a dose file is named after: ``pt_1.csv`` and ``pt_1_dose.nii.gz`` → ``pt_1``; a patient
    folder's ``dose.csv`` → the folder's name."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name == "dose":
        return path.resolve().parent.name
    return name.removesuffix("_dose")


def check_belongs(prediction: Path, patient_dir: Path, sidecar: dict[str, Any]) -> None:
    """Refuse a dose file named after another patient than ``patient_dir`` (or a spread, not a dose)."""
    if prediction.is_dir():
        return
    stem = prediction.name.split(".")[0]
    if stem.endswith("_std") or prediction.resolve().parent.name == "uncertainty":
        raise MddoseError("this is the spread of a prediction (its per-voxel standard deviation), not a dose; "
                          "export pt_N.csv from the prediction folder instead", prediction)
    own = patient_dir.resolve().name
    named = dose_file_patient(prediction)
    if named not in {own, str(sidecar.get("patient_id") or own)}:
        raise MddoseError(
            f"this dose is named for patient {named}, but --patient-dir {patient_dir} is patient {own}: export "
            f"each patient with its own folders (a renamed file: name it {own}.csv, as predict does)", prediction)


def check_has_target(patient_dir: Path, sidecar: dict[str, Any], rois: RoiConfig | None = None) -> None:
    """No RTDOSE for a patient without a target: its prediction, if any, aimed at nothing."""
    rois = rois or RoiConfig()
    if any(find_file(patient_dir, t) is not None for t in rois.targets):
        return
    unmapped = list(sidecar.get("unmapped_roi_names") or [])
    raise MddoseError(f"no target: none of the model's targets {', '.join(rois.targets)} is in the patient folder; "
                      f"{target_fix(unmapped, rois)} and import it again", patient_dir)


def check_inside_mask(dose: np.ndarray, mask: np.ndarray, prediction: Path, patient_dir: Path) -> None:
    """Refuse a dose with more than :data:`MAX_OUTSIDE_SHARE` of its total outside ``mask``."""
    total = float(np.abs(dose).sum())
    outside = float(np.abs(dose[~mask]).sum())
    if total > 0 and outside > MAX_OUTSIDE_SHARE * total:
        raise MddoseError(
            f"{outside / total:.1%} of this dose lies outside the possible-dose mask of {patient_dir.resolve().name} "
            f"({patient_dir}): it was not predicted for this patient", prediction)


def check_output_place(out_file: Path, dicom_dir: Path) -> None:
    """Refuse an output inside the DICOM folder (an input slice by name, or a second RTDOSE beside the plan's)."""
    out, folder = out_file.resolve(), dicom_dir.resolve()
    if not out.is_relative_to(folder):
        return
    if out.exists():
        raise MddoseError(f"the output is a file of the DICOM folder {dicom_dir} (an input): refusing to write "
                          "over it; write the RTDOSE outside that folder", out_file)
    raise MddoseError(f"the output lies inside the DICOM folder {dicom_dir}: a second RTDOSE beside the planning "
                      "system's makes the folder ambiguous for import-dicom and qa; write it outside that folder",
                      out_file)
