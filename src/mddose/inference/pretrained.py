"""The model that ships with the package (``mddose predict --pretrained openkbp``) and how it is renewed.

Package folder of a shipped model::

    mddose/weights/<name>/
      config.json          the RunConfig that rebuilds the network
      ema.safetensors      the EMA weights in float16 (loaded into float32)
      training_log.json    one row per stretch of training: date, CPU-minutes, steps, validation scores
      comparison.md        the model beside the baselines at equal CPU time (measured, with its commands)
      qa_errors.json       its error per ROI and QA metric on the validation patients (``mddose qa``'s tolerances)
      MODEL_CARD.md        data, recipe, scores, comparison and training log, written from the files above
      training_set.json    the training patients' range (``predict`` warns outside it: mddose.inference.scope)

The shipped weights are where training goes on from: ``scripts/train-openkbp.sh`` warm-starts a run in
``models/<name>/run`` (kept out of git; only the shipped weights are committed, so a stretch adds about their
size to the repository) from them with ``models/<name>/recipe.json``, or resumes that run's local checkpoint;
:func:`mddose.experiments.shipping.export_run` (``mddose pretrained export``) scores it on the validation
patients, logs the stretch and replaces the shipped weights only when the validation dose score improved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mddose.atomic import atomic_path, write_json, write_text
from mddose.errors import MddoseError
from mddose.runs.checkpoint import load_tensors, read_config

WEIGHTS_ROOT = Path(__file__).parent.parent / "weights"  # src/mddose/weights
PRETRAINED: dict[str, str] = {"openkbp": "MD-Dose trained on the 169 OpenKBP training patients (head and neck)"}
LOG_FILE, CARD_FILE, COMPARISON_FILE = "training_log.json", "MODEL_CARD.md", "comparison.md"


def pretrained_folder(name: str) -> Path:
    """The package folder of shipped model ``name`` (a checkpoint folder that
    :func:`~mddose.inference.predictor.load_model` reads)."""
    if name not in PRETRAINED:
        raise MddoseError(f"unknown pretrained model {name!r}: choose {', '.join(PRETRAINED)}")
    folder = WEIGHTS_ROOT / name
    if not (folder / "ema.safetensors").is_file():
        raise MddoseError(f"pretrained model {name!r} is not installed (no ema.safetensors)", folder)
    return folder


def training_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / LOG_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def card_text(folder: Path, name: str = "openkbp") -> str:
    """MODEL_CARD.md as the folder's config, training log and comparison make it."""
    comparison = folder / COMPARISON_FILE
    return model_card(name, read_config(folder), training_log(folder),
                      comparison.read_text() if comparison.is_file() else "")


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


def model_card(name: str, config: dict[str, Any], rows: list[dict[str, Any]], comparison: str = "") -> str:
    """The model card's markdown: what the model is, how it was trained, what it scores."""
    model, data, train = config["model"], config["data"], config["train"]
    best = min((r for r in rows if r.get("shipped")), key=lambda r: r["dose_score"], default=None)
    lines = [
        f"# mddose pretrained model `{name}`", "",
        f"{PRETRAINED[name]}. Load it with `mddose predict --pretrained {name} DATA_DIR OUT_DIR`.", "",
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
        _diffusion_line(config["diffusion"]),
        f"- Optimiser: {train['optimizer']} lr {train['lr']} ({train['lr_schedule']}, horizon"
        f" {train['decay_steps']} steps), batch {train['batch_size']}, EMA {train['ema_decay']}, bf16 {train['bf16']}.",
        "",
        "## Scores (OpenKBP validation, 33 patients)", "",
    ]
    if best:
        lines += [f"Shipped weights: step {best['steps']:,}, {best['total_cpu_hours']} CPU-hours: dose score"
                  f" **{best['dose_score']:.3f} Gy**, DVH score **{best['dvh_score']:.3f} Gy** ({_sampler(best)}"
                  f" steps, {best['samples']} sample(s){_smoothing(best)}, {best['seconds_per_patient']} s per"
                  " patient on 2 CPU cores).", ""]
    lines += ["Scored by `mddose pretrained export models/openkbp/run ../shared/openkbp/validation-pats`"
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
    return (f", the beam prior (the project's beam model run on the patient's anatomy with {len(angles)} coplanar"
            f" fields at {', '.join(f'{a:g}' for a in angles)}°; docs/experiments/beam-prior.md)")


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
    """A log row's smoothing across slices, when its predictions had one (rows before it had none)."""
    return f", {row['smooth_mm']:g} mm smoothing across slices outside the targets" if row.get("smooth_mm") else ""
