"""``mddose finetune``: adapt a trained model (the shipped one, or a run) to a clinic's own plans, and show the gain.

A dose-prediction model learns one institution's planning style: its beams, its OAR trade-offs, its
normalisation. Fine-tuning on that institution's own plans is the cheapest way to close the gap. The command:

1. reads PATIENTS, a folder of the clinic's patients in OpenKBP layout or as DICOM folders (CT + RTSTRUCT + the
   clinical RTDOSE, imported on the fly with the ROI map), each with its planned dose;
2. holds the last K out (natural order; by default a fifth, at least 2) and scores the starting model on them;
3. trains from the starting weights (:func:`mddose.training.loop.train` with ``init_from``) for M minutes with
   the fine-tuning recipe :data:`RECIPE` (a low learning rate after a short warm-up, all layers, a fast EMA,
   validation on the held-out patients every few steps, whose best checkpoint is kept: early stopping);
4. scores the result on the same patients, writes a before/after evaluation and report page, and calibrates
   ``qa_errors.json`` on the held-out patients, so that ``qa``'s tolerances are the clinic's own.

Output: OUT_RUN is a run folder that ``predict``, ``qa`` and ``qa-calibrate`` take; what fine-tuning adds lives
in ``OUT_RUN/finetune/``::

    OUT_RUN/
      config.json  history.json  loss.png  training_set.json  checkpoints/{best,last}/   (best: + qa_errors.json)
      finetune/
        finetune.json          settings, the split, the before/after scores, the stages done (resumable)
        patients/<id>/         DICOM patients as imported (OpenKBP layout)
        train/  heldout/       the split, as links to the patient folders
        cache/                 the training cache (every patient; the held-out ones validate)
        before/  after/        predictions of the held-out patients by the starting and the fine-tuned model
        eval/  report/         mddose evaluate (before against after, paired t-tests) and its report page

Interrupted, it resumes: a re-run with the same PATIENTS and OUT_RUN continues from the last stage done, and
training from its last checkpoint with the minutes left. OUT_RUN is claimed as ``train`` claims a run
(:func:`mddose.ownership.claim`: new, empty, or this fine-tuning's own), before any work; ``finetune/`` is the
fine-tuning's own folder inside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from mddose.atomic import write_json
from mddose.data.cache import prepare_cache
from mddose.data.openkbp import find_file, natural_key
from mddose.errors import MddoseError
from mddose.evaluate.folders import evaluate
from mddose.inference.predict import predict
from mddose.inference.predictor import Predictor, checkpoint_folder
from mddose.inference.scope import require_target
from mddose.io.dicom_import import import_dicom
from mddose.ownership import claim, note_written
from mddose.qa.calibrate import calibrate
from mddose.qa.inputs import is_openkbp_folder
from mddose.runs.checkpoint import weights_lineage
from mddose.runs.layout import RunFolder
from mddose.runs.run_config import RunConfig, checkpoint_run_config
from mddose.training.loop import train
from mddose.viz.report import build_report

log = logging.getLogger(__name__)

STATE = "finetune.json"
MIN_TRAIN = 3  # patients to learn from, beside the held-out ones
MIN_HELD_OUT = 2
#: The fine-tuning recipe, over the starting model's training config (docs/experiments/finetune.md)
RECIPE: dict[str, Any] = {"lr": 3e-4, "warmup_steps": 20, "lr_schedule": "constant", "ema_decay": 0.99,
                          "val_every": 40, "checkpoint_every_s": 60.0, "weight_decay": 0.0}


def finetune(model: str | Path, patients_dir: str | Path, out_run: str | Path, minutes: float = 10.0,
             val_patients: int | None = None, roi_map: str | Path | None = None, device: str = "auto",
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` on the patients of ``patients_dir`` into ``out_run``; returns ``finetune.json``."""
    if not minutes > 0:
        raise MddoseError(f"--minutes must be positive, not {minutes}")
    start, out_run = checkpoint_folder(model), Path(out_run)
    inputs = [start, patients_dir, roi_map]
    # the run folder, claimed as train claims it (train fills it below), and the fine-tuning's own folder in it
    with (claim(out_run, "mddose train", inputs, resume=True) as run,
          claim(run / "finetune", "mddose finetune", inputs, resume=True) as work):
        return _stages(start, Path(patients_dir), run, work, minutes, val_patients, roi_map, device, progress)


