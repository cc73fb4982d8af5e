"""Options shared by the commands: the most draws, seeds, batches and patients a command accepts, ``--overwrite``,
and a check that a number is finite (typer's ranges let ``nan`` through). Parsing only: no command logic."""

from __future__ import annotations

import math
from typing import Annotated, get_args

import typer

from mddose.diffusion.process import SamplerName
from mddose.inference.bounds import MAX_SAMPLES, MAX_SMOOTH_MM

__all__ = ["MAX_BATCH", "MAX_PATIENTS", "MAX_SAMPLES", "MAX_SEED", "MAX_SMOOTH_MM", "MAX_STEPS", "Overwrite",
           "SAMPLER_CHOICES", "finite"]

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
