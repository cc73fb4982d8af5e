"""Contours ↔ masks: holes by XOR, planes between slices, sparse planes, contours outside the image."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.errors import MddoseError
from mddose.io.geometry import MODEL_DIRECTION, VolumeGeometry
from mddose.io.rasterise import fill_polygons, mask_to_contours, rasterise_roi

GEOM = VolumeGeometry((40, 50, 12), (2.0, 2.0, 3.0), (-40.0, -50.0, 30.0), MODEL_DIRECTION)


def _square(k: float, lo: float, hi: float) -> np.ndarray:
    """A square contour in index space (rows/cols lo..hi on slice k), as LPS mm."""
    ijk = np.array([[lo, lo, k], [lo, hi, k], [hi, hi, k], [hi, lo, k]])
    return GEOM.index_to_world(ijk)


def test_fill_polygons_xor_makes_holes() -> None:
    outer = np.array([[1.5, 1.5], [1.5, 8.5], [8.5, 8.5], [8.5, 1.5]])
    inner = np.array([[3.5, 3.5], [3.5, 6.5], [6.5, 6.5], [6.5, 3.5]])
    mask = fill_polygons([outer, inner], (10, 10))
    assert mask.sum() == 7 * 7 - 3 * 3
    assert not mask[5, 5] and mask[2, 2]


@pytest.mark.parametrize("vertices", ["integer", "half-integer", "real"])
def test_fill_polygons_answers_as_matplotlib_does_even_on_the_edges(vertices: str) -> None:
    """The vectorised crossing-number test gives matplotlib's contains_points answer for every centre, those
    lying exactly on an edge or a vertex included (integer and half-integer vertices put many there)."""
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(1)
    rr, cc = np.mgrid[0:24, 0:24]
    centres = np.column_stack([rr.ravel(), cc.ravel()]).astype(float)
    for _ in range(200):
        size = (int(rng.integers(3, 25)), 2)
        if vertices == "real":
            poly = rng.uniform(-3.0, 26.0, size)
        elif vertices == "half-integer":
            poly = rng.integers(0, 48, size) / 2.0
        else:
            poly = rng.integers(0, 24, size).astype(float)
        expected = MplPath(poly, closed=False).contains_points(centres).reshape(24, 24)
        np.testing.assert_array_equal(fill_polygons([poly], (24, 24)), expected)


def test_mask_to_contours_and_back_is_exact() -> None:
    rng = np.random.default_rng(0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in GEOM.shape], indexing="ij"), axis=-1)
    r = np.linalg.norm((ijk - [20, 25, 6]) * [1, 1, 1.5], axis=-1)
    mask = ((r < 15) & (r > 6)) | (rng.random(GEOM.shape) < 0.03)  # a shell with a hole plus speckle
    mask[0, :, 3] = True  # touching the border
    contours = [pts for _, pts in mask_to_contours(mask, GEOM)]
    np.testing.assert_array_equal(rasterise_roi(contours, GEOM, "x", "RS.dcm"), mask)


def test_plane_between_slices_goes_to_the_nearest() -> None:
    mask = rasterise_roi([_square(4.4, 9.5, 20.5), _square(5.4, 9.5, 20.5)], GEOM, "x", "RS.dcm")
    assert list(np.flatnonzero(mask.any(axis=(0, 1)))) == [4, 5]
    assert mask[:, :, 4].sum() == 11 * 11  # voxel centres 10..20


def test_sparse_planes_are_filled_but_not_extended() -> None:
    contours = [_square(k, 10, 20) for k in (2, 4, 6)] + [_square(11, 5, 8)]  # plane 11: a separate piece
    mask = rasterise_roi(contours, GEOM, "x", "RS.dcm")
    assert list(np.flatnonzero(mask.any(axis=(0, 1)))) == [2, 3, 4, 5, 6, 11]


def test_contour_outside_the_image_is_an_error() -> None:
    with pytest.raises(MddoseError, match="ROI 'Cord'.*outside the CT image"):
        rasterise_roi([_square(3, 30, 60)], GEOM, "Cord", "RS.dcm")
    with pytest.raises(MddoseError, match="outside the CT image"):
        rasterise_roi([_square(14, 10, 20)], GEOM, "Cord", "RS.dcm")


def test_tilted_contour_is_an_error() -> None:
    pts = _square(3, 10, 20)
    pts[0, 2] += 5.0
    with pytest.raises(MddoseError, match="not in an axial plane"):
        rasterise_roi([pts], GEOM, "x", "RS.dcm")
