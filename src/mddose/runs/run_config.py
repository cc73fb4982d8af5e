"""The run configuration: one dataclass per concern, saved as ``config.json`` with every run and checkpoint.

``RunConfig`` = model (:mod:`mddose.models.config`) + data (:class:`~mddose.data.dataset.DataConfig`) +
diffusion (:class:`~mddose.diffusion.process.DiffusionConfig`) + training (:class:`TrainConfig`). Its JSON
rebuilds the model with no other input. The model is MD-Dose's :class:`~mddose.models.config.ModelConfig`
(objective ``diffusion``) or a deterministic baseline's :class:`~mddose.models.baselines.BaselineConfig`
(objective ``regression``: its loss is the model's own, and the diffusion section is then unused).
:func:`method_config` gives every method of the paper's Table I on one recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mddose.data.dataset import DataConfig
from mddose.diffusion.process import DiffusionConfig, SamplerName
from mddose.errors import MddoseError
from mddose.models.baselines import BaselineConfig, baseline_config
from mddose.models.build import model_config_from_dict
from mddose.models.config import ModelConfig
from mddose.models.config import preset as model_preset
from mddose.runs.checkpoint import read_config
from mddose.runs.methods import DEFAULT_PRESET, METHODS, RUN_PRESETS
from mddose.typecheck import check_fields


@dataclass
class TrainConfig:
    """Optimisation. The default trains well in short budgets; see :func:`paper_preset` for the paper's."""

    batch_size: int = 16
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-2  # AdamW's decoupled decay: the small-data regularizer
    # which parameters it reaches: every one, or the matrices only (norms, biases, A_log, D, dt_bias left alone)
    weight_decay_on: Literal["all", "matrices"] = "all"
    lr_schedule: Literal["cosine", "constant", "paper"] = "cosine"
    warmup_steps: int = 100
    restart_step: int = 0  # the step a warm start (--init-from) began at: its warm-up and schedule start there
    decay_steps: int = 20000  # cosine horizon (steps); with --minutes the run may stop earlier
    ema_decay: float = 0.999  # EMA of the weights, warmed up as min(decay, (1 + step) / (10 + step))
    grad_clip: float = 1.0
    seed: int = 0
    max_steps: int = 20000  # default stop; --max-steps / --minutes override per invocation
    val_patients: int = 2  # held out from the training cache for periodic validation (0: none)
    val_every: int = 500  # steps
    val_sampler: SamplerName = "dpm++"
    val_steps: int = 10
    checkpoint_every_s: float = 60.0
    log_every: int = 10
    # autocast in bfloat16 where the device computes it natively (else float32, with a warning); the selective
    # scans still accumulate in float32
    bf16: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "train.")
        positive = {"batch_size": 1, "decay_steps": 1, "log_every": 1, "val_steps": 1}
        for name, least in positive.items():
            if getattr(self, name) < least:
                raise ValueError(f"train.{name} must be at least {least}, not {getattr(self, name)}")
        for name in ("warmup_steps", "restart_step", "max_steps", "val_patients", "val_every", "weight_decay",
                     "grad_clip", "checkpoint_every_s"):  # checkpoint_every_s = 0: after every step
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must not be negative, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be positive, not {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), not {self.ema_decay}")


