"""Renewing the shipped model (``mddose pretrained export``): score a run's newest weights on validation
patients, log the stretch in the model card (written here from the package folder's files), and ship the weights
— with their QA error table — only when they validate better than the ones shipped. It orchestrates prediction,
evaluation and QA calibration, so it sits above all three.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mddose.atomic import atomic_path, write_json, write_text
from mddose.errors import MddoseError
from mddose.evaluate.folders import evaluate
from mddose.inference.predict import predict
from mddose.inference.predictor import Predictor, checkpoint_folder
from mddose.inference.pretrained import PRETRAINED, WEIGHTS_ROOT
from mddose.inference.refinement import own_refiner, read_refiner
from mddose.inference.scope import read_profile, write_profile
from mddose.ownership import claim
from mddose.qa.calibrate import calibrate
from mddose.runs.checkpoint import load_tensors, read_config
from mddose.runs.layout import (
    OWN_REFINER,
    REFINER_CONFIG,
    REFINER_WEIGHTS,
    TRAINER,
    RunFolder,
)
from mddose.runs.run_config import checkpoint_run_config

LOG_FILE, CARD_FILE, COMPARISON_FILE = "training_log.json", "MODEL_CARD.md", "comparison.md"


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
    refiner: Path | None = None,
) -> dict[str, Any]:
    """Score the run's last EMA on ``val_dir``, log the stretch and ship the weights if they validate better.

    Returns the log row. ``keep``: a folder that keeps the predictions (``pred/``) and the evaluation
    (``eval/``); ``target`` overrides the package folder (tests); ``note``: a line for the card about this stretch.
    ``refiner``: a 3D refinement stage trained for these weights (``mddose refine``); the weights are scored with
    it and it ships with them. ``run`` may be the shipped model itself, to ship a refiner for its weights.
    """
    last = RunFolder(run).last  # the run's newest state, not its best-on-two-patients
    folder = checkpoint_folder(last if last.is_dir() else run)
    run_config = checkpoint_run_config(folder)
    sampler, steps = run_config.diffusion.sampling(sampler, steps)  # the model's own by default
    target = target or WEIGHTS_ROOT / name
    log_rows = training_log(target)
    shipped_itself = folder.resolve() == target.resolve()
    seconds, step = _trained(folder, log_rows, refiner, shipped_itself)
    with tempfile.TemporaryDirectory() as tmp, _kept(keep, Path(tmp), [run, val_dir]) as out:
        summary = predict(folder, val_dir, out / "pred", sampler, steps, samples, nifti=False, overwrite=True,
                          refiner=refiner)
        scores = evaluate(val_dir, [out / "pred"], out / "eval", names=["md-dose"], gamma=False, overwrite=True)
        method = scores["methods"]["md-dose"]
        start = step if shipped_itself else run_config.train.restart_step
        before, continues = _logged_seconds(log_rows, seconds, step, start)
        row = {
            "date": dt.date.today().isoformat(),
            "cpu_minutes": round(max(seconds - before, 0.0) / 60, 1),
            "total_cpu_hours": round(seconds / 3600, 2),
            "total_cpu_seconds": round(seconds, 1),
            "steps": step,
            "dose_score": round(method["openkbp"]["dose_score"], 4),
            "dvh_score": round(method["openkbp"]["dvh_score"], 4),
            "patients": method["n_patients_scored"],
            "sampler": sampler, "sampler_steps": steps, "timestep_spacing": run_config.diffusion.timestep_spacing,
            "samples": samples, "smooth_mm": summary["smooth_mm"], "refiner": summary["refiner"] is not None,
            "seconds_per_patient": summary["mean_seconds_per_patient"],
        } | ({} if continues else {"new_run": True}) | ({"note": note} if note else {})
        shipped = [r for r in log_rows if r.get("shipped")]
        row["shipped"] = not shipped or row["dose_score"] < min(r["dose_score"] for r in shipped)
        if row["shipped"]:
            if not shipped_itself:
                write_weights(folder, target)
                if (profile := read_profile(folder)) is not None:
                    write_profile(target, profile)
            _ship_refiner(target, refiner, keep_own=shipped_itself)
            _write_error_table(target, val_dir, out / "pred")
    write_json(target / LOG_FILE, [*log_rows, row])
    write_card(target, name)
    return row


def _kept(keep: Path | None, tmp: Path, inputs: list[str | Path]) -> contextlib.AbstractContextManager[Path]:
    """Where the predictions and the evaluation go: ``keep``, claimed (its own earlier ones are replaced), or a
    temporary folder."""
    return claim(keep, "mddose pretrained export", inputs, resume=True) if keep else contextlib.nullcontext(tmp)


def _trained(folder: Path, log_rows: list[dict[str, Any]], refiner: Path | None,
             shipped_itself: bool) -> tuple[float, int]:
    """The training seconds and step behind what is exported: the run's; for the shipped model itself, its shipped
    row's plus the training of the refiner exported with it."""
    if not shipped_itself:
        trainer = json.loads((folder / TRAINER).read_text()) if (folder / TRAINER).is_file() else {}
        return float(trainer.get("seconds", 0.0)), int(trainer.get("step", 0))
    shipped = [r for r in log_rows if r.get("shipped")]
    if not shipped:
        raise MddoseError("nothing is shipped here yet: export a run", folder)
    best = shipped[-1]
    extra = float(read_refiner(refiner).get("seconds", 0.0)) if refiner is not None else 0.0
    return best.get("total_cpu_seconds", best["total_cpu_hours"] * 3600) + extra, int(best["steps"])


