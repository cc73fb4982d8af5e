"""``mddose qa-calibrate``: measure the model's error per ROI and QA metric on validation patients and write the
error table (``qa_errors.json``) QA's tolerances come from, beside the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from mddose.data.openkbp import list_patients, read_dose_csv, read_patient
from mddose.errors import MddoseError
from mddose.ownership import check_output_file, json_with
from mddose.qa.metrics import patient_qa_metrics
from mddose.qa.run import Predictor
from mddose.qa.tolerance import ERROR_TABLE, TABLE_FORMAT, ErrorTable, table_info


def calibrate(predictor: Predictor, val_dir: str | Path, out: str | Path | None = None,
              predictions: str | Path | None = None, progress: bool = True) -> tuple[ErrorTable, Path]:
    """Predicted − plan of every QA metric over the patients of ``val_dir`` → the error table, written to ``out``
    (default: ``qa_errors.json`` beside the predictor's weights).

    ``predictions``: a folder of ``pt_N.csv`` already predicted by this model (``mddose predict``); its
    ``prediction.json`` then says how they were sampled. Without it every patient is predicted here, as
    ``mddose predict`` would with the predictor's settings (the mean of its samples is scored).
    """
    path = Path(out) if out else predictor.weights.parent / ERROR_TABLE
    check_output_file(path, "mddose qa-calibrate", [val_dir, predictions], json_with("format", TABLE_FORMAT),
                      overwrite=True)  # an earlier table is refreshed; any other file is refused
    diffs: dict[str, dict[str, list[float]]] = {}
    folders = list_patients(val_dir)
    for folder in tqdm(folders, desc="qa-calibrate", unit="pt", disable=not progress):
        patient = read_patient(folder, predictor.rois)
        if patient.dose is None:
            raise MddoseError("no dose.csv: calibration needs the plans' doses", folder)
        if predictions is not None:
            found = Path(predictions) / f"{patient.patient_id}.csv"
            if not found.is_file():
                raise MddoseError(f"no prediction for {patient.patient_id}", found)
            mean = read_dose_csv(found, patient.shape)
        else:
            mean = predictor.predict(patient).mean
        structures = {r: patient.structures[r] for r in patient.present_rois()}
        args = (structures, patient.prescriptions, patient.voxel_volume_mm3)
        plan_m, pred_m = patient_qa_metrics(patient.dose, *args), patient_qa_metrics(mean, *args)
        for roi, values in pred_m.items():
            for metric, value in values.items():
                diffs.setdefault(roi, {}).setdefault(metric, []).append(value - plan_m[roi][metric])
    sampling = _sampling(predictor, predictions)
    info = table_info(predictor.weights, len(folders), source=str(val_dir), **sampling)
    table = ErrorTable.from_differences(list(predictor.rois.all), diffs, **info)
    return table, table.save(path)


def _sampling(predictor: Predictor, predictions: str | Path | None) -> dict[str, object]:
    """How the predictions the table was measured on were sampled."""
    keys = ("sampler", "steps", "samples")
    record = Path(predictions) / "prediction.json" if predictions is not None else None
    if record is not None and record.is_file():
        data = json.loads(record.read_text(encoding="utf-8"))
        return {k: data.get(k) for k in keys}
    return {k: predictor.info.get(k) for k in keys}
