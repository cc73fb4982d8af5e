"""The optimizer, and which parameters its weight decay reaches (``train.weight_decay_on``).

``"all"`` decays every parameter, as the shipped recipe was trained. ``"matrices"`` decays only the weights that
multiply activations (linear, convolution and projection tensors of two or more dimensions), as nanoGPT and the
Mamba reference do: norms, biases, and the parameters a module marks ``_no_weight_decay`` (the SSM's ``A_log``,
``D`` and ``dt_bias``, windowed attention's relative position bias) are left undecayed.
"""

from __future__ import annotations

import torch

from mddose.runs.run_config import TrainConfig


def decays(param: torch.nn.Parameter) -> bool:
    """Whether ``weight_decay_on = "matrices"`` decays ``param``."""
    return param.ndim >= 2 and not getattr(param, "_no_weight_decay", False)


def param_groups(model: torch.nn.Module, t: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: one for ``"all"``, decayed and undecayed ones for ``"matrices"``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if t.weight_decay_on == "all":
        return [{"params": params, "weight_decay": t.weight_decay}]
    return [{"params": [p for p in params if decays(p)], "weight_decay": t.weight_decay},
            {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or Adam (decay added to the gradient) over :func:`param_groups`."""
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(param_groups(model, t), lr=t.lr)