def _stages(start: Path, patients_dir: Path, out_run: Path, work: Path, minutes: float, val_patients: int | None,
            roi_map: str | Path | None, device: str, progress: bool) -> dict[str, Any]:
    """Split, score before, train, score after, compare and calibrate: each stage once (see the module doc)."""
    state = _load_state(work, patients_dir, start, minutes)
    cfg = checkpoint_run_config(start)
    if "split" not in state:
        state["split"] = _split(_patient_folders(patients_dir, work, cfg, roi_map), val_patients)
        _save(work, state)
    heldout = _link_split(work, state["split"])
    if "before" not in state:
        state["before"] = _score(start, heldout, work / "before", device, progress)
        _save(work, state)
    _train(start, cfg, work, out_run, state, minutes, device, progress)
    if "after" not in state:
        state["after"] = _score(checkpoint_folder(out_run), heldout, work / "after", device, progress)
        _finish(work, out_run, heldout, device, progress)
        _save(work, state)
    return state


def _load_state(work: Path, patients_dir: str | Path, start: Path, minutes: float) -> dict[str, Any]:
    """The stages already done for the same patients and starting model, else a new state."""
    path = work / STATE
    settings = {"patients_dir": str(Path(patients_dir).resolve()), "start": str(start.resolve()),
                "minutes": minutes}
    if not path.is_file():
        return {"settings": settings}
    state = json.loads(path.read_text())
    if {k: state["settings"][k] for k in ("patients_dir", "start")} != {k: settings[k] for k in ("patients_dir",
                                                                                                  "start")}:
        raise MddoseError(f"this folder fine-tunes {state['settings']['start']} on "
                          f"{state['settings']['patients_dir']}: choose a new OUT_RUN", work)
    return state


def _save(work: Path, state: dict[str, Any]) -> None:
    write_json(work / STATE, state)


