"""Clinical I/O: DICOM RT (CT series, RTSTRUCT, RTDOSE) and NIfTI in and out.

Orientation
-----------
Our arrays are (X, Y, Z) with the last axis axial, as OpenKBP. Measured on the real training patients
(``train-pats``; ROI centroids of pt_1..pt_6): Mandible at axis-0 index 46-48, SpinalCord 64-82, so axis 0
runs anterior → posterior; RightParotid at axis-1 index 40-51, LeftParotid 76-80, so axis 1 runs from the
patient's right to left; Brainstem at axis-2 index ≈ 17-43, Larynx ≈ 71-91, so axis 2 runs superior →
inferior. Hence ``array[:, :, k]`` is an axial image in the usual radiological view (rows = DICOM rows of
a head-first-supine CT, columns = DICOM columns) and ``k`` counts slices from the head down. In DICOM
patient coordinates (LPS) the model grid's axes are +y, +x and −z (:data:`~mddose.io.geometry.MODEL_DIRECTION`);
since LPS follows the patient, CTs scanned feet first or prone land in the same orientation.

Modules
-------
* :mod:`~mddose.io.geometry` — grids in patient coordinates, the model grid, resampling (scipy.ndimage).
* :mod:`~mddose.io.dicom_scan` — find the CT series, its RTSTRUCT, RTDOSE and RTPLAN in a folder.
* :mod:`~mddose.io.dicom_read` — read them into arrays; :mod:`~mddose.io.rasterise` — contours ↔ masks.
* :mod:`~mddose.io.roi_map` — clinical ROI names → model ROI names.
* :mod:`~mddose.io.dicom_import` — ``import-dicom``; :mod:`~mddose.io.dicom_export` — ``export-dicom``.
* :mod:`~mddose.io.dicom_write` — write CT/RTSTRUCT/RTDOSE (e.g. a phantom as a clinic's DICOM).
* :mod:`~mddose.io.nifti` — NIfTI volumes and patients.
"""

from mddose.io.dicom_export import export_dose_dicom, load_sidecar
from mddose.io.dicom_import import SIDECAR, ImportResult, import_dicom
from mddose.io.dicom_read import read_ct_series, read_rtdose, read_rtstruct
from mddose.io.dicom_write import export_patient_dicom
from mddose.io.geometry import ModelGrid, VolumeGeometry
from mddose.io.nifti import export_nifti, load_volume, read_patient_nifti, save_volume, write_patient_nifti
from mddose.io.roi_map import load_roi_map, map_roi_names

__all__ = [
    "SIDECAR",
    "ImportResult",
    "ModelGrid",
    "VolumeGeometry",
    "export_dose_dicom",
    "export_nifti",
    "export_patient_dicom",
    "import_dicom",
    "load_roi_map",
    "load_sidecar",
    "load_volume",
    "map_roi_names",
    "read_ct_series",
    "read_patient_nifti",
    "read_rtdose",
    "read_rtstruct",
    "save_volume",
    "write_patient_nifti",
]
