"""Run configurations: presets, Table I methods on one recipe, JSON round trips, partial config files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mddose.errors import MddoseError
from mddose.models.baselines import BaselineConfig
from mddose.models.config import ModelConfig
from mddose.runs.run_config import (METHODS, RunConfig, for_data, load_run_config, method_config, new_horizon,
                                     run_preset)


def test_methods_differ_only_in_the_network() -> None:
    base = run_preset("tiny")
    rows = {m: method_config(m, base) for m in METHODS}
    assert all(r.train == base.train for r in rows.values())
    assert all(r.diffusion == base.diffusion for m, r in rows.items() if m != "dosediff")
    # the 3D baselines read volume patches: the same data without 2.5D context or slice crops
    assert all(r.data == base.data for m, r in rows.items() if not m.endswith("-3d") and m != "dosediff")
    assert all(r.data == replace(base.data, context_slices=0, crop=0) and r.model.cond_channels == 9
               for m, r in rows.items() if m.endswith("-3d"))
    assert rows["md-dose"].model == base.model
    assert (rows["diffdp"].model.denoiser_block, rows["diffdp"].model.encoder_block) == ("conv", "conv")
    assert (rows["sp-diffdose"].model.denoiser_block, rows["sp-diffdose"].model.encoder_block) == ("swin", "swin")
    assert rows["c3d"].model.arch == "cascade" and rows["hd-unet"].model.arch == "dense"
    assert {m: r.objective for m, r in rows.items()} == {
        "md-dose": "diffusion", "diffdp": "diffusion", "dosediff": "diffusion", "sp-diffdose": "diffusion",
        "c3d": "regression", "hd-unet": "regression", "c3d-3d": "regression", "hd-unet-3d": "regression"}
    assert (rows["c3d"].model.dims, rows["c3d-3d"].model.dims, rows["hd-unet-3d"].model.patch_size) == (2, 3, (64,) * 3)
    assert method_config("c3d-3d", base, patch_size=(32, 32, 16)).model.patch_size == (32, 32, 16)
    # the baselines train with the recipe's voxel-wise loss (the trainer applies its loss region)
    mse = replace(base, diffusion=replace(base.diffusion, loss="mse"))
    assert {r.model.loss for m, r in rows.items() if r.objective == "regression"} == {base.diffusion.loss}
    assert method_config("hd-unet", mse).model.loss == method_config("c3d-3d", mse).model.loss == "mse"
    masked = replace(base, diffusion=replace(base.diffusion, loss_region="mask"))
    assert method_config("c3d", masked).loss_region == method_config("md-dose", masked).loss_region == "mask"
    assert method_config("c3d-3d", masked).loss_region == "image"  # volume patches carry no mask
    assert method_config("c3d", base).loss_region == base.diffusion.loss_region
    with pytest.raises(MddoseError, match="patch_size"):
        method_config("hd-unet-3d", base, patch_size=(30, 32, 16))
    with pytest.raises(MddoseError, match="unknown method"):
        method_config("unet", base)
    with pytest.raises(MddoseError, match="MD-Dose recipe"):
        method_config("c3d", rows["c3d"])


def test_the_dosediff_row_is_what_makes_dosediff() -> None:
    """Distance maps of every target and OAR, two conv encoders fused by windowed attention at MD-Dose's widths,
    DDIM in 8 steps by default; the recipe otherwise."""
    base = run_preset("tiny")
    cfg = method_config("dosediff", base)
    assert cfg.data == replace(base.data, target_encoding="per_level", structure_encoding="distance")
    assert cfg.model.cond_channels == cfg.data.cond_channels == base.data.cond_channels + 2  # PTV56, PTV63, PTV70
    m = cfg.model
    assert (m.denoiser_block, m.encoder_block, m.fusion, m.enc_widths) == ("conv", "conv", "transformer",
                                                                          base.model.enc_widths)
    assert cfg.diffusion == replace(base.diffusion, sampler="ddim", sampler_steps=8)
    assert cfg.diffusion.sampling() == ("ddim", 8) and cfg.train == base.train
    context = replace(base.data, target_context=(-4, 4))
    with pytest.raises(MddoseError, match="takes no target context"):
        method_config("dosediff", replace(base, data=context, model=for_data(base.model, context)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_json_round_trip(method: str) -> None:
    cfg = method_config(method, run_preset("tiny"))
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and type(again.model) is type(cfg.model)


def test_partial_config_file_makes_a_baseline(tmp_path: Path) -> None:
    path = tmp_path / "c3d.json"
    path.write_text(json.dumps({"preset": "tiny", "model": {"arch": "cascade", "loss": "l1"},
                                "train": {"lr": 1e-3}}))
    cfg = load_run_config(path)
    assert isinstance(cfg.model, BaselineConfig) and cfg.model.loss == "l1" and cfg.train.lr == 1e-3
    assert cfg.model.widths == run_preset("tiny").model.enc_widths and cfg.objective == "regression"
    path.write_text(json.dumps({"model": {"denoiser_block": "swin"}}))
    cfg = load_run_config(path)
    assert isinstance(cfg.model, ModelConfig) and cfg.model.denoiser_block == "swin"


@pytest.mark.parametrize(
    ("content", "message"),
    [("{", "cannot read config"), ('{"optimizer": {}}', "unknown config section"),
     ('{"model": {"arch": "vnet"}}', "invalid config"), ('{"train": {"lr": 1, "nope": 2}}', "invalid config"),
     ('{"data": {"structure_encoding": "sdf"}}', "structure_encoding must be 'mask' or 'distance', not 'sdf'"),
     ('{"model": {"fusion": "cross"}}', r"fusion 'cross' is not one of \('add', 'transformer'\)")],
)
def test_bad_config_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MddoseError, match=message) as info:
        load_run_config(path)
    assert "bad.json" in str(info.value)


def test_3d_baseline_takes_no_context() -> None:
    cfg = method_config("c3d-3d", run_preset("tiny"))
    with pytest.raises(ValueError, match="2.5D"):
        RunConfig(model=cfg.model.replace(cond_channels=11), data=replace(cfg.data, context_slices=1))
    with pytest.raises(ValueError, match="2.5D"):
        RunConfig(model=cfg.model.replace(cond_channels=10), data=replace(cfg.data, target_context=(2,)))
    base = run_preset("tiny")
    context = replace(base.data, target_context=(-4, 4))
    with_context = replace(base, data=context, model=for_data(base.model, context))
    assert method_config("c3d-3d", with_context).data == replace(context, context_slices=0, target_context=())
    assert method_config("c3d", with_context).data.target_context == (-4, 4)


def test_a_new_schedule_end_moves_the_default_stop_with_it() -> None:
    cfg = run_preset("tiny")  # its stop is its schedule's end
    assert cfg.train.max_steps == cfg.train.decay_steps
    assert (new_horizon(cfg, 300).train.decay_steps, new_horizon(cfg, 300).train.max_steps) == (300, 300)
    later_stop = replace(cfg, train=replace(cfg.train, decay_steps=100, max_steps=500))
    assert new_horizon(later_stop, 300).train.max_steps == 500 and new_horizon(later_stop, 900).train.max_steps == 900
    with pytest.raises(MddoseError, match="constant"):
        new_horizon(replace(cfg, train=replace(cfg.train, lr_schedule="constant")), 300)


def test_unknown_preset() -> None:
    with pytest.raises(MddoseError, match="unknown preset"):
        run_preset("huge")


def test_the_network_follows_the_data_it_reads(tmp_path: Path) -> None:
    """The data config owns the input size and channels: a partial file that changes them resizes the network;
    a file that also states the network's own, different values is refused (the default recipe reads the beam
    prior: 5 CT slices, 8 structures and the prior)."""
    follows = tmp_path / "follows.json"
    follows.write_text(json.dumps({"data": {"context_slices": 2, "image_size": 64, "crop": 0}}))
    cfg = load_run_config(follows)
    assert (cfg.model.cond_channels, cfg.model.image_size) == (cfg.data.cond_channels, 64) == (14, 64)
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"data": {"context_slices": 2}, "model": {"cond_channels": 11}}))
    with pytest.raises(MddoseError, match="model expects 11 structure channels, data gives 14"):
        load_run_config(clash)


def test_the_default_recipe_is_the_shipped_models() -> None:
    """`mddose train` without a config trains what the shipped model `openkbp` was trained with (but its learning-rate
    schedule, which the shipped run restarts between stretches, and the step its last warm start began at)."""
    from mddose.inference.pretrained import WEIGHTS_ROOT

    shipped = RunConfig.from_dict(json.loads((WEIGHTS_ROOT / "openkbp" / "config.json").read_text()))
    default = run_preset("default")
    assert (default.model, default.data, default.diffusion) == (shipped.model, shipped.data, shipped.diffusion)
    schedule = ("lr", "warmup_steps", "decay_steps", "max_steps", "restart_step")
    assert replace(shipped.train, **{k: getattr(default.train, k) for k in schedule}) == default.train
