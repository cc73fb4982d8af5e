"""3D inputs for the volumetric baselines (``BaselineConfig(dims=3)``): structure volumes, dose and mask volumes,
and random training crops.

A structure volume is the stack of the axial structure images of :func:`~mddose.data.dataset.structure_channels`
along z, so the channels are exactly the 2D models' (CT, target level, OARs); arrays are (C, X, Y, Z) and a
network sees X, Y, Z as its three spatial axes. Volumes stay on the native grid (no resizing; ``image_size``
does not apply), and the 2D models' slice context (2.5D CT, target context) does not apply either.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mddose.data.cache import Cache, CachedPatient
from mddose.data.dataset import DataConfig, jitter_ct, mirror, mirror_swaps, slice_dose, slice_mask, structure_channels


def structure_volume(vol: CachedPatient, config: DataConfig, zs: range | None = None) -> np.ndarray:
    """Structure channels of the axial slices ``zs`` (default: all): (C, X, Y, len(zs)) float32."""
    if config.slice_context:
        raise ValueError("3D inputs take no 2.5D context (context_slices must be 0, target_context empty)")
    zs = zs if zs is not None else range(vol.full_shape[2])
    return np.stack([structure_channels(vol, z, config) for z in zs], axis=-1)


def dose_volume(vol: CachedPatient, config: DataConfig, zs: range | None = None) -> np.ndarray:
    """Normalised dose of the slices ``zs``: (1, X, Y, len(zs)) float32."""
    zs = zs if zs is not None else range(vol.full_shape[2])
    return np.stack([slice_dose(vol, z, config) for z in zs], axis=-1)


def mask_volume(vol: CachedPatient, zs: range | None = None) -> np.ndarray:
    """Possible-dose mask of the slices ``zs``: (1, X, Y, len(zs)) float32 in {0, 1}."""
    zs = zs if zs is not None else range(vol.full_shape[2])
    return np.stack([slice_mask(vol, z) for z in zs], axis=-1)


def crop_origin(vol: CachedPatient, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """A random crop origin (torch's RNG) whose crop is centred inside the patient's region of interest."""
    origin = []
    for axis, p in enumerate(patch):
        full, start, size = vol.full_shape[axis], vol.offset[axis], vol.ct.shape[axis]
        if p > full:
            raise ValueError(f"{vol.patient_id}: patch {patch} is larger than the grid {vol.full_shape}")
        centre = start + int(torch.randint(0, max(1, size), ()))
        origin.append(min(max(centre - p // 2, 0), full - p))
    return origin[0], origin[1], origin[2]


class VolumeDataset(Dataset):
    """Random ``patch`` crops (X, Y, Z voxels) of cached patients: ``dataset[i]`` is ``(cond, dose)``, (C, *patch)
    and (1, *patch).

    Item ``i`` is a crop of patient ``i % n``; ``crops_per_patient`` crops of every patient make an epoch. Crop
    positions and augmentation (left-right mirror with paired-organ swap, CT jitter) draw from torch's global
    RNG, so a seeded run is reproducible and resumes exactly.
    """

    def __init__(self, cache: Cache, config: DataConfig, patch: tuple[int, int, int],
                 patient_ids: list[str] | None = None, crops_per_patient: int = 8) -> None:
        if config.rois.all != cache.rois.all:
            raise ValueError("the data config's ROIs differ from the cache's")
        self.cache, self.config, self.patch = cache, config, tuple(patch)
        self.ids = list(patient_ids if patient_ids is not None else cache.patient_ids)
        unknown = [p for p in self.ids if p not in cache.entries]
        if unknown:
            raise KeyError(f"patients not in cache: {unknown[:5]}")
        self.crops_per_patient = crops_per_patient
        self._swap = mirror_swaps(config)

    def __len__(self) -> int:
        return len(self.ids) * self.crops_per_patient

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        vol = self.cache.get(self.ids[i % len(self.ids)])
        x0, y0, z0 = crop_origin(vol, self.patch)
        px, py, pz = self.patch
        zs = range(z0, z0 + pz)
        cond = torch.from_numpy(structure_volume(vol, self.config, zs)[:, x0:x0 + px, y0:y0 + py])
        dose = torch.from_numpy(dose_volume(vol, self.config, zs)[:, x0:x0 + px, y0:y0 + py])
        if self.config.augment:
            if float(torch.rand(())) < 0.5:  # axis 1 of the grid (dim -2 here) runs from the patient's right to left
                cond, dose, _ = mirror(cond, dose, dose, self._swap, axis=-2)
            cond = jitter_ct(cond, self.config)
        return cond.contiguous(), dose.contiguous()
