"""Voxel grids placed in DICOM patient coordinates, the model grid, and resampling between grids.

World coordinates are DICOM patient coordinates (LPS, mm): +x towards the patient's left, +y posterior,
+z superior. A :class:`VolumeGeometry` maps an array index ``(i, j, k)`` to the world point of that voxel's
centre: ``origin + direction @ (spacing * ijk)``, the columns of ``direction`` being the unit vectors of the
three array axes.

The model grid (:data:`MODEL_DIRECTION`) has the axes of the OpenKBP training patients: axis 0 anterior →
posterior (+y), axis 1 right → left (+x), axis 2 superior → inferior (−z). Since LPS is tied to the patient's
anatomy, not to the couch, any CT (head or feet first, supine or prone) lands in this orientation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from mddose.data.patient import OPENKBP_SHAPE, OPENKBP_SPACING, grid_problem

# Columns: world (LPS) direction of array axes 0 (posterior), 1 (left) and 2 (inferior).
MODEL_DIRECTION = np.column_stack([(0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)])
_SNAP = 1e-6  # index-space round-off below this is snapped away (so identical grids map exactly)


@dataclass(frozen=True)
class ModelGrid:
    """Shape and voxel size (mm) of the grid a model works on; default: the OpenKBP geometry."""

    shape: tuple[int, int, int] = OPENKBP_SHAPE
    spacing: tuple[float, float, float] = OPENKBP_SPACING

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1 or len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"bad model grid: shape {self.shape}, spacing {self.spacing}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    @property
    def field_mm(self) -> np.ndarray:
        """Extent of the field along each axis, in mm (shape × spacing)."""
        return np.asarray(self.shape) * np.asarray(self.spacing)


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a (I, J, K) array lies in patient coordinates.

    Attributes:
        shape: array shape.
        spacing: voxel size in mm along the three array axes.
        origin: world position (LPS mm) of the centre of voxel (0, 0, 0).
        direction: 3×3 row-major nested tuple; column a is the unit vector of array axis a in LPS.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in d))

    @property
    def matrix(self) -> np.ndarray:
        """3×3 map from an index step to a world step (direction with columns scaled by spacing)."""
        return np.asarray(self.direction) * np.asarray(self.spacing)[None, :]

    @property
    def affine(self) -> np.ndarray:
        """4×4 homogeneous map from index to LPS mm."""
        out = np.eye(4)
        out[:3, :3] = self.matrix
        out[:3, 3] = self.origin
        return out

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """(..., 3) indices → (..., 3) LPS mm."""
        return np.asarray(ijk, dtype=float) @ self.matrix.T + np.asarray(self.origin)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm → (..., 3) continuous indices."""
        return np.linalg.solve(self.matrix, (np.asarray(xyz, dtype=float) - self.origin).T).T

    def crop(self, lo: tuple[int, int, int] | np.ndarray, hi: tuple[int, int, int] | np.ndarray) -> VolumeGeometry:
        """The geometry of ``array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]``."""
        lo, hi = np.asarray(lo, dtype=int), np.asarray(hi, dtype=int)
        return VolumeGeometry(tuple(hi - lo), self.spacing, tuple(self.index_to_world(lo)), self.direction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": [list(row) for row in self.direction],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeGeometry:
        """From :meth:`to_dict`'s JSON; ValueError for a shape no grid has (see :func:`grid_problem`)."""
        problem = grid_problem(tuple(int(n) for n in d["shape"]))
        if problem is not None:
            raise ValueError(problem)
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(map(tuple, d["direction"])))


def model_geometry(grid: ModelGrid, centre: np.ndarray) -> VolumeGeometry:
    """The model grid in :data:`MODEL_DIRECTION` whose centre lies at the world point ``centre``."""
    half = (np.asarray(grid.shape) - 1) / 2 * np.asarray(grid.spacing)
    origin = np.asarray(centre, dtype=float) - MODEL_DIRECTION @ half
    return VolumeGeometry(grid.shape, grid.spacing, tuple(origin), MODEL_DIRECTION)


