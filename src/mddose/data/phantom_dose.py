"""A small physical dose model for the synthetic phantoms: coplanar beams aimed at the targets.

The model is deliberately simple but physical, so that dose follows from anatomy (and can be learned) and
shows the beam streaks of a real IMRT plan:

* **Beams.** ``3 + 2 × (number of PTV levels)`` equally spaced coplanar beams (5, 7 or 9), gantry 0° entering
  from anterior and 90° from the patient's left (IEC, head first supine). The beam arrangement depends on
  the anatomy only, so the dose is a deterministic function of CT and contours.
* **Aperture.** Per axial slice, each beam's fluence for a PTV level is that level's projection along the
  beam (the beam's-eye-view aperture) widened by a small margin; a lower level opens only the rays that no
  higher level already opens. The edge is blurred by a Gaussian penumbra laterally and cranio-caudally.
* **Modulation.** Where a ray crosses a contoured organ at risk outside the targets, the fluence is lowered
  by the organ's sparing weight (spinal cord most, then brainstem, parotids, larynx, esophagus, mandible).
  Each ray is also compensated for the depth of the target it crosses, and two rounds of a ray-based
  optimiser scale every ray by the mean prescribed/delivered ratio over its target voxels (rays through a
  spared organ are never raised), which evens out the target dose as an IMRT optimiser would.
* **Depth dose.** Along each ray the dose falls as ``exp(-mu × d)`` with the radiological depth ``d`` from
  the body surface (the cumulated relative electron density from the CT), times a short build-up.
* **Scatter.** A fraction of the dose is spread by a 3-D Gaussian kernel.
* **Levels and scaling.** Each PTV level (its exclusive region) gets its own fluence component; their
  weights are fitted so that each level's D95 approaches its prescription, then the whole dose is scaled so
  that the highest PTV's D95 equals its prescription exactly. Dose is zero outside the possible-dose mask and
  rounded to 0.001 Gy, like the OpenKBP files.

Vectorised per beam: the cropped volume is rotated in-plane (:func:`scipy.ndimage.rotate`) so the beam runs
along axis 0, rays become columns (cumulative sums and maxima along axis 0), and the depth dose is rotated
back (its time: docs/measurements.md). The beams are traced and deposited side by side on the process's CPU threads
(:func:`beam_workers`; NumPy and SciPy release the GIL there), and summed in beam order: the dose does not depend
on the thread count.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import ndimage, optimize

from mddose.data.patient import Patient

log = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")


def beam_workers() -> int:
    """Threads for the beams: ``OMP_NUM_THREADS`` when set (the process's thread budget), else the CPUs it may use."""
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, int(budget)) if budget.isdigit() else len(os.sched_getaffinity(0))


def _per_beam(work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[work(item) for item in items]``, the items side by side on :func:`beam_workers` threads, in order."""
    items = list(items)
    workers = min(beam_workers(), len(items))
    if workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, items))


@dataclass(frozen=True)
class DoseModel:
    """Parameters of the beam model (one machine, one planner: the same for every phantom)."""

    mu_per_mm: float = 0.0045  # effective attenuation of a 6 MV beam in water
    buildup_mm: float = 3.0  # depth scale of the build-up region below the skin
    penumbra_mm: float = 3.5  # Gaussian sigma of the beam edge
    scatter_fraction: float = 0.15
    scatter_mm: float = 12.0  # Gaussian sigma of the scatter kernel
    # Fraction by which a ray's fluence is lowered where it crosses the organ (outside the targets).
    sparing: tuple[tuple[str, float], ...] = (
        ("SpinalCord", 0.8), ("Brainstem", 0.7), ("RightParotid", 0.45), ("LeftParotid", 0.45),
        ("Larynx", 0.3), ("Esophagus", 0.3), ("Mandible", 0.15),
    )
    aperture_margin_mm: float = 4.0  # the aperture is widened beyond the target's projection
    weight_iterations: int = 5
    optimizer_iterations: int = 2  # rounds of the ray-based fluence optimiser
    max_gain: float = 1.5  # per round, a ray's fluence changes by at most this factor


def beam_angles(n_levels: int) -> tuple[float, ...]:
    """Gantry angles in degrees: 5, 7 or 9 equally spaced beams for 1, 2 or 3 PTV levels."""
    n = int(np.clip(3 + 2 * n_levels, 5, 9))
    return tuple(360.0 * k / n for k in range(n))


def relative_density(ct_hu: np.ndarray) -> np.ndarray:
    """Relative electron density from HU (a two-segment calibration curve): air 0, water 1, bone ~1.6."""
    hu = np.asarray(ct_hu, dtype=np.float32)
    return np.where(hu <= 0, 1.0 + hu / 1000.0, 1.0 + hu / 1950.0).clip(0.0, 2.5).astype(np.float32)


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int, int]:
    """Square in-plane box (i0, j0, side) around the mask's slab that survives any rotation, and its z range."""
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 2)))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = int(np.ceil(np.hypot(h, w))) + 4
    i0 = int(round((rows[0] + rows[-1]) / 2 - (side - 1) / 2))
    j0 = int(round((cols[0] + cols[-1]) / 2 - (side - 1) / 2))
    return i0, j0, side, int(zs[0]), int(zs[-1]) + 1


