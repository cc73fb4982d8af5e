"""Smoothing across slices: a weighted mean inside the possible-dose mask, nothing outside it, targets kept."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.inference.smoothing import SLICE_SMOOTH_MM, default_smoothing, smooth_across_slices


def _mask() -> np.ndarray:
    mask = np.zeros((6, 5, 20), bool)
    mask[1:5, 1:4, 3:15] = True
    return mask


def test_noise_across_slices_is_averaged_and_nothing_leaves_the_mask() -> None:
    mask = _mask()
    rng = np.random.default_rng(0)
    truth = np.where(mask, 60.0, 0.0).astype(np.float32)
    noisy = np.where(mask, truth + rng.normal(0, 3, truth.shape), 0).astype(np.float32)
    smooth = smooth_across_slices(noisy, mask, 5.0, 2.5)
    assert np.abs(smooth - truth)[mask].mean() < 0.6 * np.abs(noisy - truth)[mask].mean()
    assert (smooth[~mask] == 0).all() and np.isfinite(smooth).all()
    assert smooth[mask].min() >= noisy[mask].min() - 1e-4 and smooth[mask].max() <= noisy[mask].max() + 1e-4


def test_a_uniform_dose_stays_uniform_up_to_the_mask_edge() -> None:
    """Normalised convolution: the first and last slices of the mask are not pulled toward the zero beyond."""
    mask = _mask()
    dose = np.where(mask, 70.0, 0.0).astype(np.float32)
    np.testing.assert_allclose(smooth_across_slices(dose, mask, 8.0, 2.5)[mask], 70.0, rtol=1e-5)


def test_width_is_in_millimetres_and_zero_is_identity() -> None:
    mask = np.ones((1, 1, 41), bool)
    dose = np.zeros((1, 1, 41), np.float32)
    dose[0, 0, 20] = 1.0
    fine = smooth_across_slices(dose, mask, 5.0, 2.5)  # sigma = 2 slices
    coarse = smooth_across_slices(dose, mask, 5.0, 5.0)  # sigma = 1 slice
    z = np.arange(41) - 20
    assert np.sqrt((fine[0, 0] * z**2).sum() / fine.sum()) == pytest.approx(2.0, rel=1e-3)
    assert np.sqrt((coarse[0, 0] * z**2).sum() / coarse.sum()) == pytest.approx(1.0, rel=1e-2)
    assert smooth_across_slices(dose, mask, 0.0, 2.5) is dose
    with pytest.raises(ValueError, match="≥ 0"):
        smooth_across_slices(dose, mask, -1.0, 2.5)


def test_kept_voxels_keep_their_dose_and_still_smooth_their_neighbours() -> None:
    """A target's steep superior and inferior edges: its own dose stays as given, the dose beyond it is smoothed."""
    mask = _mask()
    target = np.zeros_like(mask)
    target[1:5, 1:4, 7:11] = True
    dose = np.where(target, 70.0, np.where(mask, 20.0, 0.0)).astype(np.float32)
    kept = smooth_across_slices(dose, mask, 5.0, 2.5, keep=target)
    everywhere = smooth_across_slices(dose, mask, 5.0, 2.5)
    np.testing.assert_array_equal(kept[target], 70.0)
    assert everywhere[target].min() < 60.0  # what smoothing everywhere does to a target's coverage
    beyond = mask & ~target
    np.testing.assert_array_equal(kept[beyond], everywhere[beyond])
    assert kept[1, 1, 11] > 30.0 and (kept[~mask] == 0).all()


def test_slice_wise_models_are_smoothed_by_default_3d_models_are_not() -> None:
    assert default_smoothing(volumetric=False) == SLICE_SMOOTH_MM > 0
    assert default_smoothing(volumetric=True) == 0.0
