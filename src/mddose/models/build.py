"""The network factory: a config (MD-Dose's :class:`~mddose.models.config.ModelConfig` or a baseline's
:class:`~mddose.models.baselines.BaselineConfig`) in, the network out. It sits above both so that the configs
stay leaves that every network module can import."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from mddose.models.baselines import BaselineConfig, build_baseline
from mddose.models.config import ModelConfig
from mddose.models.unet import MambaUNet


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig | BaselineConfig:
    """A network config from its JSON: a deterministic baseline when it names an ``arch``, else MD-Dose's."""
    return BaselineConfig.from_dict(data) if "arch" in data else ModelConfig.from_dict(data)


def build_model(config: ModelConfig | BaselineConfig, seed: int | None = None) -> nn.Module:
    """The network for ``config``.

    MD-Dose (a :class:`ModelConfig`): the noise predictor, ``model(x_t (B,in,H,W), t (B,), cond (B,cond,H,W))
    -> (B,out,H,W)``. A :class:`~mddose.models.baselines.BaselineConfig`: ``model(cond) -> dose (B,1,H,W)``.
    With ``seed`` the initial weights are reproducible and the global RNG state is left as it was.
    """
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        return build_baseline(config) if isinstance(config, BaselineConfig) else MambaUNet(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
