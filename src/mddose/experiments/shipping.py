"""Renewing the shipped model (``mddose pretrained export``): score a run's newest weights on validation
patients, log the stretch in the model card, and ship the weights — with their QA error table — only when they
validate better than the ones shipped. It orchestrates prediction, evaluation and QA calibration, so it sits
above all three.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

from mddose.atomic import write_json
from mddose.evaluate.folders import evaluate
from mddose.inference.predict import predict
from mddose.inference.predictor import Predictor, checkpoint_folder
from mddose.inference.pretrained import LOG_FILE, WEIGHTS_ROOT, training_log, write_card, write_weights
from mddose.inference.scope import read_profile, write_profile
from mddose.ownership import claim
from mddose.qa.calibrate import calibrate
from mddose.runs.layout import TRAINER, RunFolder
from mddose.runs.run_config import checkpoint_run_config


def export_run(
    run: str | Path,
    val_dir: str | Path,
    name: str = "openkbp",
    sampler: str | None = None,
    steps: int | None = None,
    samples: int = 1,
    target: Path | None = None,
    keep: Path | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Score the run's last EMA on ``val_dir``, log the stretch and ship the weights if they validate better.

    Returns the log row. ``keep``: a folder that keeps the predictions (``pred/``) and the evaluation
    (``eval/``); ``target`` overrides the package folder (tests); ``note``: a line for the card about this stretch.
    """
    last = RunFolder(run).last  # the run's newest state, not its best-on-two-patients
    folder = checkpoint_folder(last if last.is_dir() else run)
    diffusion = checkpoint_run_config(folder).diffusion
    sampler, steps = diffusion.sampling(sampler, steps)  # the model's own by default
    target = target or WEIGHTS_ROOT / name
    trainer = json.loads((folder / TRAINER).read_text()) if (folder / TRAINER).is_file() else {}
    log_rows = training_log(target)
    with tempfile.TemporaryDirectory() as tmp, _kept(keep, Path(tmp), [run, val_dir]) as out:
        summary = predict(folder, val_dir, out / "pred", sampler, steps, samples, nifti=False, overwrite=True)
        scores = evaluate(val_dir, [out / "pred"], out / "eval", names=["md-dose"], gamma=False, overwrite=True)
        method = scores["methods"]["md-dose"]
        seconds, step = float(trainer.get("seconds", 0.0)), int(trainer.get("step", 0))
        before, continues = _logged_seconds(log_rows, seconds, step)
        row = {
            "date": dt.date.today().isoformat(),
            "cpu_minutes": round(max(seconds - before, 0.0) / 60, 1),
            "total_cpu_hours": round(seconds / 3600, 2),
            "total_cpu_seconds": round(seconds, 1),
            "steps": step,
            "dose_score": round(method["openkbp"]["dose_score"], 4),
            "dvh_score": round(method["openkbp"]["dvh_score"], 4),
            "patients": method["n_patients_scored"],
            "sampler": sampler, "sampler_steps": steps, "timestep_spacing": diffusion.timestep_spacing,
            "samples": samples, "smooth_mm": summary["smooth_mm"],
            "seconds_per_patient": summary["mean_seconds_per_patient"],
        } | ({} if continues else {"new_run": True}) | ({"note": note} if note else {})
        shipped = [r for r in log_rows if r.get("shipped")]
        row["shipped"] = not shipped or row["dose_score"] < min(r["dose_score"] for r in shipped)
        if row["shipped"]:
            write_weights(folder, target)
            if (profile := read_profile(folder)) is not None:
                write_profile(target, profile)
            _write_error_table(target, val_dir, out / "pred")
    write_json(target / LOG_FILE, [*log_rows, row])
    write_card(target, name)
    return row


def _kept(keep: Path | None, tmp: Path, inputs: list[str | Path]) -> contextlib.AbstractContextManager[Path]:
    """Where the predictions and the evaluation go: ``keep``, claimed (its own earlier ones are replaced), or a
    temporary folder."""
    return claim(keep, "mddose pretrained export", inputs, resume=True) if keep else contextlib.nullcontext(tmp)


def _logged_seconds(log_rows: list[dict[str, Any]], seconds: float, step: int) -> tuple[float, bool]:
    """The run's training seconds already in the log and whether the run continues the log's last row: it does
    unless it has fewer steps or CPU-seconds than that row (a new run, trained from scratch in another folder,
    whose seconds all count as this stretch's). An empty log is a run's start, not a new run."""
    if not log_rows:
        return 0.0, True
    last = log_rows[-1]
    logged = last.get("total_cpu_seconds", last["total_cpu_hours"] * 3600)  # older rows: hours to 0.01
    continues = step >= last["steps"] and seconds >= logged - 36
    return (logged, True) if continues else (0.0, False)


def _write_error_table(target: Path, val_dir: str | Path, predictions: Path) -> None:
    """The QA error table of the weights just shipped, from the validation predictions that scored them."""
    calibrate(Predictor(target, device="cpu"), val_dir, predictions=predictions)
