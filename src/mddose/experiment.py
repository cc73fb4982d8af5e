"""The paper's ablations as one command each: ``mddose experiment {table3,table4} CACHE_DIR DATA_DIR OUT_DIR``.

Table III varies the denoiser's block (conv, Swin, Mamba) with a Mamba structure encoder; Table IV keeps the
Mamba denoiser and varies the structure encoder (none = structures concatenated to x_t, conv, Swin, Mamba). Every
row is one :func:`~mddose.models.config.ablation_configs` entry on the same base recipe: same data (CACHE_DIR),
same seed, same wall-clock budget per method, same sampler, then ``mddose evaluate`` on the held-out patients of
DATA_DIR with paired t-tests against the MD-Dose row (Mamba denoiser, Mamba encoder).

Output folder, resumable (a finished method is skipped; an interrupted one resumes from its last checkpoint
with the rest of its budget)::

    OUT_DIR/
      runs/<row>/          one training run per method (config.json, checkpoints, loss.png)
      preds/<row>/         its predictions (pt_N.csv, prediction.json)
      eval/                mddose evaluate: summary.json, per_patient.csv, per_roi.csv, comparison.md
      <table>.md           the table (mean ± std, * where p < 0.05 against MD-Dose) with the budget used
      experiment.json      the settings and, per method, parameters, steps, training seconds
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from mddose.config import RunConfig, run_preset
from mddose.errors import MddoseError
from mddose.evaluate.run import evaluate
from mddose.fileio import write_json, write_text
from mddose.models.config import ablation_configs, build_model, count_parameters
from mddose.predict import predict
from mddose.train import train

log = logging.getLogger(__name__)

TABLES: dict[str, str] = {
    "table3": "Denoising network (Table III): conv / Swin / Mamba denoiser, Mamba structure encoder",
    "table4": "Structure encoder (Table IV): none (concatenation) / conv / Swin / Mamba encoder, Mamba denoiser",
}
REFERENCE_ROW = "mamba"  # MD-Dose itself: the t-tests compare every other row with it


def table_rows(table: str, base: RunConfig) -> dict[str, RunConfig]:
    """The methods of ``table`` as run configurations derived from ``base`` (only the model differs)."""
    if table not in TABLES:
        raise MddoseError(f"unknown table {table!r}: choose {', '.join(TABLES)}")
    rows = {}
    for name, model in ablation_configs(base.model).items():
        if name.startswith(f"{table}-"):
            rows[name.split("-", 1)[1]] = dataclasses.replace(base, model=model)
    return rows


def _trained_seconds(run_dir: Path) -> float | None:
    trainer = run_dir / "checkpoints" / "last" / "trainer.json"
    return json.loads(trainer.read_text())["seconds"] if trainer.is_file() else None


def run_experiment(
    table: str,
    cache_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    budget_minutes: float = 10.0,
    base: RunConfig | None = None,
    sampler: str = "dpm++",
    steps: int = 10,
    samples: int = 1,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train, predict and evaluate every method of ``table`` with the same budget; returns experiment.json."""
    out_dir = Path(out_dir)
    base = base or run_preset("tiny")
    rows = table_rows(table, base)
    budget_s = budget_minutes * 60.0
    methods: dict[str, Any] = {}
    for name, cfg in rows.items():
        run_dir, pred_dir = out_dir / "runs" / name, out_dir / "preds" / name
        finished = run_dir / "experiment_done.json"
        done = _trained_seconds(run_dir)
        if not finished.is_file():
            if done is None:
                log.info("%s: training %s for %.1f min", table, name, budget_minutes)
                train(cache_dir, run_dir, cfg, minutes=budget_minutes, device=device, progress=progress)
            else:
                left = max(budget_s - done, 0.0) / 60
                log.info("%s: resuming %s for the remaining %.1f min", table, name, left)
                train(cache_dir, run_dir, minutes=left, resume=True, device=device, progress=progress)
            write_json(finished, {"budget_minutes": budget_minutes})
        if not (pred_dir / "prediction.json").is_file():
            predict(run_dir, data_dir, pred_dir, sampler=sampler, steps=steps, samples=samples, device=device,
                    nifti=False, progress=progress)
        trainer = json.loads((run_dir / "checkpoints" / "last" / "trainer.json").read_text())
        timing = json.loads((pred_dir / "prediction.json").read_text())
        methods[name] = {
            "denoiser": cfg.model.denoiser_block, "encoder": cfg.model.encoder_block,
            "parameters": count_parameters(build_model(cfg.model)), "steps": trainer["step"],
            "train_seconds": round(trainer["seconds"], 1), "best": trainer.get("best"),
            "predict_seconds_per_patient": timing["mean_seconds_per_patient"],
        }
    names = list(rows)
    summary = evaluate(data_dir, [out_dir / "preds" / n for n in names], out_dir / "eval", names=names,
                       against=REFERENCE_ROW, gamma=False, progress=progress)
    table_md = (
        f"# {TABLES[table]}\n\n"
        f"Same cache, seed and budget for every method: {budget_minutes:g} min of training each "
        f"(base model `{base.model.name}`, {base.model.image_size}² input), then {sampler} with {steps} steps "
        f"and {samples} sample(s) on the {summary['n_reference_patients']} patients of `{data_dir}`.\n\n"
        + (out_dir / "eval" / "comparison.md").read_text().split("\n", 2)[2]
        + "\n| Method | denoiser | encoder | parameters | training steps |\n|---|---|---|---:|---:|\n"
        + "".join(f"| {n} | {m['denoiser']} | {m['encoder']} | {m['parameters']:,} | {m['steps']} |\n"
                  for n, m in methods.items())
    )
    write_text(out_dir / f"{table}.md", table_md)
    result = {"table": table, "budget_minutes": budget_minutes, "sampler": sampler, "steps": steps,
              "samples": samples, "cache_dir": str(cache_dir), "data_dir": str(data_dir),
              "base": base.to_dict(), "methods": methods,
              "scores": {n: summary["methods"][n]["openkbp"] for n in names}}
    write_json(out_dir / "experiment.json", result)
    return result
