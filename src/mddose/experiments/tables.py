"""The paper's tables as one command each: ``mddose experiment {table1,table2,table3,table4} CACHE_DIR DATA_DIR
OUT_DIR``.

Table I compares MD-Dose with the deterministic baselines (C3D-like cascade, HD-UNet-like dense U-Net, trained
with a voxel-wise loss) and the diffusion baselines (DiffDP-like conv and SP-DiffDose-like Swin networks, and the
DoseDiff-like network on signed distance maps, trained and sampled exactly as MD-Dose); see
:func:`mddose.runs.run_config.method_config`. Table II (parameters and
inference time) is :mod:`mddose.experiments.inference_cost`. Table III varies the denoiser's block (conv, Swin, Mamba)
with a Mamba structure encoder; Table IV keeps the Mamba denoiser and varies the structure encoder (none =
structures concatenated to x_t, conv, Swin, Mamba): :func:`~mddose.models.config.ablation_configs`.

Every row of a table is one network on the same base recipe: same data (CACHE_DIR), same seed, same wall-clock
budget per method, same sampler (the deterministic baselines need none), then ``mddose evaluate`` on the
held-out patients of DATA_DIR with paired t-tests against MD-Dose.

Output folder, resumable (a finished method is skipped; an interrupted one resumes from its last checkpoint
with the rest of its budget)::

    OUT_DIR/
      table.json           which table and budget this folder holds
      runs/<row>/          one training run per method (config.json, checkpoints, loss.png)
      preds/<row>/         its predictions (pt_N.csv, prediction.json)
      eval/                mddose evaluate: summary.json, per_patient.csv, per_roi.csv, comparison.md, and
                           figures/ for the first patient (every method side by side: Figs. 3 and 4)
      <table>.md           the table (mean ± std, * where p < 0.05 against MD-Dose) with the budget used
      experiment.json      the settings and, per method, parameters, steps, training seconds

One table and one budget per OUT_DIR: a folder holding another table's experiment (row names repeat across
tables) or the same table with another budget is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from mddose.atomic import write_json, write_text
from mddose.data.openkbp import list_patients
from mddose.diffusion.sampling import check_sampling
from mddose.errors import MddoseError
from mddose.evaluate.folders import evaluate
from mddose.inference.predict import predict
from mddose.models.baselines import BaselineConfig
from mddose.models.build import build_model, count_parameters
from mddose.models.config import ablation_configs, layout_configs
from mddose.ownership import claim
from mddose.runs.layout import RunFolder
from mddose.runs.methods import TABLE1_ORDER, in_3d, row_name
from mddose.runs.run_config import RunConfig, for_data, method_config, run_preset
from mddose.training.loop import train
from mddose.viz.figures import evaluation_figures

log = logging.getLogger(__name__)

TABLES: dict[str, str] = {
    "table1": "Comparison with other methods (Table I): deterministic and diffusion baselines against MD-Dose",
    "table2": "Parameters and inference time (Table II) of the Table I methods",
    "table3": "Denoising network (Table III): conv / Swin / Mamba denoiser, Mamba structure encoder",
    "table4": "Structure encoder (Table IV): none (concatenation) / conv / Swin / Mamba encoder, Mamba denoiser",
    "layout": "Mamba where it pays: Mamba at every level (the paper's layout) / at the coarse levels only (the "
              "CPU hybrid) / nowhere (the all-conv twin)",
    "inputs": "What the network is told, and how it learns: the anatomy alone / plus the beam model's dose for "
              "the plan's fields (beam prior, the shipped model's inputs) / the beam prior plus the target maps of "
              "slices 4 and 8 above and below / plus signed distances in place of the masks / plus weight decay on "
              "the matrices only / plus the fields' apertures per prescription level",
}

#: The levers of the ``inputs`` table: the data- and train-config fields each row changes on the base recipe.
#: Every lever after the beam prior is measured on top of it, against it (the reference row).
_PRIOR = {"beam_prior": True}
INPUT_ROWS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "beam-prior": {"data": _PRIOR},
    "beam-prior+target-context": {"data": {**_PRIOR, "target_context": (-8, -4, 4, 8)}},
    "beam-prior+distance": {"data": {**_PRIOR, "target_encoding": "per_level", "structure_encoding": "distance"}},
    "beam-prior+decay-groups": {"data": _PRIOR, "train": {"weight_decay_on": "matrices"}},
    "beam-prior+apertures": {"data": {**_PRIOR, "beam_apertures": True}},
}


def reference_row(table: str) -> str:
    """The row that is MD-Dose itself: the t-tests compare every other row with it."""
    return {"table1": "MD-Dose", "table2": "MD-Dose", "layout": "hybrid", "inputs": "beam-prior"}.get(table, "mamba")


def table_rows(table: str, base: RunConfig, baselines_3d: bool = False,
               patch_3d: tuple[int, int, int] | None = None) -> dict[str, RunConfig]:
    """The methods of ``table`` as run configurations derived from ``base`` (only the model differs).

    ``baselines_3d``: Tables I and II take the deterministic baselines in 3D (rows ``C3D-like-3D``,
    ``HD-UNet-like-3D``) instead of the default 2D ones, trained on ``patch_3d`` crops (default 64³).
    """
    if table not in TABLES:
        raise MddoseError(f"unknown table {table!r}: choose {', '.join(TABLES)}")
    if table in ("table1", "table2"):
        rows = {}
        for method in TABLE1_ORDER:
            name, original = row_name(method), in_3d(method)
            if baselines_3d and original:
                name, method = f"{name}-3D", original
            rows[name] = method_config(method, base, patch_3d)
        return rows
    if table == "layout":
        return {name: dataclasses.replace(base, model=model) for name, model in layout_configs(base.model).items()}
    if table == "inputs":
        return {name: _with_inputs(base, changes) for name, changes in INPUT_ROWS.items()}
    rows = {}
    for name, model in ablation_configs(base.model).items():
        if name.startswith(f"{table}-"):
            rows[name.split("-", 1)[1]] = dataclasses.replace(base, model=model)
    return rows


def _with_inputs(base: RunConfig, changes: dict[str, dict[str, Any]]) -> RunConfig:
    """``base`` with other inputs and training settings: the network's first layer follows the data."""
    data = dataclasses.replace(base.data, **changes.get("data", {}))
    train = dataclasses.replace(base.train, **changes.get("train", {}))
    return dataclasses.replace(base, data=data, train=train, model=for_data(base.model, data))