@dataclass
class RunConfig:
    model: ModelConfig | BaselineConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for section in ("model", "data", "diffusion"):
            check_fields(getattr(self, section), f"{section}.")
        if self.model.cond_channels != self.data.cond_channels:
            raise ValueError(
                f"model expects {self.model.cond_channels} structure channels, data gives {self.data.cond_channels}"
            )
        if self.model.image_size != self.data.image_size:
            raise ValueError(f"model image_size {self.model.image_size} != data image_size {self.data.image_size}")
        if self.data.crop and isinstance(self.model, ModelConfig) and self.model.has_positions:
            raise ValueError("data.crop needs a network without absolute positions: set pos_embed and rope to false")
        if isinstance(self.model, BaselineConfig) and self.model.dims == 3 and self.data.slice_context:
            raise ValueError("a 3D baseline takes no 2.5D context: set data.context_slices to 0 and "
                             "data.target_context to []")

    @property
    def objective(self) -> Literal["diffusion", "regression"]:
        """``diffusion`` (MD-Dose and its diffusion baselines) or ``regression`` (deterministic baselines)."""
        return "regression" if isinstance(self.model, BaselineConfig) else "diffusion"

    @property
    def loss_region(self) -> str:
        """Where the training loss counts: ``image`` or ``mask`` (inside the possible-dose mask), the model's own
        setting for a baseline, the diffusion section's for a diffusion model."""
        return self.model.loss_region if isinstance(self.model, BaselineConfig) else self.diffusion.loss_region

    @property
    def volumetric(self) -> bool:
        """A 3D baseline: trained on volume crops, predicted by sliding windows (everything else works on slices)."""
        return isinstance(self.model, BaselineConfig) and self.model.dims == 3

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": asdict(self.data), "diffusion": asdict(self.diffusion),
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], network_follows_data: bool = False) -> RunConfig:
        """The config of ``d``'s sections, each built once; with ``network_follows_data`` the network takes the
        data's input size and structure channels (:func:`for_data`) instead of the ones ``d`` gives it."""
        model, data = model_config_from_dict(d["model"]), DataConfig.from_dict(d["data"])
        return cls(
            model=for_data(model, data) if network_follows_data else model,
            data=data,
            diffusion=DiffusionConfig.from_dict(d["diffusion"]),
            train=TrainConfig(**d["train"]),
        )


def for_data(model: ModelConfig | BaselineConfig, data: DataConfig) -> ModelConfig | BaselineConfig:
    """The network sized for ``data``. The data config owns the input size and the structure channels; a network
    config keeps a copy (its weights are built for them, and it must load without the data), and this is the one
    place that writes that copy. :class:`RunConfig` refuses a pair that disagrees."""
    return model.replace(image_size=data.image_size, cond_channels=data.cond_channels)


def paper_preset() -> RunConfig:
    """The published MD-Dose recipe. Where the paper and its code disagree, this follows the code.

    Paper (Sec. III-B): Adam, batch 16, 1500 epochs, lr 1e-2 decaying linearly after epoch 750 to 1e-4.
    Code (LinjieFu-U/mamba_dose ``train_struc.py``, ``diffusion_struc.py``): Adam at a constant lr 1e-4,
    batch 26, gradient clipping at 1.0, EMA 0.9999, dose scaled to [0, 1] with x_0 clamped to [0, 1] while
    sampling, DDPM ancestral sampling with the posterior variance (``mddose predict --sampler ddpm --steps
    1000``). The code's start from min-max-rescaled noise is a bug we do not repeat: sampling starts from a
    standard normal. Model: the ``paper`` network configuration (published widths and depths).
    """
    data = DataConfig()
    return RunConfig(
        model=for_data(model_preset("paper"), data),
        data=data,
        diffusion=DiffusionConfig(data_range="unit"),
        train=TrainConfig(
            batch_size=26, optimizer="adam", lr=1e-4, weight_decay=0.0, lr_schedule="constant",
            warmup_steps=0, ema_decay=0.9999, grad_clip=1.0, max_steps=200_000,
        ),
    )


