"""Training the 3D refinement stage (``mddose refine MODEL CACHE_DIR OUT_DIR``), top to bottom: the first stage's
dose of every training patient, random crops of it beside the structures, an L1 loss inside the possible-dose
mask, the refiner's weights and ``refiner.json`` (folder layout: :mod:`mddose.runs.layout`).

The first stage predicts the patients it was trained on, so its doses here are better than on new patients: the
refiner learns the slice-wise model's systematic errors (the edges across slices, the spread between slices),
not its generalisation gap. An interrupted run keeps the first-stage doses already written and trains again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mddose.atomic import atomic_path, write_json
from mddose.data.cache import Cache
from mddose.data.dataset import DataConfig
from mddose.data.volume import crop_origin, dose_volume, mask_volume, structure_volume
from mddose.diffusion.process import region_loss
from mddose.errors import MddoseError
from mddose.inference.predictor import Predictor
from mddose.models.refiner import Refiner, RefinerConfig, first_stage_input
from mddose.ownership import claim
from mddose.runs.checkpoint import weights_sha256
from mddose.runs.layout import FIRST_STAGE, FIRST_STAGE_SOURCE, REFINER_CONFIG, REFINER_WEIGHTS
from mddose.runs.run_config import TrainConfig
from mddose.training.optimizer import build_optimizer

log = logging.getLogger(__name__)


@dataclass
class RefineConfig:
    """How a refiner trains (saved in ``refiner.json``); ``model.cond_channels`` follows the first stage's data."""

    model: RefinerConfig = field(default_factory=RefinerConfig)
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    crops_per_patient: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = RefinerConfig(**self.model)
        if min(self.steps, self.batch_size, self.crops_per_patient) < 1 or not self.lr > 0:
            raise ValueError(f"refine: steps, batch size and crops must be at least 1 and lr positive, not {self}")


class RefineCrops(Dataset):
    """Random ``patch`` crops: (refiner input (C + 1, *patch), dose (1, *patch), mask (1, *patch))."""

    def __init__(self, cache: Cache, data: DataConfig, first_stage: Path, patch: tuple[int, int, int],
                 crops_per_patient: int) -> None:
        self.cache, self.data, self.first_stage, self.patch = cache, data, first_stage, patch
        self.ids, self.crops = cache.patient_ids, crops_per_patient
        self._doses: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids) * self.crops

    def first_dose(self, pid: str) -> np.ndarray:
        if pid not in self._doses:
            with np.load(self.first_stage / f"{pid}.npz") as f:
                self._doses[pid] = f["dose"]
        return self._doses[pid]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pid = self.ids[i % len(self.ids)]
        vol = self.cache.get(pid)
        (x0, y0, z0), (px, py, pz) = crop_origin(vol, self.patch), self.patch
        zs, box = range(z0, z0 + pz), (slice(None), slice(x0, x0 + px), slice(y0, y0 + py))
        structures = torch.from_numpy(structure_volume(vol, self.data, zs)[box])
        first = torch.from_numpy(self.first_dose(pid)[None, x0:x0 + px, y0:y0 + py, z0:z0 + pz].astype(np.float32))
        dose, mask = dose_volume(vol, self.data, zs)[box], mask_volume(vol, zs)[box]
        return first_stage_input(structures, first), torch.from_numpy(dose), torch.from_numpy(mask)


