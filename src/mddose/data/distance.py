"""Signed distance maps of the structures: the "distance-aware" inputs of DoseDiff (Zhang et al., IEEE TMI 2024).

A binary structure slice becomes, per pixel, its in-plane Euclidean distance to the structure in millimetres
(the patient's in-plane voxel spacing, so anisotropic pixels count right), **negative inside, positive
outside**, divided by a scale (``DataConfig.distance_scale_mm``, default :data:`DISTANCE_SCALE_MM` = 50 mm) and
clipped to [-1, 1]:

* outside, a pixel holds its distance to the nearest pixel of the structure (at least one pixel spacing);
* inside, minus its distance to the nearest pixel outside it;
* 50 mm or farther away reads +1, 50 mm or deeper inside reads -1;
* a structure absent from the slice (not contoured, or not on this slice) reads +1 everywhere: far away.

The sign holds the binary mask (inside where negative), so nothing is lost against the mask encoding. The
distances are 2D, per axial slice, as the networks read slices: a 3D transform costs ~1 s per structure of a
128³ grid against ~2 ms per structure of a slice (docs/experiments/dosediff.md), and would need every patient's
volumes kept in memory or in the cache.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import distance_transform_edt

DISTANCE_SCALE_MM = 50.0  # a few beam penumbras: the dose falls off over centimetres around a target


def signed_distance(mask: np.ndarray, spacing: tuple[float, float], scale_mm: float = DISTANCE_SCALE_MM) -> np.ndarray:
    """(X, Y) binary mask, in-plane ``spacing`` (mm per pixel along X, Y) -> (X, Y) float32 signed distance /
    ``scale_mm`` in [-1, 1]: negative inside, positive outside, +1 everywhere when the mask is empty.

    The transforms run on the structure's bounding box grown by ``scale_mm`` (past it every value clips to +1),
    which gives the same map as the whole slice at a fraction of the cost.
    """
    inside = np.asarray(mask) > 0.5
    out = np.ones(inside.shape, np.float32)
    if not inside.any():
        return out
    box = _grown_box(inside, spacing, scale_mm)
    part = inside[box]
    if part.all():  # no pixel outside the structure to measure from: as deep inside as can be
        out[box] = -1.0
        return out
    outside_mm = distance_transform_edt(~part, sampling=spacing)  # each outside pixel to the nearest inside one
    inside_mm = distance_transform_edt(part, sampling=spacing)  # each inside pixel to the nearest outside one
    out[box] = np.clip((outside_mm - inside_mm) / scale_mm, -1.0, 1.0)
    return out


def _grown_box(inside: np.ndarray, spacing: tuple[float, float], scale_mm: float) -> tuple[slice, slice]:
    """The bounding box of ``inside`` grown by ``scale_mm`` (and at least one pixel) on each side, in the grid."""
    box = []
    for axis, step in enumerate(spacing):
        hit = np.flatnonzero(inside.any(axis=1 - axis))
        pad = max(1, math.ceil(scale_mm / step))
        box.append(slice(max(0, hit[0] - pad), min(inside.shape[axis], hit[-1] + 1 + pad)))
    return box[0], box[1]