def run_preset(name: str = DEFAULT_PRESET) -> RunConfig:
    """``paper`` (the published recipe), or ``default`` / ``small`` / ``tiny`` (our CPU recipe, the shipped model's).

    The CPU recipe predicts x_0 (``prediction_type="sample"``) rather than the paper's ε, which learns the dose
    slowly at low signal-to-noise (docs/measurements.md), on whole 2.5D slices; its L1 loss counts inside the
    possible-dose mask only, 80 % of each batch is drawn at t = T − 1, and it samples with one trailing DDIM step
    (docs/experiments/recipe-openkbp.md, sampler-openkbp.md). ``default`` also reads the beam prior and decays the
    matrices' weights only, as the shipped model does (docs/experiments/beam-prior.md); ``small`` and ``tiny`` do
    not. ``paper`` keeps ε.
    """
    if name == "paper":
        return paper_preset()
    if name in ("default", "small", "tiny"):
        data = DataConfig(context_slices=1, augment=True, beam_prior=name == "default")
        model = for_data(model_preset("small" if name == "default" else name), data)
        train = TrainConfig(lr=1e-3, warmup_steps=200, decay_steps=40_000, max_steps=40_000, val_every=1000,
                            val_sampler="ddim", val_steps=1, checkpoint_every_s=180.0,
                            weight_decay_on="matrices" if name == "default" else "all")
        diffusion = DiffusionConfig(prediction_type="sample", loss="l1", loss_region="mask", final_t_fraction=0.8,
                                    timestep_spacing="trailing", sampler="ddim", sampler_steps=1)
        return RunConfig(model=model, data=data, train=train, diffusion=diffusion)
    raise MddoseError(f"unknown preset {name!r}: choose {', '.join(RUN_PRESETS)}")


#: How DoseDiff's authors sample it (their ``pred.py --ddim 8``): the DoseDiff-like row's own sampler
DOSEDIFF_SAMPLING = ("ddim", 8)


def method_config(method: str, base: RunConfig, patch_size: tuple[int, int, int] | None = None) -> RunConfig:
    """Table I's ``method`` on the recipe of ``base``: same data, diffusion and training; only the network differs
    (and, for the DoseDiff-like row, what makes DoseDiff: its inputs and its sampler).

    The diffusion baselines swap MD-Dose's Mamba blocks for residual convolutions (DiffDP-like) or shifted-window
    attention (SP-DiffDose-like) in both the denoiser and the structure encoder, at the same widths and depths;
    the DoseDiff-like row is :func:`dosediff_config`;
    the deterministic baselines take the same level widths (:func:`~mddose.models.baselines.baseline_config`),
    in 2D (same input as MD-Dose) or, with the ``-3d`` methods, in 3D on volume patches (``patch_size``, default
    64³). The baselines train with the recipe's loss (``diffusion.loss``, MSE or L1), a 2D one in the recipe's loss
    region (``diffusion.loss_region``: the whole image or inside the possible-dose mask), a 3D one over the patch.
    """
    if not isinstance(base.model, ModelConfig):
        raise MddoseError("a method is built on an MD-Dose recipe, not on a baseline's")
    m = base.model
    if method == "md-dose":
        model: ModelConfig | BaselineConfig = m.replace(denoiser_block="mamba", encoder_block="mamba")
    elif method == "diffdp":
        model = m.replace(name=f"{m.name}-diffdp", denoiser_block="conv", encoder_block="conv")
    elif method == "dosediff":
        return dosediff_config(base)
    elif method == "sp-diffdose":
        model = m.replace(name=f"{m.name}-sp-diffdose", denoiser_block="swin", encoder_block="swin")
    elif method in ("c3d", "hd-unet", "c3d-3d", "hd-unet-3d"):
        volumes = method.endswith("-3d")
        shape = ({"dims": 3} | ({"patch_size": patch_size} if patch_size else {}) if volumes
                 else {"loss_region": base.diffusion.loss_region})
        extra = {"loss": base.diffusion.loss} | shape
        data = replace(base.data.without_slice_context(), crop=0) if volumes else base.data  # 3D: volume patches
        try:
            model = for_data(baseline_config("cascade" if method.startswith("c3d") else "dense", m, **extra), data)
        except ValueError as e:
            raise MddoseError(str(e)) from None
        return RunConfig(model=model, data=data, diffusion=base.diffusion, train=base.train)
    else:
        raise MddoseError(f"unknown method {method!r}: choose {', '.join(METHODS)}")
    return replace(base, model=model)


