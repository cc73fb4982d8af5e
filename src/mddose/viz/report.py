"""``mddose report SOURCE``: one self-contained HTML page for a training run, an evaluation or a demo.

``SOURCE`` is any of:

* an **evaluation folder** (``mddose evaluate``: ``summary.json``): the score table of every method, per-ROI
  errors, per-patient scores and, for a few patients (best, median and worst of the evaluation's reference
  method by default: the one its t-tests compare with, the first unless ``--against`` named another), axial
  slices of reference, prediction, error and uncertainty (:mod:`mddose.viz.report_figures`) and DVHs.
  When that method's predictions were made by ``mddose predict``, its ``prediction.json`` leads to the
  training run, whose loss curve and configuration are added;
* a **training run** (``mddose train``: ``config.json`` + ``history.json``): loss curve, validation scores,
  configuration and run time;
* a **demo folder** (``mddose demo``: ``demo.json``): its evaluation and run, plus the demo's plan and timing.

Output: ``OUT_DIR/report.html`` with every image embedded (one file to keep or mail) and the same images as
PNGs in ``OUT_DIR/figures/`` (for slides and papers); written atomically as one folder. Default ``OUT_DIR``:
``SOURCE/report``; an earlier report there is replaced only with ``overwrite``, and a folder holding anything
else, or the files the report reads, is refused (:func:`mddose.ownership.claim`). Sections are built from what
the source holds; nothing is recomputed but the figures.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from mddose import __version__
from mddose.atomic import write_text
from mddose.ownership import claim
from mddose.viz import report_sections as sections
from mddose.viz.report_data import ReportSources, find_sources, pick_patients, read_rows
from mddose.viz.report_html import page

log = logging.getLogger(__name__)


def build_report(
    source: str | Path,
    out_dir: str | Path | None = None,
    patients: int = 3,
    patient_ids: list[str] | None = None,
    method: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``report.html`` (+ ``figures/*.png``) for an evaluation, run or demo folder; returns the HTML path.

    ``patients``: how many patients get figures (chosen from best to worst dose score); ``patient_ids``
    names them instead. ``method``: the method the patient figures show (default: the evaluation's reference
    method, the one its t-tests compare with).
    """
    found = find_sources(source, method)
    out_dir = Path(out_dir) if out_dir is not None else found.source / "report"
    title = {"demo": "mddose demo report", "evaluation": "mddose evaluation report",
             "run": "mddose training report"}[found.kind]
    nav: list[tuple[str, str]] = []
    parts: list[str] = []
    with claim(out_dir, "mddose report", _inputs(found), overwrite=overwrite, whole=True) as tmp:
        figures = tmp / "figures"
        figures.mkdir()
        if found.summary is not None:
            rows = read_rows(found.eval_dir / "per_patient.csv")
            roi_rows = read_rows(found.eval_dir / "per_roi.csv")
            chosen = ([(pid, "chosen") for pid in patient_ids] if patient_ids
                      else pick_patients(rows, found.primary, patients))
            parts.append(sections.scores_section(found))
            parts.append(sections.roi_section(found, roi_rows))
            nav += [("scores", "Scores"), ("rois", "Per-ROI errors")]
            if chosen:
                parts.append(sections.patients_section(found, chosen, figures, rows, progress))
                nav.append(("patients", "Patients"))
        if found.config is not None or found.history is not None:
            parts.append(sections.training_section(found, figures))
            nav.append(("training", "Training"))
        parts.append(sections.setup_section(found))
        nav.append(("setup", "Configuration and run time"))
        parts.append(sections.definitions_section())
        nav.append(("metrics", "Metric definitions"))
        created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        subtitle = sections.subtitle(found)
        footer = (f"Made by mddose {__version__} on {created} from <code>{sections.esc(found.source)}</code>. "
                  "Figures are also in <code>figures/</code> beside this file.")
        write_text(tmp / "report.html", page(title, subtitle, nav, "".join(parts), footer))
    log.info("wrote %s", out_dir / "report.html")
    return out_dir / "report.html"


def _inputs(found: ReportSources) -> list[Path | None]:
    """What the report reads: the evaluation's files, the run's, the demo's, the reference and prediction folders."""
    paths: list[Path | None] = [found.source / "demo.json"] if found.kind == "demo" else []
    if found.eval_dir is not None:
        paths += [found.eval_dir / name for name in ("summary.json", "per_patient.csv", "per_roi.csv")]
        summary = found.summary or {}
        paths.append(Path(summary["reference_dir"]) if summary.get("reference_dir") else None)
        paths += [Path(m["prediction_dir"]) for m in summary.get("methods", {}).values() if m.get("prediction_dir")]
    if found.run_dir is not None:
        paths += [found.run_dir / name for name in ("config.json", "history.json")]
    return paths
