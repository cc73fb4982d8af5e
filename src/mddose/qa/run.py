"""``mddose qa``: predict the achievable dose for a patient, compare the clinical plan with it, write the results.

Output folder (written as a whole: an interrupted or failed run leaves nothing; an earlier QA there is replaced
only with ``overwrite``, a folder holding anything else is refused: :func:`mddose.ownership.claim`)::

    OUT_DIR/
      qa.json            everything below, machine-readable (schema: docs/qa.md)
      qa.csv             one row per ROI and metric: plan, predicted, achievable, difference, tolerance, flag
      qa.html            the page: summary, per-ROI table, DVHs, dose and difference washes
      figures/           the page's PNGs
      prediction/        pt_N.csv (mean predicted dose) and pt_N_std.csv (per-voxel spread over the samples): what
                         ``mddose predict`` writes for the same seed and samples (:mod:`mddose.inference.predictor`)
      patient/pt_N/      the patient as imported, when PATIENT_DIR was a DICOM folder
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mddose.atomic import write_json, write_text
from mddose.data.dataset import DataConfig
from mddose.data.prescriptions import check_prescriptions, dose_scale, read_prescriptions
from mddose.data.openkbp import write_dose_csv
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.evaluate.clinical import GAMMA_CRITERIA, GammaResult, gamma_pass_rate
from mddose.inference.scope import read_profile, scope_warnings
from mddose.io.geometry import ModelGrid, VolumeGeometry
from mddose.io.nifti import patient_geometry
from mddose.ownership import claim
from mddose.qa.check import QaResult, QaRow, check_plan
from mddose.qa.inputs import plan_source, read_plan, read_qa_patient
from mddose.qa.tolerance import DEFAULT_Z, ERROR_TABLE, ErrorTable
from mddose.runs.checkpoint import weights_sha256

if TYPE_CHECKING:  # qa reads a prediction; the model behind it is loaded by its caller
    from mddose.inference.slicewise import PatientDose

QA_FORMAT = "mddose-qa/1"
#: Exit status of ``mddose qa --fail-on-flag`` when a ROI is flagged (1 stays "bad input").
FLAGGED_EXIT = 3


class Predictor(Protocol):
    """What QA needs of a model: its ROIs, where its weights are, how it samples, and a patient's predicted dose
    with its K draws. :class:`mddose.inference.predictor.Predictor` is the real one; the tests' phantom predictor
    stands in for it."""

    rois: RoiConfig
    data: DataConfig
    weights: Path

    @property
    def info(self) -> dict[str, Any]: ...

    def predict(self, patient: Patient, keep_draws: bool = False) -> PatientDose: ...


def run_qa(predictor: Predictor, patient_dir: str | Path, plan: str | Path | None, out_dir: str | Path,
           errors: str | Path | None = None, z: float = DEFAULT_Z, gamma: bool = True,
           roi_map: str | Path | None = None, grid: ModelGrid | None = None,
           prescriptions: dict[str, float] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Check one plan; returns what ``qa.json`` holds. ``errors`` defaults to the model's ``qa_errors.json``.
    ``prescriptions``: stated ones (over the patient folder's), which scale the prediction as ``predict`` does.
    ``overwrite``: replace an earlier qa's output in ``out_dir`` (a folder holding anything else is refused)."""
    began = time.perf_counter()
    table_path = Path(errors) if errors else predictor.weights.parent / ERROR_TABLE
    inputs = [predictor.weights.parent, patient_dir, plan, table_path, roi_map]
    with claim(out_dir, "mddose qa", inputs, overwrite=overwrite, whole=True) as tmp:
        return _run(predictor, Path(patient_dir), plan, tmp, Path(out_dir), table_path, z, gamma, roi_map, grid,
                    prescriptions, began)