def select_rows(table: str, rows: dict[str, RunConfig], only: list[str] | None) -> dict[str, RunConfig]:
    """The rows named in ``only`` (all when it is empty), always with the table's reference row, in table order."""
    if not only:
        return rows
    unknown = [name for name in only if name not in rows]
    if unknown:
        raise MddoseError(f"{table} has no row {', '.join(map(repr, unknown))}: choose from {', '.join(rows)}")
    return {name: cfg for name, cfg in rows.items() if name in only or name == reference_row(table)}


def describe(cfg: RunConfig) -> str:
    """The network of a row in a few words, for the tables."""
    m = cfg.model
    if isinstance(m, BaselineConfig):
        where = f"3D, {'×'.join(map(str, m.patch_size))} patches" if m.dims == 3 else "2D"
        region = " inside the possible-dose mask" if m.loss_region == "mask" else ""
        return f"{'cascade' if m.arch == 'cascade' else 'dense'} U-Net ({where}), {m.loss} loss{region}"
    encoder = "concatenated structures" if m.encoder_block == "none" else f"{m.encoder_block} encoder"
    where = f" (conv at the {m.conv_levels} finest levels)" if m.conv_levels and m.mamba_widths() else ""
    fused = ", fused by windowed attention" if m.fusion == "transformer" else ""
    return (f"{m.denoiser_block} denoiser, {encoder}{where}{fused}{_inputs(cfg)}, "
            f"{cfg.diffusion.prediction_type} prediction")


def _inputs(cfg: RunConfig) -> str:
    """What a row is told beyond the anatomy's masks, and how its weights decay, for :func:`describe`."""
    d = cfg.data
    words = ["signed distance maps"] if d.structure_encoding == "distance" else []
    words += [f"target maps at z {', '.join(f'{o:+d}' for o in d.target_context)}"] if d.target_context else []
    words += ["beam prior"] if d.beam_prior else []
    words += ["field apertures per target"] if d.beam_apertures else []
    words += ["weight decay on the matrices only"] if cfg.train.weight_decay_on == "matrices" else []
    return "".join(f", {w}" for w in words)


def claim_folder(out_dir: Path, table: str, budget: dict[str, Any]) -> None:
    """Refuse an experiment folder that holds another table (its row names would be reused) or another budget."""
    marker = out_dir / "table.json"
    if not marker.is_file():
        write_json(marker, {"table": table, "budget": budget})
        return
    held = json.loads(marker.read_text())
    if held.get("table") != table:
        raise MddoseError(f"this folder holds the {held.get('table')} experiment: choose another folder for {table}",
                          out_dir)
    if held.get("budget", budget) != budget:
        raise MddoseError(f"this folder's experiment was trained with budget {held['budget']}, not {budget}: "
                          "choose another folder", out_dir)


