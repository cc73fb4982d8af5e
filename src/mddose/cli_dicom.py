"""The DICOM and NIfTI commands, ``mddose import-dicom``, ``mddose export-dicom`` and ``mddose export-nifti``
(registered on the app by :mod:`mddose.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mddose.cli_options import Overwrite

IMPORT_HELP = (
    "Import a CT + RTSTRUCT (+ RTDOSE) onto the model grid as an OpenKBP-layout patient folder.\n\n"
    "The grid (128x128x128 voxels of 3.906x3.906x2.5 mm, OpenKBP's) is centred on the body; along an axis where "
    "the body is longer than the field (e.g. over 320 mm head to feet) it is centred on the targets and the rest "
    "is cropped, with a warning.\n\n"
    "ROI names are matched to the model's ignoring case and punctuation, by common TG-263 names (Parotid_L, ...) "
    "and by PTV dose (PTV_70 -> PTV70); --roi-map adds or overrides names; names left unmapped are listed once "
    "(point ROIs, markers and isocentres, separately: they are not volumes).\n\n"
    "RTDOSE values are read as DoseGridScaling x pixel data, in Gy. dicom_geometry.json in the folder records "
    "where the grid lies in the CT's frame, for export-dicom."
)
EXPORT_HELP = (
    "Write a predicted dose as an RTDOSE on the original CT's Frame of Reference.\n\n"
    "Typical use: mddose export-dicom preds/pt_1.csv dicom/ RD_mddose.dcm --patient-dir pts/pt_1 "
    "(pts/pt_1 made by import-dicom from dicom/).\n\n"
    "Refused: a dose named for another patient than --patient-dir (predict names it pt_N.csv) or lying outside its "
    "possible-dose mask, and an output inside the DICOM folder (it could overwrite an input, and two RTDOSEs there "
    "confuse import-dicom and qa).\n\n"
    "The dose grid is the model grid placed where dicom_geometry.json says (no resampling), cropped to the CT: "
    "16-bit with DoseGridScaling, units GY, type PHYSICAL, a new series, patient and study copied from the CT. A "
    "prediction is labelled 'MD-Dose predicted dose' and references no RT Plan (summation PLAN_OVERVIEW); the "
    "patient folder's own dose is labelled 'Reference dose from the patient folder' with the source RTDOSE's plan "
    "reference."
)


def import_dicom_command(
    dicom_dir: Annotated[Path, typer.Argument(help="One patient's DICOM folder: CT series, RTSTRUCT, optional RTDOSE.")],
    out_dir: Annotated[Path, typer.Argument(help="Patient folder to write; its name is the patient id (e.g. pts/pt_1).")],
    roi_map: Annotated[
        Path | None,
        typer.Option("--roi-map", help="JSON/YAML {clinical ROI name: model ROI name, BODY, null, or {\"roi\": "
                                       "TARGET, \"prescription_gy\": GY}}."),
    ] = None,
    prescription: Annotated[Optional[list[str]], typer.Option(
        "--prescription", help="A target's stated prescription, TARGET=GY (repeat), e.g. PTV70=60: written to "
                               "prescriptions.json.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Import a CT + RTSTRUCT (+ RTDOSE) onto the model grid as an OpenKBP-layout patient folder."""
    from mddose.data.prescriptions import parse_prescription_options
    from mddose.io.dicom_import import import_dicom

    stated = parse_prescription_options(prescription)
    result = import_dicom(dicom_dir, out_dir, roi_map=roi_map, prescriptions=stated, overwrite=overwrite)
    p = result.patient
    dose = "with dose" if p.dose is not None else "no dose"
    typer.echo(f"wrote {out_dir}: {len(p.structures)} ROIs ({', '.join(p.structures) or 'none'}), {dose}")


def export_dicom_command(
    prediction: Annotated[
        Path,
        typer.Argument(help="A patient folder made by import-dicom (its dose.csv is exported), or a dose on its "
                       "grid: pt_N.csv from predict or a .nii.gz (then also give --patient-dir)."),
    ],
    dicom_dir: Annotated[Path, typer.Argument(help="The DICOM folder the patient was imported from.")],
    out_file: Annotated[Path, typer.Argument(help="RTDOSE file to write, e.g. RD_mddose.dcm.")],
    patient_dir: Annotated[
        Path | None,
        typer.Option("--patient-dir", help="The folder import-dicom made for this patient (for a dose file)."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write a predicted dose as an RTDOSE on the original CT's Frame of Reference."""
    from mddose.io.dicom_export import export_dose_dicom

    path = export_dose_dicom(prediction, dicom_dir, out_file, patient_dir=patient_dir, overwrite=overwrite)
    typer.echo(f"wrote {path}")


def export_nifti_command(
    patient_dir: Annotated[Path, typer.Argument(help="An OpenKBP-layout patient folder (e.g. from import-dicom).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write ct/dose/mask .nii.gz files into.")],
    prediction: Annotated[
        Path | None, typer.Option("--prediction", help="A predicted dose pt_N.csv to write as dose.nii.gz.")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write a patient (CT, masks, dose or a prediction) as NIfTI, keeping spacing and orientation."""
    from mddose.io.nifti import export_nifti

    path = export_nifti(patient_dir, out_dir, prediction=prediction, overwrite=overwrite)
    typer.echo(f"wrote {path}")