def _run(predictor: Predictor, patient_dir: Path, plan: str | Path | None, tmp: Path, out_dir: Path,
         table_path: Path, z: float, gamma: bool, roi_map: str | Path | None, grid: ModelGrid | None,
         prescriptions: dict[str, float] | None, began: float) -> dict[str, Any]:
    """The QA itself, written into the temporary folder that becomes ``out_dir``."""
    table = ErrorTable.load(table_path)
    if table.rois != list(predictor.rois.all):
        raise MddoseError(f"the error table is for ROIs {', '.join(table.rois)}, the model has "
                          f"{', '.join(predictor.rois.all)}", table_path)
    warnings = _table_warnings(table, predictor.weights)
    patient, folder = read_qa_patient(patient_dir, predictor.rois, tmp / "patient", Path(roi_map) if roi_map else None,
                                      grid)
    plan_dose = read_plan(Path(plan) if plan else None, patient, folder)
    stated = read_prescriptions(folder, predictor.rois) | check_prescriptions(prescriptions or {}, predictor.rois)
    scale, note = dose_scale(patient.prescriptions, stated)
    warnings += scope_warnings(patient, predictor.data, read_profile(predictor.weights.parent))
    warnings += [note] if note else []
    prediction = predictor.predict(patient, keep_draws=True).scaled(scale)  # K draws: the per-sample spread
    result = check_plan(patient, plan_dose, prediction, table, z, stated)
    g = gamma_pass_rate(result.mean, plan_dose, patient.spacing) if gamma else GammaResult(math.nan, "not asked")
    imported = folder != patient_dir  # a DICOM folder, imported into out_dir/patient/ (here: tmp)
    summary = {
        "format": QA_FORMAT, "patient": patient.patient_id, "patient_dir": str(patient_dir.absolute()),
        "imported_to": str((out_dir / "patient" / folder.name).absolute()) if imported else None,
        "plan": str(plan_source(Path(plan) if plan else None, patient_dir, folder)),
        "model": predictor.info,
        "error_table": {"path": str(table_path.absolute()), **{k: table.info.get(k) for k in ("patients", "date")}},
        "z": z, "dose_scale": scale, "stated_prescriptions": stated, "flagged": result.flagged,
        "gamma": {"criteria": GAMMA_CRITERIA, "pass_rate": _num(g.pass_rate), "reason": g.reason},
        "rows": [r.to_dict() for r in result.rows], "warnings": warnings,
    }
    _write_outputs(tmp, patient, plan_dose, result, summary, patient_geometry(folder))
    summary["seconds"] = round(time.perf_counter() - began, 1)
    write_json(tmp / "qa.json", summary)
    return summary


def _table_warnings(table: ErrorTable, weights: Path) -> list[str]:
    recorded = table.info.get("weights_sha256")
    if recorded and weights.is_file() and recorded != weights_sha256(weights):
        return [f"the error table was measured with other weights than {weights}: refresh it with "
                "`mddose qa-calibrate`"]
    return []


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _write_outputs(tmp: Path, patient: Patient, plan: np.ndarray, result: QaResult, summary: dict[str, Any],
                   geometry: VolumeGeometry | None) -> None:
    from mddose.qa.page import write_page

    pid = patient.patient_id
    write_dose_csv(tmp / "prediction" / f"{pid}.csv", result.mean, patient.possible_dose_mask)
    write_dose_csv(tmp / "prediction" / f"{pid}_std.csv", result.spread, patient.possible_dose_mask)
    write_text(tmp / "qa.csv", rows_csv(result.rows))
    write_page(tmp, patient, plan, result, summary, geometry)


def rows_csv(rows: list[QaRow]) -> str:
    buf = io.StringIO()
    columns = list(rows[0].to_dict()) if rows else []
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else f"{v:.4g}" if isinstance(v, float) else v)
                         for k, v in r.to_dict().items()})
    return buf.getvalue()


def summary_lines(summary: dict[str, Any], out_dir: Path) -> list[str]:
    """The terminal summary: one line per ROI (its flagged metrics spelled out), gamma, where the outputs are."""
    flagged = set(summary["flagged"])
    lines = [f"{summary['patient']}: {len(flagged)} ROI(s) flagged"
             + (f" ({', '.join(summary['flagged'])})" if flagged else "")]
    by_roi: dict[str, list[dict[str, Any]]] = {}
    for r in summary["rows"]:
        by_roi.setdefault(r["roi"], []).append(r)
    for roi, rows in by_roi.items():
        bad = [r for r in rows if r["flag"]]
        shown = bad or rows[:1]
        detail = "; ".join(f"{r['metric']} plan {_fmt(r['plan'])} vs achievable {_fmt(r['achievable'])} "
                           f"(±{_fmt(r['tolerance'])}) {r['unit']}".rstrip() for r in shown)
        lines.append(f"  {'FLAG' if roi in flagged else 'ok  '} {roi:<13} {detail}")
    g = summary["gamma"]
    rate = f"{g['pass_rate']:.1f} %" if g["pass_rate"] is not None else f"not computed ({g['reason']})"
    lines.append(f"gamma {g['criteria']}, plan vs prediction: {rate}")
    lines += [f"WARNING: {w}" for w in summary["warnings"]]
    lines.append(f"wrote {out_dir / 'qa.html'}, qa.json, qa.csv")
    return lines


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
