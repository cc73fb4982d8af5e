"""MD-Dose networks: the Mamba-UNet noise predictor, its structure encoder, blocks and selective scans.

Where each box of the paper's Fig. 2 lives: (b) Mamba-UNet -> :mod:`.unet`; (c) structure encoder ->
:mod:`.encoder`; (d) Mamba block -> :mod:`.mamba` (its stage wrapper with patch and time embedding:
:mod:`.stage`); the SSM layer's scans (eqs. 4-7) -> :mod:`.ssm`; ablation blocks -> :mod:`.blocks`; how the
U-Net meets the structure encoder at each level (added, or the DoseDiff-like transformer fusion) -> :mod:`.fusion`;
the deterministic baselines of Table I (C3D-like cascade, HD-UNet-like dense U-Net) -> :mod:`.baselines`;
configuration, presets and ablation rows -> :mod:`.config` (a leaf); the network factory -> :mod:`.build`.
"""

from mddose.models.baselines import BaselineConfig, baseline_config
from mddose.models.build import build_model, count_parameters, model_config_from_dict
from mddose.models.config import BLOCK_TYPES, ENCODER_TYPES, PRESETS, ModelConfig, ablation_configs, preset

__all__ = [
    "BaselineConfig",
    "baseline_config",
    "model_config_from_dict",
    "BLOCK_TYPES",
    "ENCODER_TYPES",
    "PRESETS",
    "ModelConfig",
    "ablation_configs",
    "build_model",
    "count_parameters",
    "preset",
]