def _trained_seconds(run_dir: Path) -> float | None:
    trainer = RunFolder(run_dir).trainer_state()
    return trainer["seconds"] if trainer is not None else None


def _predicted_with(pred_dir: Path, cfg: RunConfig, sampler: str, steps: int, samples: int) -> bool:
    """Whether ``pred_dir`` holds finished predictions made with these settings (else predict again: a re-run
    with another sampler, step count or number of samples redoes only prediction and evaluation)."""
    summary = pred_dir / "prediction.json"
    if not summary.is_file():
        return False
    if cfg.objective == "regression":
        return True
    held = json.loads(summary.read_text())
    return (held.get("sampler"), held.get("steps"), held.get("samples")) == (sampler, steps, samples)


def train_row(cfg: RunConfig, cache_dir: str | Path, run_dir: Path, budget: dict[str, Any], device: str,
              progress: bool) -> None:
    """Train one row for its budget (``{"minutes": M, "steps": None}`` or ``{"minutes": None, "steps": N}``); an
    interrupted row resumes for what is left of it; a finished one is kept."""
    saved = run_dir / "config.json"
    if saved.is_file() and RunConfig.from_dict(json.loads(saved.read_text())) != cfg:
        raise MddoseError("this run was trained with another configuration than the experiment's: choose another "
                          "folder", run_dir)
    finished = run_dir / "experiment_done.json"
    if finished.is_file():
        return
    done = _trained_seconds(run_dir)
    if budget["steps"] is not None:
        log.info("training %s to step %d", run_dir.name, budget["steps"])
        train(cache_dir, run_dir, None if done is not None else cfg, max_steps=budget["steps"],
              resume=done is not None, device=device, progress=progress)
    elif done is None:
        log.info("training %s for %.1f min", run_dir.name, budget["minutes"])
        train(cache_dir, run_dir, cfg, minutes=budget["minutes"], device=device, progress=progress)
    elif (left := budget["minutes"] * 60.0 - done) > 0:
        log.info("resuming %s for the remaining %.1f min", run_dir.name, left / 60)
        train(cache_dir, run_dir, minutes=left / 60, resume=True, device=device, progress=progress)
    write_json(finished, {"budget_minutes": budget["minutes"], "budget_steps": budget["steps"]})


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
    time_patients: int = 2,
    budget_steps: int | None = None,
    baselines_3d: bool = False,
    patch_3d: tuple[int, int, int] | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Train, predict and evaluate every method of ``table`` with the same budget; returns experiment.json.

    The budget is wall-clock minutes of training per method (``budget_minutes``: what a user with one machine
    has), or, with ``budget_steps``, the same number of optimisation steps (what separates the architectures
    from the speed of their kernels on this device).

    ``only`` names the rows to run (the table's reference row, MD-Dose itself, always runs); the table, the
    evaluation and experiment.json then cover those rows (other rows already in the folder stay on disk).

    ``table2`` trains nothing: it times the Table I networks (:func:`mddose.experiments.inference_cost.run_timing`) on
    ``time_patients`` patients of ``data_dir``; ``cache_dir`` and ``budget_minutes`` are then unused.
    """
    out_dir = Path(out_dir)
    base = base or run_preset("tiny")
    rows = select_rows(table, table_rows(table, base, baselines_3d, patch_3d), only)
    check_sampling(base.diffusion, sampler, steps)  # before hours of training, not after
    budget = {"minutes": None if budget_steps is not None else budget_minutes, "steps": budget_steps}
    if budget_steps is None and not (math.isfinite(budget_minutes) and budget_minutes > 0):
        raise MddoseError(f"--budget-minutes must be a positive number of minutes, not {budget_minutes}")
    with claim(out_dir, "mddose experiment", [cache_dir, data_dir], resume=True) as out_dir:
        claim_folder(out_dir, table, {} if table == "table2" else budget)
        if table == "table2":
            from mddose.experiments.inference_cost import run_timing

            return run_timing(rows, data_dir, out_dir, base, sampler, steps, time_patients, device, progress)
        methods = {name: _train_and_predict(name, cfg, cache_dir, data_dir, out_dir, budget, sampler, steps, samples,
                                            device, progress) for name, cfg in rows.items()}
        return _tabulate(table, rows, methods, base, cache_dir, data_dir, out_dir, budget, sampler, steps, samples,
                         baselines_3d, progress)


def _tabulate(table: str, rows: dict[str, RunConfig], methods: dict[str, Any], base: RunConfig,
              cache_dir: str | Path, data_dir: str | Path, out_dir: Path, budget: dict[str, Any], sampler: str,
              steps: int, samples: int, baselines_3d: bool, progress: bool) -> dict[str, Any]:
    """Evaluate every row's predictions (the experiment's own evaluation, redone each time), write the table and
    experiment.json."""
    budget_minutes, budget_steps = budget["minutes"], budget["steps"]
    names = list(rows)
    shown = list_patients(data_dir)[0].name  # the paper's Figs. 3 and 4 for one patient: every method side by side
    summary = evaluate(data_dir, [out_dir / "preds" / n for n in names], out_dir / "eval", names=names,
                       against=reference_row(table), gamma=False, figures=evaluation_figures, figure_patients=[shown],
                       progress=progress, overwrite=True)
    sampling = f"{sampler} with {steps} steps and {samples} sample(s)"
    if table == "table1":
        sampling += (" for the diffusion models, one forward pass for the deterministic ones"
                     + (" (3D: sliding windows over the volume)," if baselines_3d else ","))
    spent = f"{budget_steps} training steps" if budget_steps is not None else f"{budget_minutes:g} min of training"
    table_md = _table_markdown(table, base, spent, sampling, data_dir, summary, out_dir, methods, shown)
    write_text(out_dir / f"{table}.md", table_md)
    result = {"table": table, "budget_minutes": budget["minutes"], "budget_steps": budget["steps"],
              "sampler": sampler, "steps": steps, "samples": samples, "cache_dir": str(cache_dir),
              "data_dir": str(data_dir), "base": base.to_dict(), "methods": methods,
              "scores": {n: summary["methods"][n]["openkbp"] for n in names}}
    write_json(out_dir / "experiment.json", result)
    return result


def _train_and_predict(name: str, cfg: RunConfig, cache_dir: str | Path, data_dir: str | Path, out_dir: Path,
                       budget: dict[str, Any], sampler: str, steps: int, samples: int, device: str,
                       progress: bool) -> dict[str, Any]:
    """One row: trained to the budget (resumed where it stopped), predicted unless already done, described."""
    run_dir, pred_dir = out_dir / "runs" / name, out_dir / "preds" / name
    train_row(cfg, cache_dir, run_dir, budget, device, progress)
    if not _predicted_with(pred_dir, cfg, sampler, steps, samples):  # the experiment's own: replaced
        predict(run_dir, data_dir, pred_dir, sampler=sampler, steps=steps, samples=samples, device=device,
                nifti=False, progress=progress, overwrite=True)
    trainer = RunFolder(run_dir).trainer_state() or {}
    timing = json.loads((pred_dir / "prediction.json").read_text())
    return {
        "network": describe(cfg), "objective": cfg.objective, "model": cfg.model.to_dict(),
        "parameters": count_parameters(build_model(cfg.model)), "steps": trainer["step"],
        "train_seconds": round(trainer["seconds"], 1), "best": trainer.get("best"),
        "predict_seconds_per_patient": timing["mean_seconds_per_patient"],
    }


def _table_markdown(table: str, base: RunConfig, spent: str, sampling: str, data_dir: str | Path,
                    summary: dict[str, Any], out_dir: Path, methods: dict[str, Any], shown: str) -> str:
    """``tableN.md``: what was run, the comparison with its t-tests, the networks, where the figures are."""
    return (
        f"# {TABLES[table]}\n\n"
        f"Same cache, seed and budget for every method: {spent} each "
        f"(base model `{base.model.name}`, {base.model.image_size}² input), then {sampling} "
        f"on the {summary['n_reference_patients']} patients of `{data_dir}`.\n\n"
        + (out_dir / "eval" / "comparison.md").read_text().split("\n", 2)[2]
        + "\n| Method | network | parameters | training steps |\n|---|---|---:|---:|\n"
        + "".join(f"| {n} | {m['network']} | {m['parameters']:,} | {m['steps']} |\n" for n, m in methods.items())
        + f"\nFigures for {shown}, every method beside the reference: dose and error maps "
        f"(`eval/figures/{shown}_comparison.png`, as the paper's Fig. 3), DVHs (`eval/figures/{shown}_dvh.png`, "
        f"Fig. 4) and dose washes (`eval/figures/{shown}_dose.png`).\n"
    )