def _crop(a: np.ndarray, i0: int, j0: int, side: int, z0: int, z1: int, fill: float) -> np.ndarray:
    """``a[i0:i0+side, j0:j0+side, z0:z1]`` with ``fill`` where the box leaves the grid."""
    out = np.full((side, side, z1 - z0), fill, dtype=a.dtype)
    si, sj = max(i0, 0), max(j0, 0)
    ei, ej = min(i0 + side, a.shape[0]), min(j0 + side, a.shape[1])
    out[si - i0: ei - i0, sj - j0: ej - j0] = a[si:ei, sj:ej, z0:z1]
    return out


def _rotate(a: np.ndarray, angle: float, order: int) -> np.ndarray:
    """Rotate the in-plane axes (0, 1) of an (S, S, Z) array about its centre, keeping the shape."""
    return ndimage.rotate(a, angle, axes=(0, 1), reshape=False, order=order, mode="constant", cval=0.0)


def widen(projection: np.ndarray, margin_mm: float, sampling: tuple[float, float]) -> np.ndarray:
    """The (S, Z) aperture ``projection`` widened by ``margin_mm``, with a partial-pixel edge (float32)."""
    if not projection.any():
        return np.zeros(projection.shape, dtype=np.float32)
    dist = ndimage.distance_transform_edt(~projection, sampling=sampling)  # mm to the nearest open pixel
    half = (sampling[0] + sampling[1]) / 4  # half a pixel: the edge ramps over one pixel around the margin
    return np.clip((margin_mm + half - dist) / (2 * half), 0.0, 1.0).astype(np.float32)