def _ship_refiner(target: Path, refiner: Path | None, keep_own: bool) -> None:
    """Put ``refiner``'s network (its config and weights, not its first-stage doses) in the package folder; without
    one, a refiner of the weights just replaced goes (it would be refused), the shipped model's own stays."""
    own = target / OWN_REFINER
    if refiner is not None and Path(refiner).resolve() != own.resolve():
        own.mkdir(exist_ok=True)
        for name in (REFINER_WEIGHTS, REFINER_CONFIG):
            with atomic_path(own / name) as tmp:
                shutil.copyfile(Path(refiner) / name, tmp)
    elif refiner is None and not keep_own and own_refiner(target) is not None:
        shutil.rmtree(own)


def _logged_seconds(log_rows: list[dict[str, Any]], seconds: float, step: int, start: int = 0) -> tuple[float, bool]:
    """The run's training seconds already in the log and whether the run continues the log row it started from
    (``start``: the step a warm start began at, its first row with those steps; else the last row): it does
    unless it has fewer steps or CPU-seconds than that row (a new run, trained from scratch in another folder,
    whose seconds all count as this stretch's). An empty log is a run's start, not a new run."""
    if not log_rows:
        return 0.0, True
    last = next((r for r in log_rows if start and r["steps"] == start), log_rows[-1])
    logged = last.get("total_cpu_seconds", last["total_cpu_hours"] * 3600)  # older rows: hours to 0.01
    continues = step >= last["steps"] and seconds >= logged - 36
    return (logged, True) if continues else (0.0, False)


def _write_error_table(target: Path, val_dir: str | Path, predictions: Path) -> None:
    """The QA error table of the weights just shipped, from the validation predictions that scored them."""
    calibrate(Predictor(target, device="cpu"), val_dir, predictions=predictions)


def training_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / LOG_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def card_text(folder: Path, name: str = "openkbp") -> str:
    """MODEL_CARD.md as the folder's config, training log and comparison make it."""
    comparison, refiner = folder / COMPARISON_FILE, own_refiner(folder)
    return model_card(name, read_config(folder), training_log(folder),
                      comparison.read_text() if comparison.is_file() else "",
                      read_refiner(refiner) if refiner is not None else None)


def write_card(folder: Path, name: str = "openkbp") -> Path:
    """(Re)write MODEL_CARD.md from the folder's config, training log and comparison."""
    write_text(folder / CARD_FILE, card_text(folder, name))
    return folder / CARD_FILE