def _patient_folders(patients_dir: Path, work: Path, cfg: RunConfig, roi_map: str | Path | None) -> list[str]:
    """Every patient as an OpenKBP-layout folder (DICOM ones imported into ``work/patients``), each checked:
    a dose to learn from and a target the model knows. Returns their paths, in natural order."""
    if not patients_dir.is_dir():
        raise MddoseError("folder does not exist", patients_dir)
    folders = []
    for entry in sorted((p for p in patients_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        if not is_openkbp_folder(entry):
            entry = import_dicom(entry, work / "patients" / entry.name, roi_map=roi_map, rois=cfg.data.rois).patient_dir
        if find_file(entry, "dose") is None:
            raise MddoseError("no dose: fine-tuning learns from the clinic's planned doses (dose.csv or an RTDOSE)",
                              entry)
        require_target(entry, cfg.data.rois)
        folders.append(str(entry.resolve()))
    return folders


def _split(folders: list[str], val_patients: int | None) -> dict[str, list[str]]:
    """The last K patients held out (a fifth by default, at least 2), the rest to train on."""
    k = max(MIN_HELD_OUT, len(folders) // 5) if val_patients is None else val_patients
    if k < MIN_HELD_OUT:
        raise MddoseError(f"--val-patients must be at least {MIN_HELD_OUT}, not {k}")
    if len(folders) < k + MIN_TRAIN:
        raise MddoseError(f"fine-tuning needs at least {k + MIN_TRAIN} patients with a dose ({MIN_TRAIN} to train "
                          f"on, {k} held out), not {len(folders)}")
    names = [Path(f).name for f in folders]
    if len(set(names)) < len(names):
        raise MddoseError("two patients share a folder name: the names are their ids")
    return {"train": folders[:-k], "heldout": folders[-k:]}


def _link_split(work: Path, split: dict[str, list[str]]) -> Path:
    """``work/train`` and ``work/heldout`` as folders of links to the patients; returns the held-out folder."""
    for part, folders in split.items():
        (work / part).mkdir(parents=True, exist_ok=True)
        for folder in folders:
            link = work / part / Path(folder).name
            if not link.is_symlink():
                link.symlink_to(folder, target_is_directory=True)
                note_written(link)  # the fine-tuning's own (its claim's marker lists it)
    return work / "heldout"


def _score(model: Path, heldout: Path, out: Path, device: str, progress: bool) -> dict[str, float]:
    """Predict the held-out patients with ``model`` into ``out/pred`` and score them. Without the starting model's
    own 3D refiner: it is tied to the weights fine-tuning changes, so before and after both smooth across slices."""
    predict(model, heldout, out / "pred", device=device, nifti=False, progress=progress, refiner=False)
    summary = evaluate(heldout, [out / "pred"], out / "eval", names=["model"], gamma=False, progress=progress)
    scores = summary["methods"]["model"]["openkbp"]
    return {"dose_score": scores["dose_score"], "dvh_score": scores["dvh_score"]}


def _train(start: Path, cfg: RunConfig, work: Path, out_run: Path, state: dict[str, Any], minutes: float,
           device: str, progress: bool) -> None:
    """Train from ``start`` on every patient (the held-out ones validate) for what is left of ``minutes``."""
    if "trained" in state:
        return
    everyone = work / "everyone"
    _link_split(everyone, {"all": state["split"]["train"] + state["split"]["heldout"]})
    prepare_cache(everyone / "all", work / "cache", cfg.data.rois, progress, cfg.data.beam_angles)
    trainer = RunFolder(out_run).trainer_state()
    if trainer is None:  # a new run from the starting weights, whose own training seconds it counts on from
        state["start_seconds"] = weights_lineage(start)["seconds"]
        _save(work, state)
        k = len(state["split"]["heldout"])
        recipe = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, val_patients=k, **RECIPE))
        result = train(work / "cache", out_run, recipe, minutes=minutes, device=device, progress=progress,
                       init_from=start)
    else:  # resumed: the minutes left
        left = minutes * 60 - (trainer["seconds"] - state["start_seconds"])
        result = train(work / "cache", out_run, None, minutes=max(left, 6.0) / 60, resume=True, device=device,
                       progress=progress)
    state["trained"] = {"step": result["step"], "best": result["best"], "warning": result["warning"],
                        "seconds": round(result["seconds"] - state["start_seconds"], 1)}
    _save(work, state)


def _finish(work: Path, out_run: Path, heldout: Path, device: str, progress: bool) -> None:
    """Before against after (evaluation with paired t-tests, report page) and the clinic's QA error table."""
    evaluate(heldout, [work / "before" / "pred", work / "after" / "pred"], work / "eval", names=["before", "after"],
             against="before", gamma=False, progress=progress)
    build_report(work / "eval", work / "report", progress=progress)
    calibrate(Predictor(out_run, device=device, progress=progress), heldout, predictions=work / "after" / "pred",
              progress=progress)


def summary_lines(state: dict[str, Any], out_run: Path) -> list[str]:
    """One line each for the model before and after, and where the outputs are."""
    k = len(state["split"]["heldout"])
    lines = [f"{name:<6} dose score {state[name]['dose_score']:.3f} Gy, DVH score {state[name]['dvh_score']:.3f} Gy "
             f"on {k} held-out patients" for name in ("before", "after")]
    trained = state["trained"]
    lines.append(f"fine-tuned {trained['seconds'] / 60:.1f} min to step {trained['step']}; run {out_run} (for "
                 f"predict, qa), report {out_run / 'finetune' / 'report' / 'report.html'}")
    return lines
