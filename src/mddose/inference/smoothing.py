"""Smoothing a slice-wise prediction across its slices, outside the targets.

A network that predicts each axial slice on its own gives neighbouring slices independent errors; a dose
distribution is smooth across a few millimetres. A Gaussian along the slice axis, inside the possible-dose mask,
averages those errors away. It is a normalised convolution: the dose at the mask's upper and lower edges is not
pulled toward the zero outside it. Inside the targets the dose is kept as predicted: there the dose is flat and
its superior and inferior edges are steep, so a Gaussian across them would pull the targets' coverage (D95, D99)
down. The default width and the kept targets were measured on the validation patients
(docs/experiments/smoothing-openkbp.md); 3D models predict volumes and are not smoothed.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

SLICE_SMOOTH_MM = 5.0  # Gaussian sigma along the slice axis for slice-wise (2D) models


def default_smoothing(volumetric: bool) -> float:
    """The smoothing (sigma in mm) that predictions of a model get unless asked otherwise."""
    return 0.0 if volumetric else SLICE_SMOOTH_MM


def smooth_across_slices(dose: np.ndarray, mask: np.ndarray, sigma_mm: float, slice_mm: float,
                         keep: np.ndarray | None = None) -> np.ndarray:
    """``dose`` (X, Y, Z) smoothed along Z by a Gaussian of ``sigma_mm`` inside ``mask``; 0 outside it.

    ``slice_mm`` is the slice spacing; ``keep`` (bool, like ``mask``) the voxels whose dose stays as given (the
    targets). The result is a weighted mean of the doses in the mask, so it stays within their range (never
    negative, never above their maximum).
    """
    if sigma_mm < 0:
        raise ValueError("the smoothing sigma must be ≥ 0 mm")
    if sigma_mm == 0 or not mask.any():
        return dose
    weight = mask.astype(np.float32)
    sigma = sigma_mm / slice_mm
    total = gaussian_filter1d(dose.astype(np.float32) * weight, sigma, axis=2, mode="constant")
    norm = gaussian_filter1d(weight, sigma, axis=2, mode="constant")
    smooth = total / np.maximum(norm, 1e-12)
    if keep is not None:
        smooth = np.where(keep, dose, smooth)
    return np.where(mask, smooth, 0.0).astype(np.float32)
