"""Folder-level evaluation, behind ``mddose evaluate REFERENCE_DIR PREDICTION_DIR... --out OUT_DIR``.

Inputs: ``REFERENCE_DIR`` is an OpenKBP split (``pt_N/`` folders with ``dose.csv``); each ``PREDICTION_DIR``
holds one method's doses in the OpenKBP submission format, ``pt_N.csv`` (or ``.csv.gz``/``.csv.xz``, or a
folder ``pt_N/dose.csv``), so any external method can be scored. Doses are read in float64, exactly as the
challenge's evaluator reads them; predictions are used as written (not masked again). A reference patient
without a prediction is reported by name and counted, never silently dropped; a prediction whose indices fall
outside the reference grid, or whose dose lies mostly (> 50 %) outside the possible-dose mask, is an error.

Output folder (every file written atomically; ``summary.json`` last)::

    OUT_DIR/
      summary.json      the hand-off for later stages (`mddose report`), schema below
      per_patient.csv   one row per (method, reference patient): status scored|missing and the per-patient
                        scores (columns: PER_PATIENT_COLUMNS)
      per_roi.csv       one row per (method, patient, ROI, metric): reference, prediction, abs_diff
                        (columns: PER_ROI_COLUMNS; group "openkbp" rows are the entries of the DVH score)
      comparison.md     Table-I-style table: mean ± std, * for paired t-test p < 0.05, and the p-values
      figures/          with figures=True: {pid}_dose.png, {pid}_comparison.png (Fig. 3), {pid}_dvh.png (Fig. 4)

``summary.json`` schema (``"schema": "mddose.evaluate/1"``; NaN is written as null)::

    {
      "schema": "mddose.evaluate/1",
      "reference_dir": str, "n_reference_patients": int, "elapsed_s": float,
      "against": str,                                  # method the t-tests compare with
      "gamma": {"computed": bool, "criteria": str, "reason": str | null},
      "files": {"per_patient": "per_patient.csv", "per_roi": "per_roi.csv", "table": "comparison.md",
                "figures": [relative paths]},
      "methods": {
        NAME: {
          "prediction_dir": str,
          "n_patients_scored": int, "n_missing": int, "missing": [patient ids], "unmatched": [file names],
          "openkbp": {"dose_score": float, "dvh_score": float},   # exactly the challenge's numbers
          "paper": {"dose_score": float, "dvh_score": float, "hi_abs_diff": float},
          "gamma_pass_rate": float | null,
          "metrics": {METRIC: {"mean": float, "std": float, "n": int}},       # per-patient statistics
          "ttest": {METRIC: {"p_value": float | null, "n_pairs": int, "significant": bool}}  # not for `against`
        }
      }
    }

METRIC is one of :data:`mddose.evaluate.score.PATIENT_METRICS`. The OpenKBP DVH score pools all
(patient, ROI, metric) entries as the challenge does, so it differs from ``metrics.openkbp_dvh_score.mean``
(the mean of per-patient means, used for the table and the t-test).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mddose.atomic import atomic_dir, check_finished, write_json, write_text
from mddose.data.openkbp import (
    SUFFIXES,
    check_dose_range,
    check_on_grid,
    find_file,
    list_patients,
    read_patient,
    read_sparse_csv,
)
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.evaluate.clinical import GAMMA_CRITERIA, gamma_unavailable_reason
from mddose.evaluate.compare import comparison_markdown, mean_std, ttests
from mddose.evaluate.challenge import dvh_score
from mddose.evaluate.score import PATIENT_METRICS, PatientResult, dose_metrics, score_patient
from mddose.ownership import claim

log = logging.getLogger(__name__)

#: Draws one patient's figures into a folder and returns their paths: (folder, patient, reference, predictions).
FigureDrawer = Callable[[Path, Patient, np.ndarray, dict[str, np.ndarray]], list[Path]]

SCHEMA = "mddose.evaluate/1"
PER_PATIENT_COLUMNS = (
    "method", "patient_id", "status", "openkbp_dose_score", "openkbp_dvh_score", "n_dvh_metrics",
    "paper_dose_score", "paper_dvh_score", "hi_target", "hi_reference", "hi_prediction", "hi_abs_diff",
    "gamma_pass_rate",
)
PER_ROI_COLUMNS = (
    "method", "patient_id", "roi", "kind", "headline_target", "group", "metric", "unit", "reference",
    "prediction", "abs_diff",
)


@dataclass
class Method:
    """One prediction folder and the prediction file found for each reference patient."""

    name: str
    folder: Path
    files: dict[str, Path]  # patient id -> prediction file
    missing: list[str]
    unmatched: list[str]


def find_prediction(folder: Path, patient_id: str) -> Path | None:
    """``pt_N.csv[.gz|.xz]`` in ``folder``, else ``pt_N/dose.csv[.gz|.xz]``, else None."""
    return find_file(folder, patient_id) or find_file(folder / patient_id, "dose")


def _prediction_stem(path: Path) -> str | None:
    if path.is_dir():
        return path.name if find_file(path, "dose") else None
    return next((path.name[: -len(s)] for s in SUFFIXES if path.name.endswith(s)), None)


def index_predictions(name: str, folder: Path, patient_ids: Sequence[str]) -> Method:
    """Match a prediction folder against the reference patients; missing and unmatched ones are listed."""
    if not folder.is_dir():
        raise MddoseError("prediction folder does not exist", folder)
    check_finished(folder)  # an interrupted predict is never scored
    files = {pid: path for pid in patient_ids if (path := find_prediction(folder, pid)) is not None}
    if not files:
        raise MddoseError(f"no prediction for any of the {len(patient_ids)} reference patients "
                          "(expected pt_N.csv in the OpenKBP submission format)", folder)
    known = set(patient_ids)
    unmatched = sorted(p.name for p in folder.iterdir() if (s := _prediction_stem(p)) and s not in known)
    missing = [pid for pid in patient_ids if pid not in files]
    if missing:
        log.warning("%s: no prediction for %d of %d patients: %s", name, len(missing), len(patient_ids),
                    ", ".join(missing))
    if unmatched:
        log.warning("%s: %d predictions match no reference patient (ignored): %s", name, len(unmatched),
                    ", ".join(unmatched))
    return Method(name, folder, files, missing, unmatched)


def read_prediction(path: Path, patient: Patient) -> np.ndarray:
    """A prediction in float64 Gy on the patient's grid; MddoseError when it cannot be on that grid or holds a
    dose no plan has (negative, or above :data:`~mddose.data.openkbp.MAX_DOSE_GY`)."""
    dose = read_sparse_csv(path, patient.shape)  # indices outside the grid raise MddoseError naming the file
    check_dose_range(dose, path)
    check_on_grid(dose, patient.possible_dose_mask, path, "predicted dose")
    return dose


def read_reference(folder: Path, rois: RoiConfig, with_ct: bool = False) -> tuple[Patient, np.ndarray]:
    """A reference patient and its dose in float64 Gy, as the official evaluator reads it.

    Scoring needs the masks, the spacing and the dose, not the CT: the CT file, about half of the reading
    time, is read only when ``with_ct`` (figures); otherwise the returned Patient's CT is air (-1000 HU).
    """
    patient = read_patient(folder, rois, read_ct=with_ct, dose_dtype=np.float64)
    if patient.dose is None:
        raise MddoseError("reference patient has no dose.csv", folder)
    return patient, patient.dose


def evaluate(
    reference_dir: str | Path,
    prediction_dirs: Sequence[str | Path],
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    against: str | None = None,
    figures: FigureDrawer | None = None,
    figure_patients: Sequence[str] | None = None,
    gamma: bool = True,
    rois: RoiConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score prediction folders against a reference split and write the outputs described in the module doc.

    Args:
        reference_dir: OpenKBP split with reference doses.
        prediction_dirs: one folder per method, submission format.
        out_dir: output folder, claimed (:func:`~mddose.ownership.claim`): new or empty, or an earlier
            evaluation replaced with ``overwrite``.
        names: method names, one per folder (default: the folder names).
        against: the method the paired t-tests compare with (default: the first).
        figures: draws the figures of one patient into a folder (e.g. :func:`mddose.viz.figures.evaluation_figures`),
            for ``figure_patients`` (default: every scored patient); None: no figures.
        gamma: compute the 3 %/3 mm gamma pass rate when pymedphys is installed.
        rois: ROI configuration (default: OpenKBP's).
        progress: show a progress bar over patients.
        overwrite: replace an earlier evaluation in ``out_dir``.

    Returns:
        The summary dictionary also written to ``summary.json``.
    """
    start = time.perf_counter()
    reference_dir = Path(reference_dir)
    folders = [Path(p) for p in prediction_dirs]
    names, against = _method_names(folders, names, against)
    patient_folders = list_patients(reference_dir)
    ids = [f.name for f in patient_folders]
    unknown = sorted(set(figure_patients or ()) - set(ids))
    if unknown:
        raise MddoseError(f"figure patients not in the reference split: {', '.join(unknown)}", reference_dir)
    methods = [index_predictions(n, f, ids) for n, f in zip(names, folders)]
    gamma_reason = gamma_unavailable_reason() if gamma else "disabled (--no-gamma)"
    if gamma_reason is not None:
        log.info("gamma pass rate not computed: %s", gamma_reason)
    drawn = set(figure_patients) if figure_patients else set(ids)
    with claim(out_dir, "mddose evaluate", inputs=[reference_dir, *folders], overwrite=overwrite) as out:
        results, figure_files = _score_all(patient_folders, methods, rois or RoiConfig(), gamma_reason is None,
                                           figures, drawn, out, progress)
        summary = _write_outputs(out, reference_dir, ids, methods, results, against, gamma_reason, figure_files,
                                 start)
    log.info("evaluated %d methods on %d reference patients in %.1f s -> %s", len(methods), len(ids),
             summary["elapsed_s"], out_dir)
    return summary


