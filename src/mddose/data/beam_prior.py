"""The beam prior: the project's beam model run on the patient's own anatomy, with the plan's gantry angles.

A dose-prediction network has to guess where the plan's beams run and how their dose falls off with depth. The
plan's field arrangement is known, though: OpenKBP's plans used nine equispaced coplanar fields at 0°, 40°, …,
320° (:data:`OPENKBP_BEAM_ANGLES`, the default template). For coplanar beams each field's aperture is a per-slice
projection of the targets, so :func:`mddose.data.phantom_dose.compute_dose` (apertures per prescription level,
radiological depth, penumbra, scatter, OAR sparing, a ray-based optimiser; no learning) gives a physical first
guess of the dose for any patient. Fed to the network as one more structure channel (``DataConfig.beam_prior``),
in the dose's own units, it tells the network where the beams go; the network learns the correction.

``mddose prepare`` stores it in the cache for every patient (with the angles it used, recorded in the index);
``predict`` and ``qa`` compute it for a new patient with the angles of the model's configuration. A patient
without a target gets an all-zero prior (the beam model aims at the targets).

The fields' apertures (``DataConfig.beam_apertures``) are the cheaper, exact part of the same geometry: per axial
slice, :func:`field_apertures` gives for each target the fraction of the fields whose aperture (the target's
projection along the beam, widened by the beam model's margin) covers each pixel. They need the contours only,
so the dataset computes them per slice as it reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from mddose.data.patient import Patient
from mddose.data.phantom_dose import DoseModel, compute_dose, widen

#: OpenKBP's plan template: nine equispaced coplanar fields (the OpenKBP paper; ababier/open-kbp issue #36)
OPENKBP_BEAM_ANGLES: tuple[float, ...] = tuple(40.0 * k for k in range(9))


def check_angles(angles: Sequence[float]) -> tuple[float, ...]:
    """Gantry angles in degrees as a tuple of floats in [0, 360); at least one, no repeats."""
    values = tuple(float(a) for a in angles)
    if not values or any(not 0.0 <= a < 360.0 for a in values) or len(set(values)) < len(values):
        raise ValueError(f"beam angles are distinct gantry angles in [0, 360) degrees, at least one; got {values}")
    return values


def beam_prior(patient: Patient, angles: Sequence[float] = OPENKBP_BEAM_ANGLES) -> np.ndarray:
    """The beam model's dose (Gy, float32, the patient's grid, 0 outside the possible-dose mask) for ``angles``."""
    return compute_dose(patient, angles=check_angles(angles))


def field_apertures(targets: np.ndarray, spacing_mm: Sequence[float], angles: Sequence[float],
                    margin_mm: float = DoseModel.aperture_margin_mm) -> np.ndarray:
    """(L, X, Y) float32 in [0, 1]: for each target mask of ``targets`` (L, X, Y), one axial slice with pixel
    spacing ``spacing_mm`` (x, y), the fraction of the coplanar fields at ``angles`` whose aperture covers each
    pixel. A field's aperture is the target's projection along the beam onto the beam's lateral axis (bins of
    the finer pixel pitch), widened by ``margin_mm`` with a partial-pixel edge, as the beam model opens it."""
    targets = np.asarray(targets, dtype=bool)
    out = np.zeros(targets.shape, dtype=np.float32)
    if not targets.any():
        return out
    pitch = float(min(spacing_mm[0], spacing_mm[1]))
    bins, n_bins = _lateral_bins(targets.shape[1:], (float(spacing_mm[0]), float(spacing_mm[1])), tuple(angles))
    for level, target in enumerate(targets):
        if not target.any():
            continue
        for field in bins:
            hits = np.zeros((n_bins, 1), dtype=bool)
            hits[field[target], 0] = True
            out[level] += widen(hits, margin_mm, (pitch, pitch))[field, 0]
    return out / len(bins)


@functools.lru_cache(maxsize=32)
def _lateral_bins(shape: tuple[int, int], spacing: tuple[float, float],
                  angles: tuple[float, ...]) -> tuple[np.ndarray, int]:
    """(A, X, Y) index of each pixel's bin on each field's lateral axis, and the number of bins. Gantry angle
    ``a`` runs its rays as the beam model does: the lateral coordinate is ``x sin a + y cos a`` about the centre."""
    pitch = min(spacing)
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    half = int(np.ceil(np.hypot(x[0], y[0]) / pitch)) + 1
    bins = []
    for a in np.deg2rad(angles):
        lateral = x[:, None] * np.sin(a) + y[None, :] * np.cos(a)
        bins.append(np.rint(lateral / pitch).astype(np.int32) + half)
    stacked = np.stack(bins)
    stacked.flags.writeable = False
    return stacked, 2 * half + 1
