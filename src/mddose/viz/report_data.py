"""What a report is made of: the sources found from the one folder the user names (evaluation, run or demo),
their JSON and CSV files read, the patients chosen for figures and the per-ROI errors grouped. The report's
data model, below both the page's orchestration (:mod:`.report`) and its sections (:mod:`.report_sections`).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mddose.atomic import read_json_object
from mddose.data.openkbp import natural_key
from mddose.errors import MddoseError
from mddose.runs.layout import RunFolder

EVAL_SCHEMA = "mddose.evaluate/1"


@dataclass
class ReportSources:
    """Everything the report reads, found from the one folder the user names."""

    source: Path
    kind: str  # "evaluation", "run" or "demo"
    eval_dir: Path | None = None
    summary: dict[str, Any] | None = None
    primary: str | None = None  # the method the patient figures show
    run_dir: Path | None = None
    config: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None  # prediction.json of the primary method
    demo: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def find_sources(source: str | Path, method: str | None = None) -> ReportSources:
    """Recognise ``source`` (evaluation, run or demo folder) and gather what belongs to it."""
    source = Path(source)
    if not source.is_dir():
        raise MddoseError("report source folder does not exist", source)
    if (source / "demo.json").is_file():
        found = ReportSources(source, "demo", demo=read_json_object(source / "demo.json"))
        eval_dir, run_dir = source / "evaluation", source / "run"
    elif (source / "summary.json").is_file():
        found, eval_dir, run_dir = ReportSources(source, "evaluation"), source, None
    elif RunFolder(source).is_run():
        found, eval_dir, run_dir = ReportSources(source, "run"), None, source
    else:
        raise MddoseError("neither an evaluation (summary.json), a training run (config.json + history.json) "
                          "nor a demo folder (demo.json)", source)
    if eval_dir is not None and (eval_dir / "summary.json").is_file():
        summary = read_json_object(eval_dir / "summary.json")
        if summary.get("schema") != EVAL_SCHEMA or not isinstance(summary.get("methods"), dict):
            raise MddoseError(f"not an mddose evaluation summary (expected schema {EVAL_SCHEMA})",
                              eval_dir / "summary.json")
        found.eval_dir, found.summary = eval_dir, summary
        names = list(summary["methods"])
        if method is not None and method not in names:
            raise MddoseError(f"no method {method!r} in the evaluation (it has {', '.join(names)})",
                              eval_dir / "summary.json")
        against = summary.get("against")
        found.primary = method or (against if against in names else names[0] if names else None)
        if found.primary is not None:
            pred_dir = Path(summary["methods"][found.primary]["prediction_dir"])
            if (pred_dir / "prediction.json").is_file():
                found.prediction = read_json_object(pred_dir / "prediction.json")
                if run_dir is None and found.prediction.get("checkpoint"):
                    run = RunFolder.of_checkpoint(Path(found.prediction["checkpoint"]))
                    run_dir = run.root if run is not None else None
    if run_dir is not None and RunFolder(run_dir).is_run():
        found.run_dir = run_dir
        found.config = read_json_object(RunFolder(run_dir).config)
        if RunFolder(run_dir).history.is_file():
            found.history = read_json_object(RunFolder(run_dir).history)
    if found.summary is None and found.config is None:
        raise MddoseError("holds neither an evaluation nor a training run to report on", source)
    return found


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def pick_patients(rows: list[dict[str, str]], method: str, n: int) -> list[tuple[str, str]]:
    """(patient id, why chosen): all when at most ``n``, else spread from best to worst dose score."""
    scored = [(float(r["openkbp_dose_score"]), r["patient_id"]) for r in rows
              if r["method"] == method and r["status"] == "scored" and r["openkbp_dose_score"]]
    scored.sort()
    if n <= 0 or not scored:
        return []
    if len(scored) <= n:
        return [(pid, "") for _, pid in sorted(scored, key=lambda sp: natural_key(sp[1]))]
    picks = np.unique(np.round(np.linspace(0, len(scored) - 1, n)).astype(int))
    names = {0: "best", len(scored) - 1: "worst", (len(scored) - 1) // 2: "median"}
    return [(scored[i][1], f"{names.get(int(i), 'rank ' + str(i + 1))} of {len(scored)} by dose score")
            for i in picks]


def group_roi_errors(roi_rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(ROI, metric) → method → |Δ| per patient, for the OpenKBP DVH metrics and the targets' HI."""
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in roi_rows:
        if r["group"] == "openkbp" or (r["group"] == "clinical" and r["metric"] == "HI"):
            if r["abs_diff"] not in ("", "nan"):
                out[(r["roi"], r["metric"])][r["method"]].append(float(r["abs_diff"]))
            if r["reference"] not in ("", "nan"):
                out[(r["roi"], r["metric"])]["__reference__"].append(float(r["reference"]))
    return out
