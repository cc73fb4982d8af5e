"""Weight-decay groups: "all" decays every parameter (the shipped recipe), "matrices" only the weights that
multiply activations, as nanoGPT and the Mamba reference do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mddose.models.build import build_model
from mddose.runs.run_config import TrainConfig
from mddose.training.loop import train
from mddose.training.optimizer import build_optimizer, param_groups
from tests.helpers import micro_config, phantom_cache


def _names(model: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("blocks", [("mamba", "mamba"), ("swin", "swin")])
def test_matrices_decay_and_the_rest_does_not(blocks: tuple[str, str]) -> None:
    model = build_model(replace(micro_config().model, denoiser_block=blocks[0], encoder_block=blocks[1]))
    decayed, free = param_groups(model, TrainConfig(weight_decay=0.05, weight_decay_on="matrices"))
    assert (decayed["weight_decay"], free["weight_decay"]) == (0.05, 0.0)
    decayed, free = _names(model, decayed), _names(model, free)
    assert decayed | free == {n for n, _ in model.named_parameters()} and not decayed & free
    leaf = {name.rsplit(".", 1)[-1] for name in free}
    special = {"mamba": {"A_log", "D", "dt_bias"}, "swin": {"rel_bias"}}[blocks[0]]
    assert special <= leaf  # marked by their modules, whatever their shape
    assert all(not name.endswith(tuple(special)) for name in decayed)
    assert any(name.endswith("bias") for name in free) and all(not name.endswith(".bias") for name in decayed)
    params = dict(model.named_parameters())
    assert all(params[name].ndim >= 2 for name in decayed) and any(params[n].ndim >= 2 for n in free)


def test_all_is_one_group_of_every_parameter() -> None:
    model = build_model(micro_config().model)
    (group,) = param_groups(model, TrainConfig(weight_decay=0.02))
    assert _names(model, group) == {n for n, _ in model.named_parameters()} and group["weight_decay"] == 0.02
    opt = build_optimizer(model, TrainConfig(optimizer="adam", lr=1e-3))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_undecayed_parameters_stay_put_without_gradient() -> None:
    """With no gradient, AdamW moves a parameter by its decay alone: "matrices" leaves A_log and D where they are."""
    model = build_model(micro_config().model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5, weight_decay_on="matrices"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (p.ndim >= 2 and not getattr(p, "_no_weight_decay", False) and bool(before[name].any())), name


def test_a_matrices_run_trains_and_resumes_bit_exact(tmp_path: Path) -> None:
    _, cache = phantom_cache(tmp_path, patients=2)
    cfg = micro_config(val_patients=0, weight_decay_on="matrices")
    train(cache, tmp_path / "straight", cfg, max_steps=4, progress=False)
    train(cache, tmp_path / "split", cfg, max_steps=2, progress=False)
    train(cache, tmp_path / "split", max_steps=4, resume=True, progress=False)
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / run / "checkpoints" / "last" / "model.safetensors") for run in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