def _method_names(folders: list[Path], names: Sequence[str] | None, against: str | None) -> tuple[list[str], str]:
    """One unique name per prediction folder (default: the folder names) and the t-tests' reference method."""
    names = list(names) if names else [f.name for f in folders]
    if len(names) != len(folders):
        raise MddoseError(f"{len(names)} names given for {len(folders)} prediction folders")
    if len(set(names)) != len(names) or not folders:
        raise MddoseError(f"method names must be unique and at least one: {names} (use --name to set them)")
    against = against or names[0]
    if against not in names:
        raise MddoseError(f"--against {against!r} is not one of the methods {names}")
    return names, against


def _score_all(patient_folders: list[Path], methods: list[Method], rois: RoiConfig, gamma: bool,
               figures: FigureDrawer | None, drawn: set[str], out_dir: Path,
               progress: bool) -> tuple[dict[str, list[PatientResult]], list[str]]:
    """Every method's result on every reference patient it predicted (and the figures drawn on the way)."""
    results: dict[str, list[PatientResult]] = {m.name: [] for m in methods}
    figure_files: list[str] = []
    fig_context = atomic_dir(out_dir / "figures") if figures is not None else contextlib.nullcontext(None)
    with fig_context as fig_dir:
        for folder in tqdm(patient_folders, desc="evaluate", unit="pt", disable=not progress):
            todo = [(m, m.files[folder.name]) for m in methods if folder.name in m.files]
            if not todo:
                continue
            draw = fig_dir is not None and folder.name in drawn
            patient, reference = read_reference(folder, rois, with_ct=draw)
            ref_metrics = dose_metrics(patient, reference)
            predictions = {}
            for method, path in todo:
                predictions[method.name] = read_prediction(path, patient)
                results[method.name].append(score_patient(
                    patient, reference, ref_metrics, predictions[method.name], method.name, gamma=gamma))
            if draw:
                figure_files += [f"figures/{p.name}" for p in figures(fig_dir, patient, reference, predictions)]
    return results, figure_files