def write_weights(folder: Path, target: Path) -> None:
    """config.json and the EMA weights in float16 (half the size; the network computes in float32 or bf16).

    The shipped config picks its scan path on the user's machine (``auto``): a run may train on the compiled CPU
    kernel, which needs a compiler that a user who only predicts need not have."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in load_tensors(folder / "ema.safetensors").items()}
    with atomic_path(target / "ema.safetensors") as tmp:
        save_file(state, str(tmp))
    config = read_config(folder)
    if "scan_backend" in config["model"]:  # baselines have no scans
        config["model"]["scan_backend"] = "auto"
    write_json(target / "config.json", config)


def model_card(name: str, config: dict[str, Any], rows: list[dict[str, Any]], comparison: str = "",
               refiner: dict[str, Any] | None = None) -> str:
    """The model card's markdown: what the model is, how it was trained, what it scores (``refiner``: the
    ``refiner.json`` of the refinement stage it ships with)."""
    model, data, train = config["model"], config["data"], config["train"]
    best = min((r for r in rows if r.get("shipped")), key=lambda r: r["dose_score"], default=None)
    lines = [
        f"# mddose pretrained model `{name}`", "",
        f"{PRETRAINED[name]}. Load it with `mddose predict {name} DATA_DIR OUT_DIR`.", "",
        "## Data", "",
        "OpenKBP (AAPM 2020 challenge) head-and-neck plans: trained on `train-pats` (169 patients, 2 of them held",
        "out for validation during training), scored on all 33 `validation-pats`. The test patients were never seen.", "",
        "## Recipe", "",
        f"- Network: `{model['name']}`, {model['denoiser_block']} denoiser with a {model['encoder_block']} structure"
        f" encoder, convolutions at the {model.get('conv_levels', 0)} finest levels, widths {model['enc_widths']},"
        f" depths {model['enc_depths']}, SSM `{model['ssm_kind']}`.",
        f"- Inputs at {data['image_size']}²: {2 * data['context_slices'] + 1} CT slices (2.5D), prescription map,"
        f" 7 OAR masks{_target_context(data)}{_beam_prior(data)}; training crops {data['crop'] or 'none'}; augmentation"
        f" {data['augment']}.",
        _diffusion_line(config["diffusion"]), *_refiner_lines(refiner),
        f"- Optimiser: {train['optimizer']} lr {train['lr']} ({train['lr_schedule']}, horizon"
        f" {train['decay_steps']} steps), weight decay {train['weight_decay']} on"
        f" {'the matrices only' if train.get('weight_decay_on') == 'matrices' else 'every parameter'},"
        f" batch {train['batch_size']}, EMA {train['ema_decay']}, bf16 {train['bf16']}.",
        "",
        "## Scores (OpenKBP validation, 33 patients)", "",
    ]
    if best:
        lines += [f"Shipped weights: step {best['steps']:,}, {best['total_cpu_hours']} CPU-hours: dose score"
                  f" **{best['dose_score']:.3f} Gy**, DVH score **{best['dvh_score']:.3f} Gy** ({_sampler(best)}"
                  f" steps, {best['samples']} sample(s){_smoothing(best)}, {best['seconds_per_patient']} s per"
                  " patient on 2 CPU cores).", ""]
    lines += ["Scored by `mddose pretrained export runs/openkbp ../shared/openkbp/validation-pats`"
              " (predict + `mddose evaluate`).", "",
              "Each stretch of training warm-starts from the shipped weights (`scripts/train-openkbp.sh`, `mddose"
              " train --init-from`): a fresh optimizer and a short warm-up, steps and training time counted on; an"
              " input the recipe adds joins with zero weights, so the network starts as exactly the shipped one.", ""]
    if comparison:
        lines += [comparison.strip(), ""]
    lines += ["## Training log", "",
              "| date | CPU-minutes | total CPU-hours | steps | sampler | dose score (Gy) | DVH score (Gy) | shipped |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['date']} | {r['cpu_minutes']} | {r['total_cpu_hours']} | {r['steps']:,}"
              f"{' (new run)' if r.get('new_run') else ''} | {_sampler(r)}{_smoothing(r)} | "
              f"{r['dose_score']:.3f} | {r['dvh_score']:.3f} | "
              f"{'yes' if r['shipped'] else 'no'} |" for r in rows]
    notes = [f"- {r['date']}, step {r['steps']:,}: {r['note']}." for r in rows if r.get("note")]
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def _target_context(data: dict[str, Any]) -> str:
    """The card's words for ``data.target_context`` (empty when the model has none)."""
    offsets = data.get("target_context") or []
    return f", the prescription map at slice offsets ({', '.join(f'{o:+d}' for o in offsets)})" if offsets else ""


def _beam_prior(data: dict[str, Any]) -> str:
    """The card's words for ``data.beam_prior`` (empty when the model has none)."""
    if not data.get("beam_prior"):
        return ""
    angles = data.get("beam_angles") or []
    apertures = ", and per target the fraction of those fields whose aperture covers the pixel" if data.get(
        "beam_apertures") else ""
    return (f", the beam prior (the project's beam model run on the patient's anatomy with {len(angles)} coplanar"
            f" fields at {', '.join(f'{a:g}' for a in angles)}°; docs/experiments/beam-prior.md){apertures}")


def _refiner_lines(info: dict[str, Any] | None) -> list[str]:
    """The card's line on the 3D refinement stage the model ships with (none without one)."""
    if info is None:
        return []
    m = info["model"]
    return [(f"- 3D refinement stage: a 3D U-Net (widths {m['widths']}, trained on {'×'.join(map(str, m['patch']))} crops)"
             f" trained {info['steps_done']} steps on the first stage's doses of the {info['patients']} training"
             " patients corrects the stacked slices in place of the smoothing across slices"
             " (docs/experiments/refine-openkbp.md); `mddose predict --no-refiner` predicts without it.")]


def _diffusion_line(d: dict[str, Any]) -> str:
    """The recipe's diffusion: target, loss, how t is drawn, how the model samples."""
    share = d.get("final_t_fraction", 0.0)
    drawn = f"{share:.0%} of each batch at t = T − 1, the rest uniform" if share else "t uniform"
    spacing = " (trailing timesteps)" if d.get("timestep_spacing") == "trailing" else ""
    region = " inside the possible-dose mask" if d.get("loss_region") == "mask" else ""
    return (f"- Diffusion: {d['prediction_type']} prediction, T = {d['num_train_timesteps']},"
            f" {d.get('loss', 'mse').upper()} loss{region}, {drawn}; samples with {d.get('sampler', 'dpm++')}"
            f" {d.get('sampler_steps', 10)} step(s){spacing}.")


def _sampler(row: dict[str, Any]) -> str:
    """A log row's sampler: name and steps, and the spacing when it is not the scheduler's own."""
    spacing = " trailing" if row.get("timestep_spacing") == "trailing" else ""
    return f"{row['sampler']} {row['sampler_steps']}{spacing}"


def _smoothing(row: dict[str, Any]) -> str:
    """A log row's smoothing across slices or 3D refiner, when its predictions had one (rows before had none)."""
    if row.get("refiner"):
        return ", the 3D refiner"
    return f", {row['smooth_mm']:g} mm smoothing across slices outside the targets" if row.get("smooth_mm") else ""
