"""The trivial baseline every model must beat: each target filled with its prescription, zero elsewhere.

Where targets overlap the highest prescription wins. It knows nothing of beams, fall-off or organs at risk,
so its OpenKBP dose score is what "predicting nothing but the prescription" costs; ``mddose demo`` and the
experiments quote it beside every model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mddose.data.openkbp import list_patients, read_patient, write_dose_csv
from mddose.data.patient import Patient
from mddose.ownership import filling


def trivial_dose(patient: Patient) -> np.ndarray:
    """(X, Y, Z) float32 Gy: the highest prescription of the targets covering each voxel, inside the mask."""
    dose = np.zeros(patient.shape, np.float32)
    for target, gy in sorted(patient.prescriptions.items(), key=lambda kv: kv[1]):
        dose[patient.structures[target]] = gy
    return dose * patient.possible_dose_mask


def predict_trivial(data_dir: str | Path, out_dir: str | Path, progress: bool = True,
                    overwrite: bool = False) -> list[Path]:
    """Write the trivial baseline of every patient in ``data_dir`` as ``OUT_DIR/pt_N.csv`` (an earlier finished
    baseline there is replaced only with ``overwrite``)."""
    folders, written = list_patients(data_dir), []
    with filling(out_dir, "mddose baseline", inputs=[data_dir], overwrite=overwrite) as out:  # refused by evaluate until every patient is written
        for folder in tqdm(folders, desc="trivial", unit="pt", disable=not progress):
            patient = read_patient(folder, read_ct=False, read_dose=False)  # targets and mask are all it needs
            path = out / f"{patient.patient_id}.csv"
            write_dose_csv(path, trivial_dose(patient), patient.possible_dose_mask)
            written.append(path)
    return written
