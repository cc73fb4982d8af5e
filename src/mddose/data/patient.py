"""The one Patient type every stage of mddose reads and writes.

Array layout
------------
All volumes share one shape and the axis order of the OpenKBP files: a flat C-order index ``n`` in an
OpenKBP CSV is the voxel ``np.unravel_index(n, shape)`` of our arrays, so reading and writing are exact and
no axis is ever silently transposed. For OpenKBP the shape is 128×128×128 and the **last axis is the axial
slice index**; ``spacing`` gives the voxel size in mm along the same three axes (OpenKBP: 3.906, 3.906, 2.5).

Units: CT in Hounsfield units (see :mod:`mddose.data.openkbp` for the offset the files carry), dose in Gy.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OPENKBP_OARS: tuple[str, ...] = (
    "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
)
OPENKBP_TARGETS: tuple[str, ...] = ("PTV56", "PTV63", "PTV70")
OPENKBP_SHAPE: tuple[int, int, int] = (128, 128, 128)
OPENKBP_SPACING: tuple[float, float, float] = (3.906, 3.906, 2.5)  # mm
#: The largest grid mddose reads, per side and in all (512³ float32 voxels are 0.5 GiB): beyond it a file is
#: corrupt, not a patient, and is refused before anything is allocated.
MAX_GRID_SIDE, MAX_GRID_VOXELS = 1024, 512**3


def grid_problem(shape: tuple[int, ...]) -> str | None:
    """Why ``shape`` is not a grid mddose reads (three sides from 1 to MAX_GRID_SIDE, at most MAX_GRID_VOXELS), or
    None when it is one."""
    if len(shape) != 3 or min(shape) < 1:
        return f"grid shape must be 3 positive integers, got {list(shape)}"
    if max(shape) > MAX_GRID_SIDE or shape[0] * shape[1] * shape[2] > MAX_GRID_VOXELS:
        return (f"grid shape {'×'.join(map(str, shape))} is larger than mddose reads (at most {MAX_GRID_SIDE} voxels "
                f"per side and {MAX_GRID_VOXELS:,} in all)")
    return None

_PRESCRIPTION = re.compile(r"^(?:PTV|CTV|GTV)[ _-]?(\d+(?:[.p]\d+)?)", re.IGNORECASE)


def prescription_from_name(name: str) -> float | None:
    """The prescription in Gy that a target's name implies: ``PTV70`` → 70.0, ``PTV_59.4`` → 59.4, else None."""
    match = _PRESCRIPTION.match(name)
    return float(match.group(1).replace("p", ".")) if match else None


@dataclass(frozen=True)
class RoiConfig:
    """Which regions of interest a model knows, in channel order. Defaults: the OpenKBP lists."""

    oars: tuple[str, ...] = OPENKBP_OARS  # organs at risk, one input channel each
    targets: tuple[str, ...] = OPENKBP_TARGETS  # planning target volumes; names must imply a prescription
    # Left/right pairs swapped by a left-right flip, so that augmentation stays anatomically true.
    mirror_pairs: tuple[tuple[str, str], ...] = (("LeftParotid", "RightParotid"),)

    def __post_init__(self) -> None:
        object.__setattr__(self, "oars", tuple(self.oars))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "mirror_pairs", tuple(tuple(p) for p in self.mirror_pairs))
        for name in self.targets:
            if prescription_from_name(name) is None:
                raise ValueError(f"target {name!r} does not name a prescription (expected e.g. 'PTV70')")
        if len(set(self.all)) != len(self.all):
            raise ValueError("ROI names must be unique")

    @property
    def all(self) -> tuple[str, ...]:
        return self.oars + self.targets

    def prescription(self, target: str) -> float:
        value = prescription_from_name(target)
        if value is None:
            raise KeyError(target)
        return value

    @property
    def max_prescription(self) -> float:
        return max(self.prescription(t) for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoiConfig:
        return cls(**d)


@dataclass
class Patient:
    """One patient: anatomy, optional reference dose, geometry.

    Attributes:
        patient_id: folder name, e.g. ``pt_241``.
        ct: (X, Y, Z) float32, Hounsfield units.
        possible_dose_mask: (X, Y, Z) bool, where dose may be non-zero (OpenKBP's ``possible_dose_mask``).
        spacing: voxel size in mm along the three array axes.
        structures: ROI name → (X, Y, Z) bool mask; a ROI that was not contoured is simply absent.
        dose: (X, Y, Z) float32 (or float64, for exact scoring) in Gy, or None when the dose is to be predicted.
        rois: the ROI configuration the structures follow.
    """

    patient_id: str
    ct: np.ndarray
    possible_dose_mask: np.ndarray
    spacing: tuple[float, float, float]
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    dose: np.ndarray | None = None
    rois: RoiConfig = field(default_factory=RoiConfig)

    def __post_init__(self) -> None:
        self.ct = np.asarray(self.ct, dtype=np.float32)
        self.possible_dose_mask = np.asarray(self.possible_dose_mask, dtype=bool)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if len(self.spacing) != self.ct.ndim:
            raise ValueError(f"{self.patient_id}: spacing {self.spacing} does not match a {self.ct.ndim}-D CT")
        if self.possible_dose_mask.shape != self.ct.shape:
            raise ValueError(f"{self.patient_id}: possible_dose_mask shape differs from the CT's {self.ct.shape}")
        self.structures = {k: np.asarray(v, dtype=bool) for k, v in self.structures.items()}
        for name, mask in self.structures.items():
            if mask.shape != self.ct.shape:
                raise ValueError(f"{self.patient_id}: mask {name} has shape {mask.shape}, CT {self.ct.shape}")
        if self.dose is not None:
            self.dose = np.asarray(self.dose)
            if self.dose.dtype not in (np.float32, np.float64):  # float64 is kept for exact scoring
                self.dose = self.dose.astype(np.float32)
            if self.dose.shape != self.ct.shape:
                raise ValueError(f"{self.patient_id}: dose has shape {self.dose.shape}, CT {self.ct.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ct.shape)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def prescriptions(self) -> dict[str, float]:
        """Prescription in Gy of each contoured, non-empty target (PTV70 → 70.0)."""
        return {
            t: self.rois.prescription(t)
            for t in self.rois.targets
            if t in self.structures and self.structures[t].any()
        }

    def present_rois(self) -> list[str]:
        """ROIs of the configuration that this patient has, non-empty, in configuration order."""
        return [r for r in self.rois.all if r in self.structures and self.structures[r].any()]

    def axial_slices(self) -> np.ndarray:
        """Indices along the last axis of the slices that meet the possible-dose mask."""
        return np.flatnonzero(self.possible_dose_mask.any(axis=(0, 1)))
