"""The run folder's layout, owned here and nowhere else::

    RUN_DIR/
      config.json              the RunConfig (model + data + diffusion + train)
      history.json             loss per logged step, validation scores, warnings
      loss.png                 the loss curve (and validation dose score)
      checkpoints/last/        newest state: config.json, model/ema/optimizer/rng .safetensors, trainer.json
      checkpoints/best/        best validation dose score so far (same files)

and a refiner's (``mddose refine``, the 3D refinement stage of :mod:`mddose.models.refiner`)::

    REFINER_DIR/
      refiner.json             what it refines (the first stage's weights and sampling), its network, training
      refiner.safetensors      its weights
      stage1/pt_N.npz          the first stage's dose of each training patient (normalised, float16)
      stage1/source.json       the weights (SHA-256) and sampling those doses came from

A model folder (a checkpoint, or a shipped model in ``mddose/weights/<name>/``) may hold its own refiner in
``refiner/`` (``refiner.json`` and ``refiner.safetensors`` only): ``predict`` then uses it by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mddose.atomic import recover_dir
from mddose.errors import MddoseError

CONFIG, HISTORY, TRAINER, LOSS_PLOT = "config.json", "history.json", "trainer.json", "loss.png"
PROFILE = "training_set.json"  # the training patients' range (mddose.inference.scope), shipped with the weights
CHECKPOINTS = ("last", "best")
REFINER_CONFIG, REFINER_WEIGHTS, FIRST_STAGE = "refiner.json", "refiner.safetensors", "stage1"
OWN_REFINER = "refiner"  # in a model folder: the refiner that ships with its weights
FIRST_STAGE_SOURCE = "source.json"  # in FIRST_STAGE: the weights and sampling its doses came from


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (``RunFolder(path).last`` is its newest checkpoint folder)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def history(self) -> Path:
        return self.root / HISTORY

    @property
    def loss_plot(self) -> Path:
        return self.root / LOSS_PLOT

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>``, put back first if a killed swap had moved it aside."""
        if name not in CHECKPOINTS:
            raise ValueError(f"checkpoint name must be one of {CHECKPOINTS}, not {name!r}")
        return recover_dir(self.root / "checkpoints" / name)

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    def trainer_state(self, name: str = "last") -> dict[str, Any] | None:
        """The checkpoint's ``trainer.json`` (step, seconds, best, ...), or None when there is none."""
        path = self.checkpoint(name) / TRAINER
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MddoseError(f"corrupt training state ({e})", path) from None

    def is_run(self) -> bool:
        """A config.json with a history or checkpoints beside it."""
        return self.config.is_file() and (self.history.is_file() or (self.root / "checkpoints").is_dir())

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunFolder | None:
        """The run a checkpoint folder belongs to (``RUN/checkpoints/best`` → ``RUN``), if it is one."""
        checkpoint = Path(checkpoint)
        root = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
        run = cls(root)
        return run if root.is_dir() and run.config.is_file() else None
