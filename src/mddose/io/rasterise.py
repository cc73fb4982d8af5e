"""Between RTSTRUCT contours (closed planar polygons in patient mm) and voxel masks on a CT grid.

Rasterising (:func:`rasterise_roi`)
    * A voxel is inside a contour when its centre is, by the crossing-number rule of matplotlib's
      ``Path.contains_points`` (the same answer on an edge), vectorised per column. The polygons of one plane
      are combined by XOR (even-odd rule), so a contour drawn inside another is a hole, as DICOM specifies,
      and keyhole contours work too.
    * Each contour plane goes to the CT slice nearest to it (planes between CT slice positions are rounded to
      the nearest slice; when two planes meet one slice, the nearer plane wins).
    * A ROI contoured on fewer slices than the CT has (e.g. every other slice) is filled in between: a slice
      with no plane of its own, lying between two planes no more than 1.5 × the ROI's usual plane spacing
      apart, takes the nearer plane. Nothing is extended beyond the first or last plane.
    * A point more than one voxel outside the image, or a plane more than one slice beyond the first or last
      CT slice, is an error: the structure set does not belong to this image.

Contouring (:func:`mask_to_contours`) traces the 0.5 level of each axial slice with contourpy (which
matplotlib uses), so that rasterising the contours gives back the same voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import contourpy
import numpy as np

from mddose.errors import MddoseError
from mddose.io.geometry import VolumeGeometry

log = logging.getLogger(__name__)

_OUTSIDE_TOLERANCE = 1.0  # voxels a contour point may lie beyond the image's outer voxel centres + 0.5
_PLANE_TOLERANCE = 0.05  # spread (slices) of a contour's points along the slice axis still called planar
_GAP_FACTOR = 1.5  # fill slices between planes at most this many usual plane spacings apart


def fill_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool: voxel centres inside an odd number of ``polygons`` ((N, 2) row/col indices)."""
    out = np.zeros(shape, dtype=bool)
    for poly in polygons:
        if len(poly) < 3:
            continue
        lo = np.clip(np.floor(poly.min(axis=0)).astype(int), 0, np.asarray(shape) - 1)
        hi = np.clip(np.ceil(poly.max(axis=0)).astype(int), 0, np.asarray(shape) - 1)
        rows, cols = np.arange(lo[0], hi[0] + 1, dtype=float), np.arange(lo[1], hi[1] + 1, dtype=float)
        out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] ^= _centres_inside(np.asarray(poly, dtype=float), rows, cols)
    return out


def _centres_inside(poly: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows), len(cols)) bool: which points (row, col) lie inside the closed polygon ``poly``.

    The crossing-number test of matplotlib's ``Path.contains_points`` (its ``point_in_path``), written with the
    same expressions so that centres on an edge get the same answer, but for whole columns of points at once:
    only the edges that span a column are tested against the column's points.
    """
    x0, y0 = poly[:, 0], poly[:, 1]  # each edge runs from vertex i to vertex i + 1, the last back to the first
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    above1 = y1[:, None] >= cols[None, :]  # (edges, cols)
    edge, col = np.nonzero((y0[:, None] >= cols[None, :]) != above1)  # the edges that span each column
    lhs = (y1[edge] - cols[col]) * (x0[edge] - x1[edge])
    rhs = (x1[edge][:, None] - rows[None, :]) * (y0[edge] - y1[edge])[:, None]
    crossed = (lhs[:, None] >= rhs) == above1[edge, col][:, None]  # (spanning pairs, rows)
    counts = np.zeros((len(cols), len(rows)), dtype=np.int32)
    np.add.at(counts, col, crossed.astype(np.int32))
    return (counts % 2 == 1).T


def rasterise_roi(contours: Sequence[np.ndarray], geometry: VolumeGeometry, name: str, source: object) -> np.ndarray:
    """Rasterise one ROI's closed planar contours ((N, 3) LPS mm each) onto ``geometry``; (I, J, K) bool.

    Raises:
        MddoseError: a contour lies outside the image or is not in an axial plane of it (``source`` names
            the RTSTRUCT file in the message).
    """
    shape = geometry.shape
    planes: dict[float, list[np.ndarray]] = {}
    for points in contours:
        idx = geometry.world_to_index(points)
        k = idx[:, 2]
        where = f"ROI '{name}': contour at z = {float(np.mean(points[:, 2])):.1f} mm"
        if np.ptp(k) > _PLANE_TOLERANCE:
            raise MddoseError(f"{where} is not in an axial plane of the CT (tilted or sagittal contour)", source)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        limit = np.asarray(shape) - 0.5 + _OUTSIDE_TOLERANCE
        if np.any(lo < -0.5 - _OUTSIDE_TOLERANCE) or np.any(hi > limit):
            axis = "slice" if lo[2] < -1.5 or hi[2] > limit[2] else "in-plane"
            raise MddoseError(f"{where} lies outside the CT image ({axis}); is this RTSTRUCT for this CT?", source)
        planes.setdefault(round(float(np.mean(k)), 3), []).append(idx[:, :2])
    mask = np.zeros(shape, dtype=bool)
    if not planes:
        return mask
    positions = np.array(sorted(planes))
    slice_of_plane = np.clip(np.rint(positions).astype(int), 0, shape[2] - 1)
    # Each slice gets its nearest plane; planes that lose to a nearer one are dropped.
    chosen: dict[int, float] = {}
    for pos, k in zip(positions, slice_of_plane):
        if k not in chosen or abs(pos - k) < abs(chosen[k] - k):
            chosen[int(k)] = float(pos)
    dropped = len(positions) - len(chosen)
    if dropped:
        log.debug("ROI %s: %d contour planes share a CT slice with a nearer plane and were dropped", name, dropped)
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    slices = sorted(chosen)
    for a, b in zip(slices[:-1], slices[1:]):  # fill gaps between consecutive planes
        if b - a > 1 and chosen[b] - chosen[a] <= _GAP_FACTOR * step + 1e-6:
            for k in range(a + 1, b):
                chosen[k] = chosen[a] if abs(chosen[a] - k) <= abs(chosen[b] - k) else chosen[b]
    filled: dict[float, np.ndarray] = {}
    for k, pos in chosen.items():
        if pos not in filled:
            filled[pos] = fill_polygons(planes[pos], (shape[0], shape[1]))
        mask[:, :, k] = filled[pos]
    return mask


def mask_to_contours(mask: np.ndarray, geometry: VolumeGeometry) -> list[tuple[int, np.ndarray]]:
    """Closed contours of a (I, J, K) bool mask: ``(slice k, (N, 3) LPS mm points)`` per polygon.

    The 0.5 level of each slice, traced on a zero-padded copy so that shapes touching the border close.
    """
    out: list[tuple[int, np.ndarray]] = []
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        padded = np.pad(mask[:, :, k].astype(np.float64), 1)
        gen = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
        for line in gen.lines(0.5):
            rc = line[:, ::-1] - 1.0  # contourpy gives (x=col, y=row) in padded indices
            if len(rc) > 1 and np.allclose(rc[0], rc[-1]):
                rc = rc[:-1]  # DICOM closes the polygon implicitly
            if len(rc) < 3:
                continue
            ijk = np.column_stack([rc, np.full(len(rc), float(k))])
            out.append((int(k), geometry.index_to_world(ijk)))
    return out
