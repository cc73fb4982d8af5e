"""One patient's volume predicted by a model in memory: every axial slice that meets the possible-dose mask,
sampled in batches and reassembled on the full grid (:func:`predict_volume`). Training's validation and the
timing experiment call it with their own networks; everything that opens a saved model goes through
:class:`~mddose.inference.predictor.Predictor`.

K samples are K draws of every batch of slices, one after another from one generator seeded once per patient:
their mean is the prediction, their standard deviation the uncertainty (:class:`PatientDose`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mddose.data.cache import CachedPatient
from mddose.data.dataset import mirror_swaps, patient_window, resize_inputs, slice_mask, structure_channels, swapped_order
from mddose.device import ThreadTuner
from mddose.diffusion.sampling import draw_samples, mean_and_spread
from mddose.errors import MddoseError
from mddose.inference.bounds import check_predicted
from mddose.inference.regression import predict_volume_3d, regress
from mddose.inference.smoothing import default_smoothing, smooth_across_slices
from mddose.runs.run_config import RunConfig

Window = tuple[slice, slice]
#: ``draw(cond, mask) -> draws`` (K, B, 1, H, W): the network's K draws for a batch of slices.
Draw = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PatientDose:
    """One patient's prediction on the full (X, Y, Z) grid, in Gy, 0 outside the possible-dose mask.

    ``mean``: the prediction (the mean of the K draws, smoothed across slices); ``spread``: the per-voxel standard
    deviation of the draws (unsmoothed; 0 for one draw and for deterministic models); ``draws``: the K draws
    (K, X, Y, Z), each smoothed as the mean is, only when asked for (QA's per-sample metrics).
    """

    mean: np.ndarray
    spread: np.ndarray
    draws: np.ndarray | None = None

    def scaled(self, factor: float) -> PatientDose:
        """Every dose times ``factor`` (a stated prescription's scale), in float32."""
        f = np.float32(factor)
        return replace(self, mean=self.mean * f, spread=self.spread * f,
                       draws=None if self.draws is None else self.draws * f)


def prediction_window(vol: CachedPatient, cfg: RunConfig) -> Window:
    """The in-plane part of the grid the network sees: the patient's box for a network trained on crops (nothing
    of the possible-dose mask lies outside it), else the whole slice."""
    return patient_window(vol, cfg.model.size_multiple) if cfg.data.crop else (slice(None), slice(None))


def slice_inputs(vol: CachedPatient, zs: list[int], cfg: RunConfig, window: Window,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's input for axial slices ``zs``, as in training: (structure channels, possible-dose mask in
    ``window``, that mask at the network's size). Without crops both are resized to ``cfg.data.image_size``."""
    wx, wy = window
    cond = torch.from_numpy(np.stack([structure_channels(vol, z, cfg.data)[:, wx, wy] for z in zs])).to(device)
    mask = torch.from_numpy(np.stack([slice_mask(vol, z)[:, wx, wy] for z in zs])).to(device)
    cond, mask_in = (cond, mask) if cfg.data.crop else resize_inputs(cond, mask, cfg.data)
    return cond, mask, mask_in


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    cfg: RunConfig,
    vol: CachedPatient,
    *,
    sampler: str = "dpm++",
    steps: int = 20,
    samples: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
    tuner: ThreadTuner | None = None,
    mirror: bool = False,
    smooth_mm: float | None = None,
    keep_draws: bool = False,
) -> PatientDose:
    """Predict one patient with ``samples`` draws per slice (see the module docstring); ``keep_draws`` keeps them.

    ``tuner`` is told each batch's time (it picks the CPU thread count from them). ``mirror`` also predicts the
    patient mirrored left-right (paired organs swapped, as the training flips do) and averages the two
    (:func:`mirror_average`); it doubles the cost. ``smooth_mm``: the Gaussian across slices of the dose
    (:mod:`~mddose.inference.smoothing`; default: the model's, :func:`~mddose.inference.smoothing.default_smoothing`)
    outside the targets; the spread stays that of the unsmoothed draws.

    A deterministic baseline (``cfg.objective == "regression"``) ignores sampler, steps and samples: one
    forward pass per slice (a 3D one: Gaussian-blended sliding windows over the volume), spread 0.
    """
    device = device or next(model.parameters()).device
    if cfg.volumetric:  # a 3D baseline: sliding windows over the whole volume
        dose = predict_volume_3d(model, cfg.model, cfg.data, vol, device)
        draws = dose[None] if keep_draws else None
        std = np.zeros(vol.full_shape, np.float32)
    else:
        draw = _drawer(model, cfg, sampler, steps, samples, torch.Generator(device=device).manual_seed(seed))
        dose, std, draws = _predict_slices(draw, cfg, vol, batch_size, device, progress, tuner, mirror, keep_draws)
    sigma = default_smoothing(cfg.volumetric) if smooth_mm is None else smooth_mm
    dose = _smoothed(dose, vol, cfg, sigma)
    draws = None if draws is None else np.stack([_smoothed(d, vol, cfg, sigma) for d in draws])
    if not all(np.isfinite(a).all() for a in (dose, std, draws) if a is not None):  # never written: no NaN doses
        raise MddoseError(f"{vol.patient_id}: the network produced non-finite doses")
    check_predicted(dose, cfg.data, vol.patient_id)  # nor a dose no plan reaches (an edited dose_norm_gy)
    return PatientDose(dose, std, draws)


def _smoothed(dose: np.ndarray, vol: CachedPatient, cfg: RunConfig, sigma_mm: float) -> np.ndarray:
    """``dose`` smoothed across slices by ``sigma_mm`` inside the possible-dose mask, the targets' dose kept."""
    targets = vol.full_mask(cfg.data.rois.targets) if sigma_mm else None  # their dose is kept as predicted
    return smooth_across_slices(dose, vol.full_mask(), sigma_mm, vol.spacing[2], keep=targets)


def _drawer(model: torch.nn.Module, cfg: RunConfig, sampler: str, steps: int, samples: int,
            generator: torch.Generator) -> Draw:
    """The network's draws for a batch: K sampled doses, or the one pass of a deterministic baseline."""
    if cfg.objective == "regression":
        return lambda c, m: regress(model, c, m)[None]
    return lambda c, m: draw_samples(model, c, cfg.diffusion, m, samples=samples, sampler=sampler, steps=steps,
                                     generator=generator)


def _predict_slices(draw: Draw, cfg: RunConfig, vol: CachedPatient, batch_size: int, device: torch.device,
                    progress: bool, tuner: ThreadTuner | None, mirror: bool,
                    keep_draws: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The slice-wise part of :func:`predict_volume`: every axial slice in the mask, in batches; (dose, std, draws)
    in Gy, unsmoothed."""
    zs, window = vol.axial_slices(), prediction_window(vol, cfg)
    dose, std = np.zeros(vol.full_shape, np.float32), np.zeros(vol.full_shape, np.float32)
    draws: np.ndarray | None = None
    bar = tqdm(total=len(zs), desc=vol.patient_id, unit="slice", leave=False, disable=not progress)
    for start in range(0, len(zs), batch_size):
        chunk, began = zs[start:start + batch_size], time.perf_counter()
        cond, mask, mask_in = slice_inputs(vol, chunk, cfg, window, device)
        if mirror:
            mean, spread, batch_draws = mirror_average(draw, cond, mask_in, mirror_swaps(cfg.data))
        else:
            batch_draws = draw(cond, mask_in)  # (K, B, 1, h, w)
            mean, spread = mean_and_spread(batch_draws)
        mean, spread = _native(mean, mask, cfg), _native(spread, mask, cfg)
        _place(dose, mean, mask, chunk, window, cfg)
        _place(std, spread, mask, chunk, window, cfg)
        if keep_draws:
            draws = np.zeros((len(batch_draws), *vol.full_shape), np.float32) if draws is None else draws
            for k, one in enumerate(batch_draws):
                _place(draws[k], _native(one, mask, cfg), mask, chunk, window, cfg)
        bar.update(len(chunk))
        if tuner is not None and len(chunk) == batch_size:  # full batches only: comparable times
            tuner.step_done(time.perf_counter() - began)
    bar.close()
    return dose, std, draws


def _native(x: torch.Tensor, mask: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """A batch (B, 1, h, w) at the network's size brought back to the slices' own in-plane size."""
    native = mask.shape[-2:]
    if cfg.data.crop or tuple(x.shape[-2:]) == tuple(native):
        return x
    return F.interpolate(x, size=native, mode="bilinear", align_corners=False)


def _place(volume: np.ndarray, x: torch.Tensor, mask: torch.Tensor, zs: list[int], window: Window,
           cfg: RunConfig) -> None:
    """Write a batch (B, 1, H, W), normalised, into ``volume`` (X, Y, Z) in Gy at slices ``zs``, 0 outside the mask."""
    wx, wy = window
    for i, z in enumerate(zs):
        volume[wx, wy, z] = (x[i, 0] * mask[i, 0]).float().cpu().numpy() * cfg.data.dose_norm_gy


def mirror_average(draw: Draw, cond: torch.Tensor, mask: torch.Tensor,
                   swaps: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test-time mirroring: ``draw`` on the slices as given and mirrored left-right (last axis flipped, paired
    organs' channels swapped), the second mirrored back. Returns the mean of both orientations, the standard
    deviation over both orientations' draws (within-orientation variance plus the spread of the two means), and
    the K draws, each the mean of its two orientations (K, B, 1, H, W)."""
    order = swapped_order(cond.shape[1], swaps)
    draws_a = draw(cond, mask)
    draws_b = draw(cond.flip(-1)[:, order], mask.flip(-1)).flip(-1)
    (mean_a, std_a), (mean_b, std_b) = mean_and_spread(draws_a), mean_and_spread(draws_b)
    var = (std_a.square() + std_b.square()) / 2 + ((mean_a - mean_b) / 2).square()
    return (mean_a + mean_b) / 2, var.sqrt(), (draws_a + draws_b) / 2
