"""Axial 2D slices for training and prediction: (structure channels, dose) pairs.

Channel layout of the structure image ``c`` (paper Sec. II: "(2+O) channels, the image and the PTV, O OARs"),
in this order:

1. **CT**, ``clip(HU, -1000, 1600) / 1000`` (air -1, water 0, dense bone 1.6). With ``context_slices = k``
   (2.5D), the CT of the k neighbouring slices on each side is included too, in slice order: 2k + 1 CT channels
   with the centre slice in the middle. Outside the possible-dose mask the CT is air, as the cache keeps it.
2. **Targets.** ``target_encoding="prescription"`` (default, the paper's single PTV channel): each voxel holds
   the highest prescription among the PTVs that contain it divided by the highest prescription of the ROI
   configuration (OpenKBP: PTV70 → 1.0, PTV63 → 0.9, PTV56 → 0.8, 0 outside every PTV), so one channel carries
   every dose level. ``"per_level"``: one binary channel per target of the configuration.
3. **OARs**, one binary channel each in ``RoiConfig.oars`` order (zeros where not contoured).

   ``structure_encoding="distance"`` (DoseDiff's "distance-aware" inputs; needs ``target_encoding="per_level"``)
   replaces each binary target and OAR channel by its signed distance map (:mod:`mddose.data.distance`): the
   in-plane distance to the structure in mm (the patient's own pixel spacing), negative inside, positive outside,
   divided by ``distance_scale_mm`` (50 mm) and clipped to [-1, 1]. A structure absent from the slice (not
   contoured, or not on this slice) holds +1 everywhere: far away. Resizing is bilinear for these channels, and
   the pixels a shift uncovers hold +1 (CT: air; the other channels: 0).
4. **Target context** (``target_context``, empty by default): the prescription map of the slices at these offsets
   along z, one channel each in the given order, so a 2D network sees where the targets start and end above and
   below the slice (zeros past the patient).
5. **Beam prior** (``beam_prior``, off by default): the beam model's dose for the patient's own anatomy and the
   plan's gantry angles ``beam_angles`` (:mod:`mddose.data.beam_prior`), in the dose's units (Gy /
   ``dose_norm_gy``).
6. **Field apertures** (``beam_apertures``, off): per target, the fraction of the fields at ``beam_angles`` whose
   aperture covers the pixel (:func:`~mddose.data.beam_prior.field_apertures`). New inputs come last: a network
   trained without them gains them as zero-initialised inputs.

Dose is ``Gy / dose_norm_gy`` (default 80 Gy, above every OpenKBP training dose: the largest is recorded by
``prepare`` in ``cache.json``), so the model works on [0, ~1] as the published code does.

Slices are the cache's native 128×128 (the crop is put back at its place in the full grid); ``image_size``
resizes (bilinear for CT and dose, nearest for masks; the paper used 256). Augmentation is anatomically safe
only: a left-right flip (axis 1 of the slice runs from the patient's right to left in OpenKBP) that swaps the
paired organs of ``RoiConfig.mirror_pairs``, small in-plane shifts, and a small CT intensity jitter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mddose.data.beam_prior import OPENKBP_BEAM_ANGLES, check_angles, field_apertures
from mddose.data.cache import DOSE_STEP_GY, Cache, CachedPatient
from mddose.data.distance import DISTANCE_SCALE_MM, signed_distance
from mddose.data.patient import RoiConfig
from mddose.errors import MddoseError

CT_CLIP_HU = (-1000.0, 1600.0)


@dataclass
class DataConfig:
    """How slices become network inputs. Saved with every run as part of its config.json."""

    rois: RoiConfig = field(default_factory=RoiConfig)
    image_size: int = 128  # side of the square network input; 128 is native OpenKBP, the paper used 256
    context_slices: int = 0  # 2.5D: neighbouring CT slices on each side added as channels
    target_encoding: Literal["prescription", "per_level"] = "prescription"
    # the targets and OARs as binary masks, or as signed distance maps in mm / distance_scale_mm (DoseDiff's)
    structure_encoding: Literal["mask", "distance"] = "mask"
    distance_scale_mm: float = DISTANCE_SCALE_MM  # distances from -scale (inside) to +scale map to [-1, 1]
    target_context: tuple[int, ...] = ()  # slice offsets whose prescription map is added, e.g. (-8, -4, 4, 8)
    dose_norm_gy: float = 80.0  # dose / dose_norm_gy is what the model sees
    augment: bool = False  # training only: flips with organ swap, shifts, CT jitter
    max_shift: int = 6  # pixels, uniform in [-max_shift, max_shift] per axis
    ct_jitter_hu: float = 20.0  # CT offset jitter (HU, std)
    ct_scale_jitter: float = 0.02  # CT contrast jitter (relative, std)
    # crop > 0: train on random crop × crop windows around the patient and predict on the patient's box (a
    # multiple of 16 around it) instead of the whole slice; for networks without absolute positions only
    crop: int = 0
    beam_prior: bool = False  # the beam model's dose as the last structure channel
    beam_angles: tuple[float, ...] = OPENKBP_BEAM_ANGLES  # the plans' gantry angles (degrees): prior, apertures
    beam_apertures: bool = False  # per target, the fraction of the fields whose aperture covers the pixel

    def __post_init__(self) -> None:
        if isinstance(self.rois, dict):
            self.rois = RoiConfig.from_dict(self.rois)
        if not isinstance(self.beam_angles, list | tuple):
            raise ValueError(f"beam_angles holds gantry angles in degrees, not {self.beam_angles!r}")
        self.beam_angles = check_angles(self.beam_angles)
        if self.crop and (self.crop % 16 or self.crop > self.image_size):
            raise ValueError(f"crop must be a multiple of 16 up to image_size {self.image_size}, not {self.crop}")
        if self.target_encoding not in ("prescription", "per_level"):
            raise ValueError(f"target_encoding must be 'prescription' or 'per_level', not {self.target_encoding!r}")
        if self.structure_encoding not in ("mask", "distance"):
            raise ValueError(f"structure_encoding must be 'mask' or 'distance', not {self.structure_encoding!r}")
        if self.structure_encoding == "distance" and self.target_encoding != "per_level":
            raise ValueError("structure_encoding 'distance' gives each target its own distance map: it needs "
                             "target_encoding 'per_level'")
        if not self.distance_scale_mm > 0:
            raise ValueError(f"distance_scale_mm must be positive, not {self.distance_scale_mm}")
        offsets = self.target_context
        if not isinstance(offsets, list | tuple) or any(type(o) is not int for o in offsets):
            raise ValueError(f"target_context holds slice offsets (integers), not {offsets!r}")
        self.target_context = tuple(offsets)
        if 0 in self.target_context or len(set(self.target_context)) < len(self.target_context):
            raise ValueError(f"target_context holds distinct non-zero slice offsets, not {self.target_context}")
        if self.target_context and self.target_encoding != "prescription":
            raise ValueError("target_context adds prescription maps: it needs target_encoding 'prescription'")

    @property
    def n_target_channels(self) -> int:
        return 1 if self.target_encoding == "prescription" else len(self.rois.targets)

    @property
    def n_ct_channels(self) -> int:
        return 2 * self.context_slices + 1

    @property
    def n_structure_channels(self) -> int:
        """The target and OAR channels: binary masks or signed distance maps (``structure_encoding``)."""
        return self.n_target_channels + len(self.rois.oars)

    @property
    def n_smooth_channels(self) -> int:
        """The leading channels that hold continuous values (CT, distance maps): resized bilinearly."""
        return self.n_ct_channels + (self.n_structure_channels if self.structure_encoding == "distance" else 0)

    def shift_fill(self, n_channels: int) -> list[float]:
        """What each of ``n_channels`` structure channels holds where a shift uncovers pixels: air for the CT,
        far away (+1) for a distance map, 0 for the rest."""
        far = self.n_structure_channels if self.structure_encoding == "distance" else 0
        n_ct = self.n_ct_channels
        return [CT_CLIP_HU[0] / 1000.0] * n_ct + [1.0] * far + [0.0] * (n_channels - n_ct - far)

    @property
    def cond_channels(self) -> int:
        return (self.n_ct_channels + self.n_target_channels + len(self.rois.oars) + len(self.target_context)
                + int(self.beam_prior) + (len(self.rois.targets) if self.beam_apertures else 0))

    @property
    def prior_angles(self) -> tuple[float, ...] | None:
        """The gantry angles a patient's beam prior must be computed with (None: the inputs take no prior)."""
        return self.beam_angles if self.beam_prior else None

    @property
    def slice_context(self) -> bool:
        """Whether the inputs of a slice read other slices (2.5D CT or target context): 2D networks only."""
        return bool(self.context_slices or self.target_context)

    def without_slice_context(self) -> DataConfig:
        """The same inputs read from their own slice only (what 3D networks take)."""
        return replace(self, context_slices=0, target_context=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(**d)


def _place(crop_slice: np.ndarray, vol: CachedPatient, fill: float) -> np.ndarray:
    """Put an in-plane crop back at its position in the full (X, Y) grid."""
    out = np.full(vol.full_shape[:2], fill, dtype=np.float32)
    (x0, y0), (sx, sy) = vol.offset[:2], crop_slice.shape
    out[x0:x0 + sx, y0:y0 + sy] = crop_slice
    return out


def _crop_z(vol: CachedPatient, z: int) -> int | None:
    k = z - vol.offset[2]
    return k if 0 <= k < vol.ct.shape[2] else None


def structure_channels(vol: CachedPatient, z: int, config: DataConfig) -> np.ndarray:
    """The structure image of axial slice ``z`` (full-grid index): (C, X, Y) float32, layout in module doc."""
    channels = []
    for dz in range(-config.context_slices, config.context_slices + 1):
        k = _crop_z(vol, z + dz)
        hu = vol.ct[:, :, k] if k is not None else np.full(vol.ct.shape[:2], CT_CLIP_HU[0])
        channels.append(_place(np.clip(hu, *CT_CLIP_HU) / 1000.0, vol, CT_CLIP_HU[0] / 1000.0))
    rois = config.rois
    if config.target_encoding == "prescription":
        channels.append(_prescription_map(vol, z, rois))
    else:
        channels.extend(_structure_slice(vol, z, t, config) for t in rois.targets)
    channels.extend(_structure_slice(vol, z, o, config) for o in rois.oars)
    channels.extend(_prescription_map(vol, z + dz, rois) for dz in config.target_context)
    if config.beam_prior:
        channels.append(_prior_slice(vol, z, config))
    if config.beam_apertures:
        targets = np.stack([_roi_slice(vol, z, t) for t in rois.targets])
        channels.extend(field_apertures(targets, vol.spacing[:2], config.beam_angles))
    return np.stack(channels)  # (C, X, Y)


def _structure_slice(vol: CachedPatient, z: int, name: str, config: DataConfig) -> np.ndarray:
    """ROI ``name`` on slice ``z`` as the config encodes it: its binary mask or its signed distance map."""
    mask = _roi_slice(vol, z, name)
    if config.structure_encoding == "mask":
        return mask
    return signed_distance(mask, (vol.spacing[0], vol.spacing[1]), config.distance_scale_mm)


def _prior_slice(vol: CachedPatient, z: int, config: DataConfig) -> np.ndarray:
    """The beam prior of slice ``z`` in the dose's units (Gy / ``dose_norm_gy``)."""
    if vol.prior is None:
        raise MddoseError(f"{vol.patient_id} has no beam prior: re-run 'mddose prepare' on its cache (it adds it)")
    return _dose_units(vol, vol.prior, z, config)


def _dose_units(vol: CachedPatient, steps: np.ndarray, z: int, config: DataConfig) -> np.ndarray:
    """Slice ``z`` of a cropped uint16 dose in DOSE_STEP_GY steps, on the full grid in Gy / ``dose_norm_gy``."""
    k = _crop_z(vol, z)
    plane = steps[:, :, k] if k is not None else np.zeros(vol.ct.shape[:2], np.uint16)
    return _place(plane.astype(np.float32) * (DOSE_STEP_GY / config.dose_norm_gy), vol, 0.0)


def _roi_slice(vol: CachedPatient, z: int, name: str) -> np.ndarray:
    """Binary mask of ROI ``name`` on slice ``z`` in the full (X, Y) grid (zeros outside the cached box)."""
    k = _crop_z(vol, z)
    if k is None:
        return np.zeros(vol.full_shape[:2], np.float32)
    return _place(((vol.rois[:, :, k] >> (1 + vol.roi_names.index(name))) & 1).astype(np.float32), vol, 0.0)


def _prescription_map(vol: CachedPatient, z: int, rois: RoiConfig) -> np.ndarray:
    """Slice ``z``'s highest prescription per voxel over the targets, relative to the configuration's highest."""
    level = np.zeros(vol.full_shape[:2], np.float32)
    for t in rois.targets:
        level = np.maximum(level, _roi_slice(vol, z, t) * (rois.prescription(t) / rois.max_prescription))
    return level


def slice_dose(vol: CachedPatient, z: int, config: DataConfig) -> np.ndarray:
    """Normalised dose of slice ``z``: (1, X, Y) float32."""
    if vol.dose is None:
        raise ValueError(f"{vol.patient_id} has no dose")
    return _dose_units(vol, vol.dose, z, config)[None]


def slice_mask(vol: CachedPatient, z: int) -> np.ndarray:
    """Possible-dose mask of slice ``z``: (1, X, Y) float32 in {0, 1}."""
    k = _crop_z(vol, z)
    bits = vol.rois[:, :, k] if k is not None else np.zeros(vol.ct.shape[:2], np.uint16)
    return _place((bits & 1).astype(np.float32), vol, 0.0)[None]


def resize_inputs(cond: torch.Tensor, mask: torch.Tensor, config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch of structure images (B, C, H, W) and masks (B, 1, H, W) to ``config.image_size``:
    bilinear for the CT channels and distance maps, nearest for the masks and prescription maps. Training and
    prediction both go through here."""
    size = config.image_size
    if cond.shape[-1] == size and cond.shape[-2] == size:
        return cond, mask
    n_smooth = config.n_smooth_channels
    parts = [F.interpolate(cond[:, :n_smooth], size=(size, size), mode="bilinear", align_corners=False)]
    if cond.shape[1] > n_smooth:
        parts.append(F.interpolate(cond[:, n_smooth:], size=(size, size), mode="nearest"))
    return torch.cat(parts, dim=1), F.interpolate(mask, size=(size, size), mode="nearest")


def resize(cond: torch.Tensor, dose: torch.Tensor, mask: torch.Tensor, config: DataConfig):
    """Resize one sample (C, H, W) tensors to ``config.image_size``."""
    size = config.image_size
    if cond.shape[-1] == size and cond.shape[-2] == size:
        return cond, dose, mask
    cond, mask = resize_inputs(cond[None], mask[None], config)
    dose = F.interpolate(dose[None], size=(size, size), mode="bilinear", align_corners=False)
    return cond[0], dose[0], mask[0]


class SliceDataset(Dataset):
    """Axial slices of cached patients that meet the possible-dose mask.

    ``dataset[i]`` is ``(cond, dose)`` — (C, S, S) structure image and (1, S, S) normalised dose, S =
    ``config.image_size`` — or ``(cond, dose, mask)`` with ``return_mask=True``. Augmentation draws from
    torch's global RNG, so a seeded run (and each DataLoader worker) is reproducible.
    """

    def __init__(
        self,
        cache: Cache,
        config: DataConfig,
        patient_ids: list[str] | None = None,
        return_mask: bool = False,
    ) -> None:
        self.cache, self.config, self.return_mask = cache, config, return_mask
        if config.rois.all != cache.rois.all:
            raise ValueError("the data config's ROIs differ from the cache's")
        ids = patient_ids if patient_ids is not None else cache.patient_ids
        unknown = [p for p in ids if p not in cache.entries]
        if unknown:
            raise KeyError(f"patients not in cache: {unknown[:5]}")
        if config.crop:
            _check_native_grid(cache, ids, config)
        if config.beam_prior and cache.beam_angles != config.beam_angles:
            raise MddoseError(f"the run's beam prior needs gantry angles {list(config.beam_angles)}, the cache holds "
                              f"{'none' if cache.beam_angles is None else list(cache.beam_angles)}: re-run "
                              "'mddose prepare' (it adds the prior) or prepare a cache with these angles", cache.dir)
        self.items = [(pid, int(z)) for pid in ids for z in cache.entries[pid]["slices"]]
        self._swap = mirror_swaps(config)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        pid, z = self.items[i]
        vol = self.cache.get(pid)
        cond = torch.from_numpy(structure_channels(vol, z, self.config))
        dose = torch.from_numpy(slice_dose(vol, z, self.config))
        mask = torch.from_numpy(slice_mask(vol, z))
        if self.config.augment:
            cond, dose, mask = self._augment(cond, dose, mask)
        cond, dose, mask = resize(cond, dose, mask, self.config)
        if self.config.crop:
            window = random_window(vol, self.config.crop)
            cond, dose, mask = (x[:, window[0], window[1]] for x in (cond, dose, mask))
        return (cond, dose, mask) if self.return_mask else (cond, dose)

    def _augment(self, cond: torch.Tensor, dose: torch.Tensor, mask: torch.Tensor):
        cfg = self.config
        r = torch.rand(3)
        if r[0] < 0.5:  # mirror the patient left-right: flip columns, swap paired organs
            cond, dose, mask = mirror(cond, dose, mask, self._swap, axis=-1)
        if cfg.max_shift > 0:
            dx, dy = (int(v) for v in torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2,)))
            cond = _shift(cond, dx, dy, fill=cfg.shift_fill(cond.shape[0]))
            dose, mask = _shift(dose, dx, dy, [0.0]), _shift(mask, dx, dy, [0.0])
        return jitter_ct(cond, cfg), dose, mask


def _check_native_grid(cache: Cache, ids: list[str], config: DataConfig) -> None:
    """Crops are cut in the cache's grid and predicted there unresized: it must be the network's ``image_size``."""
    size = config.image_size
    for pid in ids:
        grid = tuple(cache.entries[pid]["full_shape"][:2])
        if grid != (size, size):
            raise MddoseError(
                f"patient {pid} has a {grid[0]}x{grid[1]} in-plane grid, but training crops (data.crop {config.crop})"
                f" need the network's native {size}x{size}: set data.crop to 0 or data.image_size to {grid[0]}",
                cache.dir)


def random_window(vol: CachedPatient, size: int) -> tuple[slice, slice]:
    """A random size × size in-plane window that holds as much of the patient's box as it can (torch's RNG)."""
    window = []
    for lo, extent, full in zip(vol.offset[:2], vol.ct.shape[:2], vol.full_shape[:2]):
        hi = lo + extent
        first, last = (max(0, hi - size), min(lo, full - size)) if extent <= size else (lo, hi - size)
        start = int(torch.randint(first, last + 1, ()))
        window.append(slice(start, start + size))
    return window[0], window[1]


def patient_window(vol: CachedPatient, multiple: int) -> tuple[slice, slice]:
    """The in-plane window prediction runs on: the patient's box grown to a multiple of ``multiple``, centred."""
    window = []
    for lo, extent, full in zip(vol.offset[:2], vol.ct.shape[:2], vol.full_shape[:2]):
        size = min(full, -(-extent // multiple) * multiple)
        start = min(max(0, lo + extent // 2 - size // 2), full - size)
        window.append(slice(start, start + size))
    return window[0], window[1]


def mirror_swaps(config: DataConfig) -> list[tuple[int, int]]:
    """Channel index pairs of the paired organs (``RoiConfig.mirror_pairs``) that a left-right flip swaps."""
    oars = config.rois.oars
    first_oar = config.n_ct_channels + config.n_target_channels
    return [(first_oar + oars.index(a), first_oar + oars.index(b))
            for a, b in config.rois.mirror_pairs if a in oars and b in oars]


def mirror(cond: torch.Tensor, dose: torch.Tensor, mask: torch.Tensor, swaps: list[tuple[int, int]], axis: int):
    """Mirror the patient left-right: flip ``axis`` (the patient's right-left axis) and swap paired organs."""
    cond, dose, mask = cond.flip(axis), dose.flip(axis), mask.flip(axis)
    return cond[swapped_order(cond.shape[0], swaps)], dose, mask


def swapped_order(n_channels: int, swaps: list[tuple[int, int]]) -> list[int]:
    """The channel order after a left-right mirror: 0 … n-1 with each pair of ``swaps`` exchanged."""
    order = list(range(n_channels))
    for a, b in swaps:
        order[a], order[b] = b, a
    return order


def jitter_ct(cond: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """A random CT contrast and offset change inside the body (outside air untouched), from torch's RNG."""
    if config.ct_jitter_hu <= 0 and config.ct_scale_jitter <= 0:
        return cond
    n_ct = config.n_ct_channels
    scale = 1.0 + config.ct_scale_jitter * float(torch.randn(()))
    offset = config.ct_jitter_hu / 1000.0 * float(torch.randn(()))
    ct = cond[:n_ct]
    body = ct > CT_CLIP_HU[0] / 1000.0
    cond = cond.clone()
    cond[:n_ct] = torch.where(body, ct * scale + offset, ct)
    return cond


def _shift(x: torch.Tensor, dx: int, dy: int, fill: list[float]) -> torch.Tensor:
    """Translate (C, H, W) by (dx, dy) pixels, filling uncovered pixels per channel."""
    out = torch.tensor(fill, dtype=x.dtype).view(-1, 1, 1).expand_as(x).clone()
    h, w = x.shape[-2:]
    src = x[..., max(0, -dx):h - max(0, dx), max(0, -dy):w - max(0, dy)]
    out[..., max(0, dx):max(0, dx) + src.shape[-2], max(0, dy):max(0, dy) + src.shape[-1]] = src
    return out
