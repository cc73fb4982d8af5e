"""The methods one recipe can train (the rows of the paper's Table I, and the 3D originals): their ids and what
each is, and the names of the recipes (presets) a run starts from. Imports nothing heavy, so the command line can
name them in its help."""

from __future__ import annotations

#: The recipes a run starts from (``--preset``, a config file's ``"preset"``; built by
#: :func:`mddose.runs.run_config.run_preset`); the first is used when none is named
RUN_PRESETS: tuple[str, ...] = ("default", "paper", "small", "tiny")
DEFAULT_PRESET = RUN_PRESETS[0]

METHODS: dict[str, str] = {
    "md-dose": "MD-Dose: Mamba denoiser, Mamba structure encoder",
    "diffdp": "DiffDP-like: diffusion with a convolutional denoiser and convolutional structure encoder",
    "dosediff": "DoseDiff-like: diffusion on signed distance maps, convolutional encoders of the condition and the "
                "noisy dose fused at every scale by windowed attention, DDIM with 8 steps",
    "sp-diffdose": "SP-DiffDose-like: diffusion with a Swin-transformer denoiser and Swin structure encoder",
    "c3d": "C3D-like: cascade of two 2D U-Nets, voxel-wise loss",
    "hd-unet": "HD-UNet-like: densely connected 2D U-Net, voxel-wise loss",
    "c3d-3d": "C3D-like in 3D, as the original: trained on volume patches, predicted by sliding windows",
    "hd-unet-3d": "HD-UNet-like in 3D, as the original: trained on volume patches, predicted by sliding windows",
}
# the paper's row order
TABLE1_ORDER: tuple[str, ...] = ("c3d", "hd-unet", "diffdp", "dosediff", "sp-diffdose", "md-dose")


def row_name(method: str) -> str:
    """The method's name in the tables: ``"C3D-like"``, ``"MD-Dose"``…"""
    return METHODS[method].split(":", 1)[0]


def in_3d(method: str) -> str | None:
    """The 3D original of a 2D deterministic baseline (``"c3d"`` → ``"c3d-3d"``), else None."""
    return f"{method}-3d" if f"{method}-3d" in METHODS else None


def baselines_help() -> str:
    """The ``--method`` help: MD-Dose, or any other method on the same recipe."""
    return f"md-dose, or a Table I baseline on the same recipe: {', '.join(m for m in METHODS if m != 'md-dose')}."