def _write_outputs(out_dir: Path, reference_dir: Path, ids: list[str], methods: list[Method],
                   results: dict[str, list[PatientResult]], against: str, gamma_reason: str | None,
                   figure_files: list[str], start: float) -> dict[str, Any]:
    """per_patient.csv, per_roi.csv, comparison.md and, last, summary.json (returned)."""
    per_patient = {m.name: {k: {r.patient_id: r.scores[k] for r in results[m.name]} for k in PATIENT_METRICS}
                   for m in methods}
    notes = [f"Gamma ({GAMMA_CRITERIA}) not computed: {gamma_reason}."] if gamma_reason is not None else []
    notes += [f"{m.name}: no prediction for {len(m.missing)} patient(s): {', '.join(m.missing)}."
              for m in methods if m.missing]
    tests = ttests(per_patient, against, PATIENT_METRICS)
    summary = {
        "schema": SCHEMA,
        "reference_dir": str(reference_dir),
        "n_reference_patients": len(ids),
        "elapsed_s": None,
        "against": against,
        "gamma": {"computed": gamma_reason is None, "criteria": GAMMA_CRITERIA, "reason": gamma_reason},
        "files": {"per_patient": "per_patient.csv", "per_roi": "per_roi.csv", "table": "comparison.md",
                  "figures": figure_files},
        "methods": {m.name: _method_summary(m, results[m.name], per_patient[m.name], tests.get(m.name))
                    for m in methods},
    }
    write_text(out_dir / "per_patient.csv", _csv(PER_PATIENT_COLUMNS, _patient_rows(methods, results, ids)))
    write_text(out_dir / "per_roi.csv", _csv(PER_ROI_COLUMNS, [row for m in methods for r in results[m.name]
                                                               for row in r.roi_rows]))
    write_text(out_dir / "comparison.md", "# Comparison\n\n" + comparison_markdown(per_patient, against,
                                                                                    notes=notes))
    summary["elapsed_s"] = round(time.perf_counter() - start, 3)
    write_json(out_dir / "summary.json", _json_safe(summary))
    return summary


