"""The model's known error per ROI and metric, and the tolerance it gives a QA comparison.

A table measured on validation patients (``mddose qa-calibrate``) holds, for every ROI and QA metric, the error of
the model's prediction against the clinical plans: ``bias`` (mean of predicted − plan), ``sd`` (their standard
deviation), ``mae`` and ``n`` (patients). It lives beside the weights it was measured with as ``qa_errors.json``::

    {"format": "mddose-qa-errors/1", "weights_sha256": "...", "checkpoint": "...", "patients": 33,
     "sampler": "dpm++", "steps": 10, "samples": 1, "date": "2026-12-02",
     "rois": ["Brainstem", ...], "metrics": {"Brainstem": {"Dmean": {"bias": 0.4, "sd": 3.1, "mae": 2.5, "n": 31}}}}

QA compares a plan with the *achievable* value: the prediction minus the model's bias on that metric. A difference
is flagged when it exceeds ``max(floor, z · sqrt(sd² + s²))``: ``sd`` from the table, ``s`` the spread of the
metric over this patient's samples (the model's own uncertainty), ``z`` = 1.645 by default (one-sided 95 %) and the
metric's floor from :data:`~mddose.qa.metrics.TOLERANCE_FLOOR`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mddose.atomic import write_json
from mddose.errors import MddoseError
from mddose.qa.metrics import TOLERANCE_FLOOR
from mddose.runs.checkpoint import weights_sha256

ERROR_TABLE = "qa_errors.json"
TABLE_FORMAT = "mddose-qa-errors/1"
DEFAULT_Z = 1.645


@dataclass(frozen=True)
class MetricError:
    """The validation error of one (ROI, metric): predicted − plan."""

    bias: float
    sd: float
    mae: float
    n: int


@dataclass
class ErrorTable:
    """Per-ROI, per-metric validation errors of one set of weights (see the module docstring for the file)."""

    rois: list[str]
    metrics: dict[str, dict[str, MetricError]]
    info: dict[str, Any] = field(default_factory=dict)

    def error(self, roi: str, metric: str) -> MetricError | None:
        return self.metrics.get(roi, {}).get(metric)

    def tolerance(self, roi: str, metric: str, sample_sd: float = 0.0, z: float = DEFAULT_Z) -> float:
        """``max(floor, z · sqrt(sd² + sample_sd²))``; a metric the table lacks gets NaN (not judged)."""
        err = self.error(roi, metric)
        if err is None or not math.isfinite(err.sd):
            return float("nan")
        return max(TOLERANCE_FLOOR[metric], z * math.sqrt(err.sd**2 + sample_sd**2))

    @classmethod
    def from_differences(cls, rois: list[str], diffs: dict[str, dict[str, list[float]]],
                         **info: Any) -> ErrorTable:
        """Build the table from predicted − plan differences, ``{roi: {metric: [one per patient]}}``."""
        metrics: dict[str, dict[str, MetricError]] = {}
        for roi, by_metric in diffs.items():
            for metric, values in by_metric.items():
                v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
                if v.size < 2:
                    continue  # one patient gives no spread: the metric stays unjudged
                metrics.setdefault(roi, {})[metric] = MetricError(
                    float(v.mean()), float(v.std(ddof=1)), float(np.abs(v).mean()), int(v.size))
        return cls(rois, metrics, info)

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, **self.info, "rois": self.rois,
                "metrics": {roi: {m: vars(e) for m, e in by.items()} for roi, by in self.metrics.items()}}

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ErrorTable:
        path = Path(path)
        if not path.is_file():
            raise MddoseError("no QA error table: measure one with `mddose qa-calibrate MODEL VAL_DIR` "
                              "(or give --errors FILE)", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != TABLE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {TABLE_FORMAT!r}")
            metrics = {roi: {m: MetricError(float(e["bias"]), float(e["sd"]), float(e["mae"]), int(e["n"]))
                             for m, e in by.items()} for roi, by in data["metrics"].items()}
            rois = [str(r) for r in data["rois"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise MddoseError(f"not a QA error table ({type(e).__name__}: {e})", path) from None
        info = {k: v for k, v in data.items() if k not in ("format", "rois", "metrics")}
        return cls(rois, metrics, info)


def table_info(weights: Path, patients: int, sampler: str, steps: int, samples: int, source: str) -> dict[str, Any]:
    """The provenance fields of a table written now."""
    folder = weights.parent.resolve()
    here = Path.cwd().resolve()
    checkpoint = str(folder.relative_to(here)) if folder.is_relative_to(here) else str(folder)
    return {"weights_sha256": weights_sha256(weights), "checkpoint": checkpoint, "patients": patients,
            "sampler": sampler, "steps": steps, "samples": samples, "source": source,
            "date": dt.date.today().isoformat()}