def first_stage_doses(predictor: Predictor, cache: Cache, folder: Path, progress: bool) -> None:
    """The first stage's dose of every cached patient (normalised, float16) into ``folder``; kept ones stay."""
    todo = [pid for pid in cache.patient_ids if not (folder / f"{pid}.npz").is_file()]
    for pid in tqdm(todo, desc="first stage", unit="pt", disable=not progress):
        dose = predictor.predict_prepared(cache.get(pid)).mean / predictor.cfg.data.dose_norm_gy
        with atomic_path(folder / f"{pid}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, dose=dose.astype(np.float16))


def train_refiner(model: str | Path, cache_dir: str | Path, out_dir: str | Path, cfg: RefineConfig | None = None,
                  sampler: str | None = None, steps: int | None = None, minutes: float | None = None,
                  device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train a refiner for ``model`` (a run, checkpoint or shipped model) on the cache's patients, from its doses
    sampled with ``sampler`` and ``steps`` (default: the model's own, as it predicts); returns ``refiner.json``'s
    content. ``minutes`` stops the training early (the first stage's doses not counted)."""
    cfg = cfg or RefineConfig()
    cache = Cache(cache_dir)
    with claim(out_dir, "mddose refine", inputs=[model, cache_dir], resume=True) as out:
        predictor = Predictor(model, sampler, steps, smooth_mm=0.0, device=device, progress=False, refiner=False)
        first_stage = _first_stage(out / FIRST_STAGE, predictor)
        data = predictor.cfg.data.without_slice_context()
        cfg.model.cond_channels = data.cond_channels
        first_stage_doses(predictor, cache, out / FIRST_STAGE, progress)
        refiner, losses, seconds = _fit(cfg, RefineCrops(cache, data, out / FIRST_STAGE, cfg.model.patch,
                                                         cfg.crops_per_patient), predictor.device, minutes, progress)
        with atomic_path(out / REFINER_WEIGHTS) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in refiner.state_dict().items()}, str(tmp))
        info = {"first_stage": first_stage, "model": cfg.model.to_dict(), "data": data.to_dict(), "train": asdict(cfg), "cache_dir": str(cache_dir),
                "patients": len(cache), "steps_done": len(losses), "seconds": round(seconds, 1),
                "loss": [round(x, 6) for x in losses[:: max(1, len(losses) // 200)]]}
        write_json(out / REFINER_CONFIG, info)
    return info


def _first_stage(folder: Path, predictor: Predictor) -> dict[str, Any]:
    """What makes the first stage's doses (weights and sampling), written once into ``folder``; a folder holding
    the doses of other weights or sampling is refused (they would be mixed)."""
    ident = {"checkpoint": str(predictor.folder), "weights_sha256": weights_sha256(predictor.weights),
             "sampler": predictor.sampler, "steps": predictor.steps}
    path = folder / FIRST_STAGE_SOURCE
    if path.is_file():
        held = json.loads(path.read_text())
        if [held.get(k) for k in ("weights_sha256", "sampler", "steps")] != [ident[k] for k in
                                                                              ("weights_sha256", "sampler", "steps")]:
            raise MddoseError("holds the first-stage doses of other weights or sampling: choose another folder",
                              folder)
    else:
        write_json(path, ident)
    return ident


def _fit(cfg: RefineConfig, crops: RefineCrops, device: torch.device, minutes: float | None,
         progress: bool) -> tuple[Refiner, list[float], float]:
    """The refiner trained for ``cfg.steps`` (or ``minutes``): AdamW, warm-up then cosine, L1 inside the mask."""
    torch.manual_seed(cfg.seed)
    refiner = Refiner(cfg.model).to(device).train()
    optimizer = build_optimizer(refiner, TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                     weight_decay_on="matrices"))
    loader = DataLoader(crops, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    losses: list[float] = []
    start, bar = time.perf_counter(), tqdm(total=cfg.steps, desc="refine", unit="step", disable=not progress)

    def done() -> bool:
        return len(losses) >= cfg.steps or (minutes is not None and time.perf_counter() - start > minutes * 60)

    while not done():
        for x, dose, mask in loader:
            for group in optimizer.param_groups:
                group["lr"] = _lr(len(losses), cfg)
            loss = region_loss(torch.nn.functional.l1_loss, refiner(x.to(device)).float(), dose.to(device),
                               mask.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if done():
                break
    bar.close()
    return refiner.eval(), losses, time.perf_counter() - start


def _lr(step: int, cfg: RefineConfig) -> float:
    """Linear warm-up, then a cosine to 1 % of ``cfg.lr`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
