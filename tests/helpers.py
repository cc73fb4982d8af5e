"""Small runs shared by the training, prediction and CLI tests: 64³ phantoms and a micro network at 32²."""

from __future__ import annotations

from pathlib import Path

from mddose.data.cache import prepare_cache
from mddose.data.dataset import DataConfig
from mddose.data.phantom import write_phantoms
from mddose.diffusion.process import DiffusionConfig
from mddose.models.config import preset
from mddose.runs.run_config import RunConfig, TrainConfig


def micro_config(**train: object) -> RunConfig:
    """The tiny skeleton made smaller still and fed 32×32 slices: a training step takes ~0.1 s on a CPU."""
    model = preset("tiny", image_size=32, stem_channels=8, enc_widths=(8, 16, 16, 32), dec_widths=(16, 16, 8, 8),
                   time_embed_dim=16, drop_path=0.0, ssd_head_dim=16)  # 16: every level can be Mamba (layout)
    options = dict(batch_size=4, lr=2e-3, warmup_steps=0, val_patients=1, val_every=0, val_steps=2,
                   checkpoint_every_s=1e9, log_every=1)
    options.update(train)
    return RunConfig(model=model, data=DataConfig(image_size=32, augment=True), diffusion=DiffusionConfig(),
                     train=TrainConfig(**options))


def phantom_cache(root: Path, patients: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Write 64³ phantoms and their cache under ``root``; returns (data_dir, cache_dir)."""
    data, cache = root / "data", root / "cache"
    write_phantoms(data, n_patients=patients, seed=seed, grid=64, progress=False)
    prepare_cache(data, cache, progress=False)
    return data, cache


def trained_run(root: Path, patients: int = 3, steps: int = 4) -> tuple[Path, Path]:
    """A micro run trained ``steps`` steps on ``patients`` 64³ phantoms under ``root``; returns (run, data_dir)."""
    from mddose.training.loop import train

    data, cache = phantom_cache(root, patients=patients)
    train(cache, root / "run", micro_config(val_patients=0), max_steps=steps, progress=False)
    return root / "run", data
