"""MD-Dose networks: the Mamba-UNet noise predictor, its structure encoder, blocks and selective scans.

Where each box of the paper's Fig. 2 lives: (b) Mamba-UNet -> :mod:`.unet`; (c) structure encoder ->
:mod:`.encoder`; (d) Mamba block -> :mod:`.mamba` (its stage wrapper with patch and time embedding:
:mod:`.stage`); the SSM layer's scans (eqs. 4-7) -> :mod:`.ssm`; ablation blocks -> :mod:`.blocks`;
configuration, presets and ablation rows -> :mod:`.config`.
"""

from mddose.models.config import (
    BLOCK_TYPES,
    ENCODER_TYPES,
    PRESETS,
    ModelConfig,
    ablation_configs,
    build_model,
    count_parameters,
    preset,
)

__all__ = [
    "BLOCK_TYPES",
    "ENCODER_TYPES",
    "PRESETS",
    "ModelConfig",
    "ablation_configs",
    "build_model",
    "count_parameters",
    "preset",
]
