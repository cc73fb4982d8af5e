"""What a prediction may be: a dose no radiotherapy plan reaches is refused, and so is a patient whose voxels the
network would see at another scale than in training.

**Dose.** The network predicts dose / ``dose_norm_gy`` clamped to its range, so a dose above
:func:`dose_bound` (twice ``dose_norm_gy``, at most :data:`~mddose.data.openkbp.MAX_DOSE_GY`) means a broken or
edited checkpoint; nothing is written then.

**Voxel size.** The network sees a slice as ``image_size`` pixels: with the whole slice resized
(``data.crop == 0``) one pixel spans ``spacing × grid / image_size`` mm in-plane, on crops the voxel itself.
:func:`input_voxel_mm` gives that size (and the slice spacing); training records it for its patients in
``trainer.json`` (``input_voxel_mm``), and models without it (the shipped one) were trained on OpenKBP's grid. A
patient whose size differs by more than :data:`REFUSE_SCALE` on an axis is refused, by more than
:data:`WARN_SCALE` warned about: a 1 mm patient is not a 3.9 mm one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mddose.errors import MddoseError

if TYPE_CHECKING:  # the constants below are read by the command line, which must start without torch
    import numpy as np

    from mddose.data.dataset import DataConfig

log = logging.getLogger(__name__)

#: The widest smoothing across slices (mm): beyond it the dose is smeared over the whole neck.
MAX_SMOOTH_MM = 50.0
#: The most draws per patient: every draw of a patient is kept in memory until their mean is taken.
MAX_SAMPLES = 64
#: A patient's input voxel this many times larger or smaller than the training patients' is refused ...
REFUSE_SCALE = 2.5
#: ... and this many times, warned about.
WARN_SCALE = 1.25


def dose_bound_limit() -> float:
    """No plan's dose is higher (:data:`~mddose.data.openkbp.MAX_DOSE_GY`)."""
    from mddose.data.openkbp import MAX_DOSE_GY

    return MAX_DOSE_GY


def dose_bound(data: DataConfig) -> float:
    """The highest dose (Gy) a prediction of this model may hold."""
    return min(dose_bound_limit(), 2.0 * data.dose_norm_gy)


def check_predicted(dose: np.ndarray, data: DataConfig, patient_id: str) -> None:
    """Refuse a predicted dose above :func:`dose_bound`, before it is written."""
    bound, top = dose_bound(data), float(dose.max()) if dose.size else 0.0
    if top > bound:
        raise MddoseError(f"{patient_id}: the model predicts {top:.4g} Gy, above the {bound:.0f} Gy a prediction "
                          f"may hold (twice the model's dose_norm_gy of {data.dose_norm_gy:g} Gy, at most "
                          f"{dose_bound_limit():.0f} Gy): is the checkpoint's config.json edited or broken?")


def input_voxel_mm(spacing: Sequence[float], shape: Sequence[int], data: DataConfig) -> tuple[float, float, float]:
    """What one network input pixel spans (mm): in-plane as the slice is resized (or cropped), the slice spacing."""
    scale = (1.0, 1.0) if data.crop else (shape[0] / data.image_size, shape[1] / data.image_size)
    return (round(spacing[0] * scale[0], 4), round(spacing[1] * scale[1], 4), round(float(spacing[2]), 4))


def training_voxel_mm(checkpoint: Path, data: DataConfig) -> tuple[float, float, float]:
    """The input voxel of the patients the checkpoint was trained on (OpenKBP's for models that do not say)."""
    from mddose.data.patient import OPENKBP_SHAPE, OPENKBP_SPACING
    from mddose.runs.layout import TRAINER

    path = checkpoint / TRAINER
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("input_voxel_mm") if path.is_file() else None
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, list) and len(recorded) == 3:
        return tuple(float(v) for v in recorded)  # type: ignore[return-value]
    return input_voxel_mm(OPENKBP_SPACING, OPENKBP_SHAPE, data)


def check_voxels(folders: Sequence[Path], trained: tuple[float, float, float], data: DataConfig) -> list[str]:
    """:func:`voxel_warning` for patient folders, reading only their voxel and grid sizes; returns the warnings
    (not logged here: each is logged when its patient is predicted, :func:`check_voxel`)."""
    from mddose.data.openkbp import find_file, read_grid_shape, read_voxel_dimensions

    warnings = []
    for folder in folders:
        path = find_file(folder, "voxel_dimensions")
        if path is not None:  # else the patient's reader names what is missing
            warning = voxel_warning(read_voxel_dimensions(path), read_grid_shape(folder), trained, data, path)
            warnings += [] if warning is None else [f"{folder.name}: {warning}"]
    return warnings


def check_voxel(spacing: Sequence[float], shape: Sequence[int], trained: tuple[float, float, float],
                data: DataConfig, where: str | Path) -> str | None:
    """:func:`voxel_warning`, its warning also logged."""
    warning = voxel_warning(spacing, shape, trained, data, where)
    if warning is not None:
        log.warning("WARNING: %s: %s", where, warning)
    return warning


def voxel_warning(spacing: Sequence[float], shape: Sequence[int], trained: tuple[float, float, float],
                  data: DataConfig, where: str | Path) -> str | None:
    """Refuse a patient whose input voxel is far from the training one (:data:`REFUSE_SCALE`); the warning for
    one merely off (:data:`WARN_SCALE`), else None."""
    seen = input_voxel_mm(spacing, shape, data)
    ratio = max(max(s / t, t / s) for s, t in zip(seen, trained))
    sizes = (f"{'×'.join(f'{v:g}' for v in seen)} mm per network input voxel, "
             f"{'×'.join(f'{v:g}' for v in trained)} mm in training")
    if ratio > REFUSE_SCALE:
        raise MddoseError(f"the model would see this patient at another scale than its training patients ({sizes}): "
                          "resample the patient to the model's voxel size", where)
    return None if ratio <= WARN_SCALE else f"{sizes}; the prediction may be off"


def check_samples(samples: int) -> int:
    """A number of draws per patient from 1 to :data:`MAX_SAMPLES`."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise MddoseError(f"--samples must be 1 … {MAX_SAMPLES} (every draw is kept in memory), not {samples}")
    return samples


def check_smoothing(smooth_mm: float) -> float:
    """A smoothing sigma (mm) that is finite and within 0 … :data:`MAX_SMOOTH_MM`."""
    if not (math.isfinite(smooth_mm) and 0 <= smooth_mm <= MAX_SMOOTH_MM):
        raise MddoseError(f"the smoothing across slices must be 0 … {MAX_SMOOTH_MM:g} mm, not {smooth_mm}")
    return float(smooth_mm)
