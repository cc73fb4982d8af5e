"""The 3D refinement stage at prediction time: a refiner (``mddose refine``) corrects its first stage's dose.

A refiner is tied to the weights it was trained on (their SHA-256 in ``refiner.json``): refining another model's
doses would apply corrections learnt for other errors, so it is refused. It replaces the smoothing across slices,
and like every prediction its dose is never negative and 0 outside the possible-dose mask. A model that ships
with its own refiner (:func:`own_refiner`) is refined by default.

The refiner trains on crops but is fully convolutional: it corrects the possible-dose mask's whole box in one pass
(padded to a size its levels halve), not in overlapping windows of its crop (their cost and the measured
difference: docs/experiments/refine-openkbp.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mddose.data.cache import CachedPatient
from mddose.data.dataset import DataConfig
from mddose.data.volume import mask_volume, structure_volume
from mddose.errors import MddoseError
from mddose.inference.regression import regress_volume
from mddose.models.refiner import Refiner, RefinerConfig, first_stage_input
from mddose.runs.checkpoint import load_weights, weights_sha256
from mddose.runs.layout import OWN_REFINER, REFINER_CONFIG, REFINER_WEIGHTS

log = logging.getLogger(__name__)


def own_refiner(model_folder: Path) -> Path | None:
    """The refiner that ships with the model in ``model_folder`` (its ``refiner/``), or None."""
    folder = Path(model_folder) / OWN_REFINER
    return folder if (folder / REFINER_CONFIG).is_file() else None


def chosen_refiner(model_folder: Path, refiner: str | Path | bool | None) -> Path | None:
    """The refiner a prediction uses: ``refiner`` when it names a folder, none when it is False, else (None) the
    model's own if it ships one."""
    if refiner is False:
        return None
    return own_refiner(model_folder) if refiner is None or refiner is True else Path(refiner)


def read_refiner(folder: str | Path) -> dict[str, Any]:
    """``refiner.json`` of a refiner folder (one line naming the folder when it is not one)."""
    path = Path(folder) / REFINER_CONFIG
    if not path.is_file() or not (Path(folder) / REFINER_WEIGHTS).is_file():
        raise MddoseError(f"not a refiner folder (no {REFINER_CONFIG} and {REFINER_WEIGHTS}: made by 'mddose refine')",
                          folder)
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise MddoseError(f"not valid JSON ({e})", path) from None


class Refinement:
    """A refiner ready to correct the doses of the model whose weights file is ``first_stage``."""

    def __init__(self, folder: str | Path, first_stage: Path, sampler: str, steps: int, device: torch.device) -> None:
        self.folder = Path(folder)
        info = read_refiner(self.folder)
        trained_on = info["first_stage"]
        if trained_on["weights_sha256"] != weights_sha256(first_stage):
            raise MddoseError(f"this refiner was trained on the doses of other weights ({trained_on['checkpoint']}), "
                              f"not {first_stage.parent}: train one for this model with 'mddose refine'", self.folder)
        if (trained_on["sampler"], trained_on["steps"]) != (sampler, steps):
            log.warning("the refiner in %s learnt from %s with %d steps; this prediction samples %s with %d steps",
                        self.folder, trained_on["sampler"], trained_on["steps"], sampler, steps)
        self.cfg = RefinerConfig(**info["model"])
        self.data = DataConfig.from_dict(info["data"])
        self.model = Refiner(self.cfg)
        load_weights(self.model, self.folder / REFINER_WEIGHTS)
        self.model = self.model.to(device).eval()
        self.device = device

    @property
    def info(self) -> dict[str, Any]:
        return {"refiner": str(self.folder)}

    def __call__(self, vol: CachedPatient, dose_gy: np.ndarray) -> np.ndarray:
        """The refined dose (Gy, full grid) of the first stage's ``dose_gy`` for the patient ``vol``."""
        norm, mask = self.data.dose_norm_gy, mask_volume(vol)[0] > 0.5
        if not mask.any():
            return np.zeros_like(dose_gy, dtype=np.float32)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))  # the windows cover the mask only
        zs = range(box[2].start, box[2].stop)
        structures = torch.from_numpy(structure_volume(vol, self.data, zs)[:, box[0], box[1]]).to(self.device)
        first = torch.from_numpy(np.asarray(dose_gy, np.float32)[box] / norm)[None].to(self.device)
        inside = torch.from_numpy(mask[box][None].astype(np.float32)).to(self.device)
        step = self.cfg.size_step
        whole = tuple(-(-s // step) * step for s in first.shape[1:])  # one window: the box, padded
        refined = regress_volume(self.model, first_stage_input(structures, first), inside, whole,
                                 self.data.n_ct_channels)
        out = np.zeros(mask.shape, np.float32)
        out[box] = refined[0].cpu().numpy() * norm
        return out
