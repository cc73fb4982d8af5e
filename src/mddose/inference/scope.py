"""What a model may be asked: a patient with a target, in the range of anatomy it was trained on.

- **No target, no prediction.** A patient none of whose targets is contoured (a clinic's "PTV-1" that no ROI map
  sent to a model target) is refused in one line that names the unmapped structures and the ``--roi-map`` line
  that would fix it (:func:`require_target`).
- **Out of scope, said in one line.** ``train`` writes the training set's profile (``training_set.json`` in the
  run folder, shipped with the weights): the extent of the patients' possible-dose masks along z and in-plane,
  their voxel size and the OARs contoured. A patient far outside it (a lung CT's 300 mm against head-and-neck
  slabs, a 4-slice CT), or one with few of the model's OARs, or fewer slices than the network's context reads, is
  predicted with a warning (:func:`scope_warnings`). Voxel sizes are :mod:`mddose.inference.bounds`'s to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mddose.atomic import write_json
from mddose.data.dataset import DataConfig
from mddose.data.openkbp import find_file
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.io.dicom_import import SIDECAR
from mddose.io.roi_map import target_fix
from mddose.runs.layout import PROFILE

#: how far outside the training set's range (as a factor on its min and max) a patient may lie without a word
SLACK = 1.25
MIN_OARS = 3  # fewer of the model's OARs contoured: the OAR sparing is guesswork


def require_target(folder: Path, rois: RoiConfig) -> None:
    """Refuse a patient folder without any of the model's target files, naming the likely fix."""
    if any(find_file(folder, t) is not None for t in rois.targets):
        return
    unmapped = _unmapped(folder)
    named = f" (unmapped structures: {', '.join(unmapped)})" if unmapped else ""
    raise MddoseError(f"no target: none of the model's targets {', '.join(rois.targets)} is contoured{named}; "
                      f"{target_fix(unmapped, rois)} and import it again", folder)


def _unmapped(folder: Path) -> list[str]:
    path = folder / SIDECAR
    try:
        return list(json.loads(path.read_text())["unmapped_roi_names"]) if path.is_file() else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def profile_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The training set's profile from a cache index's patient entries."""
    z = [len(e["slices"]) * e["spacing"][2] for e in entries]
    width = [max(e["crop_shape"][0] * e["spacing"][0], e["crop_shape"][1] * e["spacing"][1]) for e in entries]
    spacing = [e["spacing"] for e in entries]
    return {"patients": len(entries), "z_extent_mm": _range(z), "width_mm": _range(width),
            "spacing_mm": {"min": np.min(spacing, axis=0).tolist(), "max": np.max(spacing, axis=0).tolist()}}


def _range(values: list[float]) -> dict[str, float]:
    return {"min": round(float(min(values)), 1), "max": round(float(max(values)), 1)}


def write_profile(folder: Path, profile: dict[str, Any]) -> None:
    write_json(Path(folder) / PROFILE, profile)


def read_profile(checkpoint: Path) -> dict[str, Any] | None:
    """The profile beside a checkpoint: in the folder itself (shipped weights) or in its run folder."""
    for folder in (checkpoint, checkpoint.parent.parent):
        if (folder / PROFILE).is_file():
            try:
                return json.loads((folder / PROFILE).read_text())
            except (OSError, ValueError):
                return None
    return None


def scope_warnings(patient: Patient, data: DataConfig, profile: dict[str, Any] | None) -> list[str]:
    """One line per way the patient lies outside what the model was trained on (empty: within it)."""
    lines = []
    zs = patient.axial_slices()
    reach = max([data.context_slices, *map(abs, data.target_context)])
    if len(zs) < 2 * reach + 1:
        lines.append(f"only {len(zs)} axial slices: fewer than the {2 * reach + 1} the model's context reads")
    oars = [o for o in data.rois.oars if o in patient.present_rois()]
    if len(oars) < min(MIN_OARS, len(data.rois.oars)):
        lines.append(f"only {len(oars)} of the model's {len(data.rois.oars)} OARs are contoured "
                     f"({', '.join(oars) or 'none'}): its OAR sparing is a guess")
    if profile and len(zs):
        lines += _outside_profile(patient, zs, profile)
    return [f"{patient.patient_id}: out of the model's scope: {line}" for line in lines]


def _outside_profile(patient: Patient, zs: np.ndarray, profile: dict[str, Any]) -> list[str]:
    mask = patient.possible_dose_mask
    rows, cols = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2)))
    measured = {"z_extent_mm": len(zs) * patient.spacing[2],
                "width_mm": max((rows[-1] - rows[0] + 1) * patient.spacing[0],
                                (cols[-1] - cols[0] + 1) * patient.spacing[1])}
    words = {"z_extent_mm": "dose region along z", "width_mm": "dose region in-plane"}
    lines = []
    for key, value in measured.items():
        lo, hi = profile[key]["min"], profile[key]["max"]
        if not lo / SLACK <= value <= hi * SLACK:
            lines.append(f"{words[key]} {value:.0f} mm (training set {lo:.0f}–{hi:.0f} mm)")
    return lines  # the voxel size is inference/bounds.py's to check
