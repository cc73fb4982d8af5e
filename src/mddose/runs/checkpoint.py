"""Checkpoints that load without unpickling anything: safetensors for tensors, JSON for the rest.

A checkpoint is a folder, written atomically (built under a temporary name, then renamed)::

    checkpoints/last/            (and checkpoints/best/)
      config.json                the full RunConfig: rebuilds the model with no other input
      model.safetensors          raw weights
      ema.safetensors            EMA weights (what prediction uses)
      optimizer.safetensors      optimizer tensors, flattened as state.<param index>.<name>
      trainer.json               step, epoch, position in the epoch, optimizer param groups and scalars,
                                 loss history, best validation score
      rng.safetensors            torch RNG states (CPU and CUDA), for a bit-exact resume

A checkpoint made for another architecture, or a truncated file, is a one-line :class:`MddoseError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mddose.atomic import atomic_dir
from mddose.errors import MddoseError
from mddose.runs.layout import TRAINER


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: str | Path,
    config: dict[str, Any],
    model: torch.nn.Module,
    ema: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainer: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically; omitted parts (e.g. for shipped weights) are left out."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(_cpu_state(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_cpu_state(ema), str(tmp / "ema.safetensors"))
        if optimizer is not None:
            tensors, meta = optimizer_to_flat(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            trainer = {**(trainer or {}), "optimizer": meta}
        if trainer is not None:
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, str(tmp / "rng.safetensors"))
            (tmp / TRAINER).write_text(json.dumps(trainer, indent=2) + "\n")
    return folder


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MddoseError("not a checkpoint folder (no config.json)", folder)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MddoseError(f"corrupt config ({e.msg})", path) from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MddoseError("missing checkpoint file", path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MddoseError(f"truncated or corrupt safetensors file ({e})", path) from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load weights, refusing (one line) a file made for another architecture."""
    _load_state(model, load_tensors(path), path)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:1]})"
        )
        raise MddoseError(f"weights do not fit this architecture: {detail}", path)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_widened(model: torch.nn.Module, path: Path) -> list[str]:
    """Load weights made for the same network with fewer input channels: where the model takes more channels
    along dimension 1 (a stem that reads a new structure channel), the new part is zero, so the model computes
    exactly what the weights did. Returns the widened parameters' names; anything else that differs is refused."""
    state = load_tensors(path)
    own = model.state_dict()
    widened = [k for k in own if k in state and own[k].shape != state[k].shape and _widens(state[k], own[k])]
    for k in widened:
        wide = torch.zeros_like(own[k])
        wide[:, : state[k].shape[1]] = state[k].to(own[k].dtype)
        state[k] = wide
    _load_state(model, state, path)
    return widened


def _widens(old: torch.Tensor, new: torch.Tensor) -> bool:
    """Whether ``new`` is ``old`` with more input channels (dimension 1) and nothing else changed."""
    return (old.ndim == new.ndim >= 2 and new.shape[1] > old.shape[1]
            and old.shape[:1] + old.shape[2:] == new.shape[:1] + new.shape[2:])


def load_trainer_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and RNG states; returns trainer.json's contents."""
    path = folder / TRAINER
    if not path.is_file():
        raise MddoseError("checkpoint has no training state to resume from", folder)
    try:
        trainer = json.loads(path.read_text())
        groups = trainer["optimizer"]
        if not isinstance(trainer.get("step"), int):
            raise KeyError("step")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise MddoseError(f"corrupt training state ({type(e).__name__}: {e}); resume from another checkpoint or "
                          "start a new run", path) from None
    optimizer_from_flat(optimizer, load_tensors(folder / "optimizer.safetensors"), groups)
    rng = load_tensors(folder / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return trainer


def warm_start_weights(folder: Path) -> Path:
    """The weights a warm start takes from a checkpoint or shipped-weights folder: the EMA, else the raw ones."""
    for name in ("ema", "model"):
        if (Path(folder) / f"{name}.safetensors").is_file():
            return Path(folder) / f"{name}.safetensors"
    raise MddoseError("no weights to start from (no ema.safetensors or model.safetensors)", folder)


def weights_lineage(folder: Path) -> dict[str, Any]:
    """How far the weights of ``folder`` were trained: ``{"step", "seconds"}`` from a checkpoint's trainer.json,
    or from the row of shipped weights' training log that shipped them."""
    folder = Path(folder)
    read_config(folder)  # one line if this is no checkpoint at all
    try:
        if (folder / TRAINER).is_file():
            trainer = json.loads((folder / TRAINER).read_text())
            return {"step": int(trainer["step"]), "seconds": float(trainer.get("seconds", 0.0))}
        log = json.loads((folder / "training_log.json").read_text()) if (folder / "training_log.json").is_file() else []
        shipped = [row for row in log if row.get("shipped")]
        if not shipped:
            return {"step": 0, "seconds": 0.0}
        row = shipped[-1]
        return {"step": int(row["steps"]), "seconds": float(row.get("total_cpu_seconds",
                                                                     row.get("total_cpu_hours", 0) * 3600))}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise MddoseError(f"unreadable training record ({type(e).__name__}: {e})", folder) from None


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file: ties what was measured or trained on a model's output (QA's error table, a
    refiner) to those weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
