"""The model that ships with the package (``mddose predict openkbp DATA_DIR OUT_DIR``) and how it is renewed.

Package folder of a shipped model::

    mddose/weights/<name>/
      config.json          the RunConfig that rebuilds the network
      ema.safetensors      the EMA weights in float16 (loaded into float32)
      training_log.json    one row per stretch of training: date, CPU-minutes, steps, validation scores
      comparison.md        the model beside the baselines at equal CPU time (measured, with its commands)
      qa_errors.json       its error per ROI and QA metric on the validation patients (``mddose qa``'s tolerances)
      MODEL_CARD.md        data, recipe, scores, comparison and training log, written from the files above
      training_set.json    the training patients' range (``predict`` warns outside it: mddose.inference.scope)
      refiner/             optional: the 3D refiner trained for these weights (refiner.json, refiner.safetensors),
                           used by ``predict`` unless told not to (mddose.inference.refinement)

This module finds them; :mod:`mddose.experiments.shipping` makes them. The shipped weights are where training goes
on from: ``scripts/train-openkbp.sh`` warm-starts a run in ``runs/<name>`` (kept out of git; only the shipped
weights are committed, so a stretch adds about their size to the repository) from them with
``recipes/<name>.json``, or resumes that run's local checkpoint; :func:`mddose.experiments.shipping.export_run`
(``mddose pretrained export``) scores it on the validation patients, logs the stretch, writes the card and
replaces the shipped weights only when the validation dose score improved.
"""

from __future__ import annotations

from pathlib import Path

from mddose.errors import MddoseError

WEIGHTS_ROOT = Path(__file__).parent.parent / "weights"  # src/mddose/weights
PRETRAINED: dict[str, str] = {"openkbp": "MD-Dose trained on the 169 OpenKBP training patients (head and neck)"}


def pretrained_folder(name: str) -> Path:
    """The package folder of shipped model ``name`` (a checkpoint folder that
    :func:`~mddose.inference.predictor.load_model` reads)."""
    if name not in PRETRAINED:
        raise MddoseError(f"unknown pretrained model {name!r}: choose {', '.join(PRETRAINED)}")
    folder = WEIGHTS_ROOT / name
    if not (folder / "ema.safetensors").is_file():
        raise MddoseError(f"pretrained model {name!r} is not installed (no ema.safetensors)", folder)
    return folder


def model_folder(model: str | Path) -> Path:
    """What a command's MODEL argument names: the bare name of a shipped model (``openkbp``) that model, anything
    else a run or checkpoint folder. A run or checkpoint folder here that has a shipped model's name is refused as
    ambiguous (a data folder of that name, as ``openkbp/`` beside its patients' splits, is not a model)."""
    if str(model) not in PRETRAINED:
        return Path(model)
    if (Path(model) / "config.json").is_file() or (Path(model) / "checkpoints").is_dir():
        raise MddoseError(f"'{model}' is both a model shipped with mddose and a folder here: give the folder as "
                          f"{Path(model).resolve()}, or rename it", model)
    return pretrained_folder(str(model))