def default_geometry(shape: tuple[int, ...], spacing: tuple[float, ...]) -> VolumeGeometry:
    """A grid in :data:`MODEL_DIRECTION` with its centre at the world origin (for data with no DICOM frame)."""
    half = (np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    return VolumeGeometry(tuple(shape), tuple(spacing), tuple(-(MODEL_DIRECTION @ half)), MODEL_DIRECTION)


def index_map(src: VolumeGeometry, dst: VolumeGeometry) -> tuple[np.ndarray, np.ndarray]:
    """``(m, off)`` with ``src_index = m @ dst_index + off``; round-off below 1e-6 voxel removed."""
    m = np.linalg.solve(src.matrix, dst.matrix)
    off = src.world_to_index(np.asarray(dst.origin))
    return _snap(m), _snap(off)


def _snap(a: np.ndarray) -> np.ndarray:
    r = np.round(a)
    return np.where(np.abs(a - r) < _SNAP, r, a)


def is_axis_aligned(src: VolumeGeometry, dst: VolumeGeometry) -> bool:
    """Whether every axis of ``dst`` runs along an axis of ``src`` (no obliquity between them)."""
    d = np.abs(np.asarray(src.direction).T @ np.asarray(dst.direction))
    return bool(np.all((d < 1e-4) | (d > 1 - 1e-4)))


def covering_box(src: VolumeGeometry, dst: VolumeGeometry, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Index box ``[lo, hi)`` of ``src`` that contains every voxel of ``dst`` (plus ``margin``), clipped."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in dst.shape], indexing="ij")).reshape(3, -1).T
    m, off = index_map(src, dst)
    idx = corners @ m.T + off
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - margin, 0, src.shape)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + margin + 1, 0, src.shape)
    return lo, hi


def resample(
    volume: np.ndarray,
    src: VolumeGeometry,
    dst: VolumeGeometry,
    *,
    order: int = 1,
    cval: float = 0.0,
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``volume`` (on ``src``) onto ``dst``; outside ``src`` reads ``cval``. Returns float32.

    With ``antialias`` a box filter the size of one ``dst`` voxel (in ``src`` voxels) is applied first, so
    a coarser ``dst`` samples area averages (the CT is not aliased, a mask's fraction is an area fraction).
    """
    if tuple(volume.shape) != src.shape:
        raise ValueError(f"volume shape {volume.shape} differs from its geometry's {src.shape}")
    m, _ = index_map(src, dst)
    sizes = np.rint(np.abs(m).sum(axis=1)).astype(int) if antialias else np.ones(3, dtype=int)
    lo, hi = covering_box(src, dst, margin=int(sizes.max()) + 2)
    if np.any(hi <= lo):
        return np.full(dst.shape, cval, dtype=np.float32)
    data = np.asarray(volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    m, off = index_map(src.crop(lo, hi), dst)
    for axis, size in enumerate(sizes):  # size: extent of one dst voxel along this src axis, in src voxels
        if size >= 2:
            data = ndimage.uniform_filter1d(data, size, axis=axis, mode="nearest")
            if size % 2 == 0:  # an even window is centred half a voxel low: read half a voxel later
                off[axis] += 0.5
    out = ndimage.affine_transform(data, m, offset=off, output_shape=dst.shape, order=order, mode="nearest")
    out[~inside(src, dst)] = cval
    return out.astype(np.float32, copy=False)


def resample_mask(mask: np.ndarray, src: VolumeGeometry, dst: VolumeGeometry) -> np.ndarray:
    """Resample a bool mask: area fraction (box filter + linear interpolation) thresholded at one half."""
    return resample(mask.astype(np.float32), src, dst, order=1, cval=0.0, antialias=True) >= 0.5


def inside(src: VolumeGeometry, dst: VolumeGeometry) -> np.ndarray:
    """(dst shape) bool: the voxels of ``dst`` whose centres lie within the voxels of ``src``."""
    m, off = index_map(src, dst)
    grids = np.meshgrid(*[np.arange(n) for n in dst.shape], indexing="ij", sparse=True)
    ok = np.ones(dst.shape, dtype=bool)
    for a in range(3):
        coord = sum(m[a, b] * grids[b] for b in range(3)) + off[a]
        ok &= (coord >= -0.5 - _SNAP) & (coord <= src.shape[a] - 0.5 + _SNAP)
    return ok
