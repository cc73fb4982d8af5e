"""Options shared by the commands: the most draws, seeds, batches and patients a command accepts, ``--overwrite``,
a check that a number is finite (typer's ranges let ``nan`` through), and the MODEL argument that leads the paths
of predict, qa, qa-calibrate and finetune. Parsing only: no command logic."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer

from mddose.diffusion.process import SamplerName
from mddose.errors import MddoseError
from mddose.inference.bounds import MAX_SAMPLES, MAX_SMOOTH_MM

__all__ = ["MAX_BATCH", "MAX_PATIENTS", "MAX_SAMPLES", "MAX_SEED", "MAX_SMOOTH_MM", "MAX_STEPS", "MODEL_HELP",
           "Overwrite", "Pretrained", "SAMPLER_CHOICES", "finite", "model_and_paths"]

MAX_SEED = 2**31 - 1
MAX_BATCH = 1024  # slices per batch
MAX_PATIENTS = 1000  # phantoms or patients a command makes or times
SAMPLER_CHOICES = ", ".join(get_args(SamplerName))  # for the --sampler help
MAX_STEPS = 10_000  # sampler steps (the model's own limit, its training steps, is checked when it is loaded)
#: The --overwrite option of every command that replaces its own earlier output (never anything else).
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace this command's own earlier output there "
                                                            "(files it did not make are never touched).")]


def finite(value: float | None) -> float | None:
    """A typer callback refusing ``nan`` and ``inf`` (ranges compare false with nan, and inf has no upper bound
    where none is set)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def refiner_choice(refiner: Path | None, no_refiner: bool) -> Path | bool | None:
    """``--refiner DIR`` / ``--no-refiner`` as the predictor takes them (None: the model's own, if it has one)."""
    if refiner is not None and no_refiner:
        raise MddoseError("--refiner and --no-refiner contradict each other: give one")
    return False if no_refiner else refiner


MODEL_HELP = "MODEL: a run or checkpoint folder, or the name of a model shipped with mddose (openkbp)"
#: The earlier spelling of a shipped MODEL, kept working (with a warning) and out of the help.
Pretrained = Annotated[Optional[str], typer.Option(hidden=True, help="Deprecated: give the name as MODEL.")]


def model_and_paths(command: str, paths: list[Path], pretrained: str | None, expected: str,
                    counts: range) -> tuple[Path, list[Path]]:
    """The model folder MODEL names and the ``counts`` paths after it (``expected`` says which, for the error);
    ``--pretrained NAME`` (deprecated) stands for a MODEL named first."""
    from mddose.inference.pretrained import model_folder

    if pretrained:
        logging.getLogger("mddose").warning("--pretrained is deprecated: name the model first "
                                            "(mddose %s %s %s)", command, pretrained, expected)
        paths = [Path(pretrained), *paths]
    if not paths or len(paths) - 1 not in counts:
        raise MddoseError(f"expected MODEL {expected} ({MODEL_HELP})")
    return model_folder(paths[0]), paths[1:]