def dosediff_config(base: RunConfig) -> RunConfig:
    """The DoseDiff-like row on the recipe of ``base`` (docs/experiments/dosediff.md): each target and OAR as a
    signed distance map in mm (targets one channel each), convolutional encoders of the condition and of the noisy
    dose at MD-Dose's widths and depths, fused at every scale by windowed attention (``fusion="transformer"``),
    and sampled by default with DDIM in 8 steps, as its authors do. Training is the recipe's."""
    if base.data.target_context:
        raise MddoseError("the DoseDiff-like row gives each target its own distance map, which takes no target "
                          "context: remove data.target_context from the base recipe")
    m = base.model
    data = replace(base.data, target_encoding="per_level", structure_encoding="distance")
    model = for_data(m.replace(name=f"{m.name}-dosediff", denoiser_block="conv", encoder_block="conv",
                               fusion="transformer"), data)
    sampler, steps = DOSEDIFF_SAMPLING
    return replace(base, model=model, data=data, diffusion=replace(base.diffusion, sampler=sampler,
                                                                     sampler_steps=steps))


def load_run_config(path: str | Path) -> RunConfig:
    """Read a RunConfig JSON; a partial file overrides the ``preset`` it names (default: ``default``)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MddoseError(f"cannot read config ({e})", path) from None
    if not isinstance(d, dict):
        raise MddoseError(f"a config is a JSON object of sections, not a {type(d).__name__}", path)
    try:
        preset = run_preset(d.pop("preset", DEFAULT_PRESET))
    except MddoseError as e:
        raise MddoseError(str(e), path) from None
    base = preset.to_dict()
    for section, values in d.items():
        if section not in base:
            raise MddoseError(f"unknown config section {section!r}", path)
        if not isinstance(values, dict):
            raise MddoseError(f"section {section!r} must be a JSON object of fields, not {values!r}", path)
        if section == "model" and "arch" in values and isinstance(preset.model, ModelConfig):
            try:  # a deterministic baseline sized like the preset's network
                base["model"] = baseline_config(values["arch"], preset.model).to_dict()
            except ValueError as e:
                raise MddoseError(f"invalid config: {e}", path) from None
        base[section].update(values)
    sized = {"image_size", "cond_channels"} & set(d.get("model", {}))
    try:  # the network follows the data unless the file sizes it
        return RunConfig.from_dict(base, network_follows_data=not sized)
    except (TypeError, ValueError) as e:
        raise MddoseError(f"invalid config: {e}", path) from None
    except MddoseError as e:  # raised by a section without the file's name
        raise MddoseError(f"invalid config: {e}", path if e.path is None else None) from None


def checkpoint_run_config(folder: Path) -> RunConfig:
    """The RunConfig a checkpoint folder was trained with (its config.json), or one line naming the file."""
    try:
        return RunConfig.from_dict(read_config(folder))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MddoseError(f"config.json does not describe an mddose run ({type(e).__name__}: {e})",
                          folder / "config.json") from None


def new_horizon(cfg: RunConfig, decay_steps: int) -> RunConfig:
    """``cfg`` with its learning-rate schedule stretched (or shrunk) to end at ``decay_steps``: a resumed run that
    sat at the floor climbs back to the stretched schedule's rate at its step. The default stop (``max_steps``)
    moves with the end where it was the end, and is never before it."""
    t = cfg.train
    if t.lr_schedule == "constant":
        raise MddoseError("a new schedule end (--decay-steps) needs a decaying schedule; this run's lr_schedule "
                          "is constant")
    stop = decay_steps if t.max_steps == t.decay_steps else max(t.max_steps, decay_steps)
    return replace(cfg, train=replace(t, decay_steps=decay_steps, max_steps=stop))


def warm_start_config(cfg: RunConfig, step: int, decay_steps: int | None) -> RunConfig:
    """``cfg`` for a warm start from weights trained ``step`` steps: its warm-up restarts at that step, and a
    decaying schedule needs a new end beyond it (``decay_steps``)."""
    decays = cfg.train.lr_schedule != "constant"
    if decays and (decay_steps is None or decay_steps <= step + cfg.train.warmup_steps):
        raise MddoseError(f"a warm start from step {step} needs --decay-steps beyond step "
                          f"{step + cfg.train.warmup_steps} (the weights' steps plus the warm-up)")
    return replace(cfg, train=replace(cfg.train, restart_step=step))