def _method_summary(method: Method, results: list[PatientResult], values: dict[str, dict[str, float]],
                    tests: dict[str, Any] | None) -> dict[str, Any]:
    def mean(key: str) -> float:
        return mean_std(values[key])[0]

    stats = {k: dict(zip(("mean", "std", "n"), mean_std(values[k]))) for k in PATIENT_METRICS}
    return {
        "prediction_dir": str(method.folder),
        "n_patients_scored": len(results),
        "n_missing": len(method.missing),
        "missing": method.missing,
        "unmatched": method.unmatched,
        # The challenge's numbers: mean over patients of the dose score; DVH differences pooled.
        "openkbp": {"dose_score": mean("openkbp_dose_score"), "dvh_score": dvh_score(r.differences for r in results)},
        "paper": {"dose_score": mean("paper_dose_score"), "dvh_score": mean("paper_dvh_score"),
                  "hi_abs_diff": mean("hi_abs_diff")},
        "gamma_pass_rate": mean("gamma_pass_rate"),
        "metrics": stats,
        "ttest": None if tests is None else {
            k: {"p_value": t.p_value, "n_pairs": t.n_pairs, "significant": t.significant} for k, t in tests.items()
        },
    }


def _patient_rows(methods: list[Method], results: dict[str, list[PatientResult]], ids: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        by_id = {r.patient_id: r for r in results[method.name]}
        for pid in ids:
            row: dict[str, Any] = {"method": method.name, "patient_id": pid}
            if pid in by_id:
                row.update(status="scored", **by_id[pid].scores)
                row["hi_target"] = by_id[pid].hi_target
                row["n_dvh_metrics"] = int(row["n_dvh_metrics"])
            else:
                row["status"] = "missing"
            rows.append(row)
    return rows


def _csv(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