def _compensation(depth_dose: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(S, Z) fluence factor per ray that evens out depth: 1 / the mean depth dose over the ray's target
    voxels, carried to rays that miss the target from the nearest ray that hits it."""
    hits = target.sum(axis=0)  # (S, Z)
    if not hits.any():
        return np.ones(hits.shape, dtype=np.float32)
    mean_dd = np.where(target, depth_dose, 0.0).sum(axis=0) / np.maximum(hits, 1)
    factor = np.where(hits > 0, 1.0 / np.maximum(mean_dd, 0.2), 0.0)
    nearest = ndimage.distance_transform_edt(hits == 0, return_distances=False, return_indices=True)
    return factor[tuple(nearest)].astype(np.float32)


@dataclass
class _Beam:
    """One beam traced through the cropped (S, S, Z) volume; ray arrays are (S, Z), in the beam frame."""

    angle: float
    apertures: np.ndarray  # (L, S, Z) open fraction of each ray per level, depth-compensated and spared
    through_oar: np.ndarray  # (S, Z) bool: the ray crosses a spared organ
    back: np.ndarray  # (S, S, Z) depth dose of an open ray, in the patient frame
    ray_lo: np.ndarray  # (S, S) index of the ray each patient pixel lies on (lower neighbour) ...
    ray_frac: np.ndarray  # (S, S, 1) ... and the fraction towards the next ray
    ray_inside: np.ndarray  # (S, S, 1) bool: the pixel lies within the traced rays


def _trace(rho: np.ndarray, code: np.ndarray, angle: float, n_levels: int, oar_weights: np.ndarray,
           model: DoseModel, spacing: tuple[float, float, float]) -> _Beam:
    """Rotate density and contour code into the beam frame (beam along +axis 0) and trace the rays."""
    dx, _, dz = spacing
    side = rho.shape[0]
    r_rho = _rotate(rho, angle, order=1)
    r_code = _rotate(code, angle, order=0)
    depth = (np.cumsum(r_rho, axis=0) - 0.5 * r_rho) * dx  # (S, S, Z) radiological depth, mm
    depth_dose = np.exp(-model.mu_per_mm * depth) * (1.0 - np.exp(-depth / model.buildup_mm))
    spared = oar_weights[r_code >> 3].max(axis=0)  # (S, Z) strongest sparing along each ray
    boost = _compensation(depth_dose, (r_code & 0b111) > 0)
    apertures, covered = np.zeros((n_levels, side, rho.shape[2]), dtype=np.float32), np.zeros_like(spared)
    for bit in range(n_levels):  # highest level first; a lower level only opens rays not yet covered
        projection = ((r_code >> bit) & 1).any(axis=0)  # (S, Z) beam's-eye view of the level
        aperture = widen(projection, model.aperture_margin_mm, (dx, dz)) * (1.0 - covered)
        covered += aperture
        apertures[bit] = aperture * boost * (1.0 - spared)
    back = _rotate(depth_dose.astype(np.float32), -angle, order=1)
    columns = np.ascontiguousarray(np.broadcast_to(np.arange(side, dtype=np.float32), (side, side)))
    ray = _rotate(columns, -angle, order=1)  # (S, S) ray coordinate of each patient-frame pixel
    lo = np.clip(np.floor(ray).astype(np.int64), 0, side - 2)
    return _Beam(angle, apertures, spared > 0, back, lo, np.clip(ray - lo, 0.0, 1.0)[..., None],
                 ((ray >= 0) & (ray <= side - 1))[..., None])


def _deposit(beam: _Beam, modulation: np.ndarray, sigma: tuple[float, float]) -> np.ndarray:
    """(L, S, S, Z) dose of one beam per level: modulated apertures, penumbra, depth dose."""
    out = np.empty((len(beam.apertures),) + beam.back.shape, dtype=np.float32)
    for k, aperture in enumerate(beam.apertures):
        f = ndimage.gaussian_filter(aperture * modulation, sigma, mode="constant")  # (S, Z) fluence
        lookup = f[beam.ray_lo] * (1.0 - beam.ray_frac) + f[beam.ray_lo + 1] * beam.ray_frac  # (S, S, Z)
        out[k] = np.where(beam.ray_inside, lookup, 0.0) * beam.back
    return out


def _fit_weights(values: list[np.ndarray], target: np.ndarray, iterations: int) -> np.ndarray:
    """Non-negative level weights bringing each region's D95 towards its prescription: each round
    linearises every region's D95 around its voxels near the 5th percentile and solves a NNLS."""
    w = target / target[0]
    for _ in range(iterations):
        near_d95 = np.zeros((len(target), len(target)))  # (region, component)
        for k, v in enumerate(values):
            if v.shape[1]:
                d = w @ v
                lo, hi = np.percentile(d, [3, 7])
                near_d95[k] = v[:, (d >= lo) & (d <= hi)].mean(axis=1)
        w = optimize.nnls(near_d95, target)[0]
    return w


def compute_dose(
    patient: Patient, model: DoseModel | None = None, angles: Sequence[float] | None = None
) -> np.ndarray:
    """Model the dose (Gy, float32, the patient's shape) of a coplanar IMRT-like plan for ``patient``.

    Uses the CT, the contoured targets (named by ``patient.rois``, prescriptions from their names) and
    OARs, the spacing (square in-plane pixels) and the possible-dose mask. ``angles`` overrides the gantry
    angles in degrees (default :func:`beam_angles`).
    """
    model = model or DoseModel()
    rx = patient.prescriptions
    mask = patient.possible_dose_mask
    if not rx or not mask.any():
        log.warning("%s: no target or empty possible-dose mask; dose is zero", patient.patient_id)
        return np.zeros(patient.shape, dtype=np.float32)
    dx, dy, _ = patient.spacing
    if not np.isclose(dx, dy):
        raise ValueError(f"{patient.patient_id}: the beam model needs square in-plane pixels, got {dx} × {dy}")
    levels = sorted(rx, key=rx.get, reverse=True)[:3]
    angles = tuple(angles) if angles is not None else beam_angles(len(levels))
    box = _crop_box(mask)
    regions, code, oar_weights = _code_map(patient, levels, model, box)
    rho = _crop(relative_density(patient.ct), *box, fill=0.0)
    beams = _per_beam(lambda a: _trace(rho, code, a, len(levels), oar_weights, model, patient.spacing), angles)
    target = np.array([rx[n] for n in levels])
    total = _optimise(beams, regions, target, _crop(mask, *box, fill=False), model, patient.spacing)
    return _place(total, box, mask)


def _code_map(patient: Patient, levels: list[str], model: DoseModel,
              box: tuple[int, int, int, int, int]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The exclusive target regions (cropped to ``box``), one uint8 code map (bits 0-2 = exclusive PTV level,
    bits 3-5 = index of the most-spared OAR; cropped) and the sparing weight of each OAR index."""
    regions, taken = [], np.zeros(patient.shape, dtype=bool)
    code = np.zeros(patient.shape, dtype=np.uint8)
    for bit, name in enumerate(levels):
        region = patient.structures[name] & ~taken
        code |= region.astype(np.uint8) << bit
        regions.append(_crop(region, *box, fill=False))
        taken |= region
    oar_weights = np.zeros(8, dtype=np.float32)
    spare = [(n, w) for n, w in sorted(model.sparing, key=lambda nw: nw[1]) if n in patient.structures][-7:]
    for k, (name, w) in enumerate(spare, start=1):  # ascending weight: the strongest OAR wins overlaps
        oar_weights[k] = w
        oar = patient.structures[name] & ~taken
        code[oar] = (code[oar] & 0b111) | np.uint8(k << 3)
    return regions, _crop(code, *box, fill=0), oar_weights


def _optimise(beams: list[_Beam], regions: list[np.ndarray], target: np.ndarray, inside_mask: np.ndarray,
              model: DoseModel, spacing: tuple[float, float, float]) -> np.ndarray:
    """The cropped dose after the ray-based optimiser's rounds: levels weighted to their D95s, the highest
    level's D95 at its prescription."""
    dx, _, dz = spacing
    sigma = (model.penumbra_mm / dx, model.penumbra_mm / dz)
    scatter_sigma = tuple(model.scatter_mm / s for s in spacing)
    prescribed = np.zeros(inside_mask.shape, dtype=np.float32)  # the prescription of each target voxel
    for region, value in zip(regions, target):
        prescribed[region] = value
    modulations = [np.ones(b.apertures.shape[1:], dtype=np.float32) for b in beams]
    for step in range(model.optimizer_iterations + 1):
        comps = sum(_per_beam(lambda bm: _deposit(bm[0], bm[1], sigma), zip(beams, modulations)))  # (L, S, S, Z)
        for k in range(len(target)):
            blurred = ndimage.gaussian_filter(comps[k], scatter_sigma, mode="constant")
            comps[k] = (1 - model.scatter_fraction) * comps[k] + model.scatter_fraction * blurred
        comps *= inside_mask
        w = _fit_weights([comps[:, r & inside_mask] for r in regions], target, model.weight_iterations)
        total = np.tensordot(w.astype(np.float32), comps, axes=1)  # (S, S, Z)
        high = regions[0] & inside_mask
        d95 = np.percentile(total[high], 5) if high.any() else 0.0
        if d95 > 0:
            total *= target[0] / d95
        if step == model.optimizer_iterations:
            break
        # One step of a ray-based optimiser: each ray's fluence is scaled by the mean prescribed/delivered
        # ratio over the target voxels it crosses; rays through a spared organ are never raised.
        ratio = np.where(prescribed > 0, prescribed / np.maximum(total, 1e-3), 0.0).astype(np.float32)
        gains = _per_beam(functools.partial(_ray_gain, ratio, model=model), [b.angle for b in beams])
        for b, m, gain in zip(beams, modulations, gains):
            m *= np.where(b.through_oar, np.minimum(gain, 1.0), gain).astype(np.float32)
    return total


def _ray_gain(ratio: np.ndarray, angle: float, model: DoseModel) -> np.ndarray:
    """(S, Z) fluence gain of each ray of the beam at ``angle``: the mean prescribed/delivered ratio over the
    target voxels it crosses (1 where it crosses none), within the optimiser's step."""
    r_ratio = _rotate(ratio, angle, order=0)
    hits = (r_ratio > 0).sum(axis=0)
    gain = np.where(hits > 0, r_ratio.sum(axis=0) / np.maximum(hits, 1), 1.0)
    return np.clip(gain, 1.0 / model.max_gain, model.max_gain)


def _place(total: np.ndarray, box: tuple[int, int, int, int, int], mask: np.ndarray) -> np.ndarray:
    """The cropped dose put back on the patient's grid: 0 outside the possible-dose mask, 0.001 Gy steps."""
    i0, j0, side, z0, z1 = box
    dose = np.zeros(mask.shape, dtype=np.float32)
    si, sj = max(i0, 0), max(j0, 0)
    ei, ej = min(i0 + side, dose.shape[0]), min(j0 + side, dose.shape[1])
    dose[si:ei, sj:ej, z0:z1] = total[si - i0: ei - i0, sj - j0: ej - j0]
    dose[~mask] = 0.0
    return np.round(np.clip(dose, 0.0, None), 3).astype(np.float32)
