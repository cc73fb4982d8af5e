"""Grids in patient coordinates and resampling between them."""

from __future__ import annotations

import numpy as np

from mddose.io.geometry import MODEL_DIRECTION, VolumeGeometry, default_geometry, inside, resample, resample_mask


def test_index_world_round_trip_and_dict() -> None:
    geom = VolumeGeometry((4, 5, 6), (1.5, 2.0, 3.0), (10.0, -5.0, 2.0), MODEL_DIRECTION)
    ijk = np.array([[0, 0, 0], [3, 4, 5], [1.5, 2.25, 0.5]])
    np.testing.assert_allclose(geom.world_to_index(geom.index_to_world(ijk)), ijk, atol=1e-12)
    # axis 0 → +y (posterior), axis 1 → +x (left), axis 2 → −z (inferior)
    np.testing.assert_allclose(geom.index_to_world([1, 0, 0]) - geom.origin, [0, 1.5, 0])
    np.testing.assert_allclose(geom.index_to_world([0, 1, 0]) - geom.origin, [2.0, 0, 0])
    np.testing.assert_allclose(geom.index_to_world([0, 0, 1]) - geom.origin, [0, 0, -3.0])
    assert VolumeGeometry.from_dict(geom.to_dict()) == geom


def test_resample_identity_and_flips_are_exact() -> None:
    rng = np.random.default_rng(0)
    src = default_geometry((6, 7, 8), (2.0, 2.0, 2.5))
    vol = rng.normal(size=src.shape).astype(np.float32)
    np.testing.assert_array_equal(resample(vol, src, src), vol)
    d = np.asarray(src.direction)
    flipped = VolumeGeometry(src.shape, src.spacing, tuple(src.index_to_world([5, 6, 7])), -d)
    np.testing.assert_allclose(resample(vol, src, flipped), vol[::-1, ::-1, ::-1], atol=1e-6)


def test_resample_outside_reads_cval_and_inside_mask() -> None:
    src = default_geometry((4, 4, 4), (1.0, 1.0, 1.0))
    dst = src.crop((-2, 0, 0), (6, 4, 4))
    out = resample(np.zeros(src.shape, np.float32), src, dst, cval=-1000)
    assert (out[:2] == -1000).all() and (out[2:6] == 0).all() and (out[6:] == -1000).all()
    np.testing.assert_array_equal(inside(src, dst)[:, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0])


def test_downsampled_mask_keeps_its_area() -> None:
    """A disc on a 1 mm grid resampled to 4 mm keeps its area (box filter + half threshold)."""
    src = default_geometry((200, 200, 1), (1.0, 1.0, 1.0))
    ijk = np.stack(np.meshgrid(np.arange(200), np.arange(200), [0], indexing="ij"), axis=-1)
    disc = np.linalg.norm(src.index_to_world(ijk)[..., :2], axis=-1) < 40
    dst = default_geometry((50, 50, 1), (4.0, 4.0, 1.0))
    small = resample_mask(disc, src, dst)
    assert abs(small.sum() * 16 - disc.sum()) / disc.sum() < 0.03
