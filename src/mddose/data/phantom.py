"""Synthetic head-and-neck phantoms: the project's embedded data for tests and the demo.

Each phantom is a plausible head-and-neck case in the OpenKBP layout (see :mod:`mddose.data.openkbp`): a CT,
the possible-dose mask, OAR and PTV contours and a dose that follows from them through a small physical beam
model (:mod:`mddose.data.phantom_dose`), so that a network can learn it and so that it has the beam streaks
(high-frequency detail) that diffusion models are meant to reproduce.

Geometry and orientation
------------------------
As OpenKBP: a 128³ grid of 3.906 × 3.906 × 2.5 mm (grid 64 keeps the same 500 × 500 × 320 mm field with twice
the spacing). Axes follow the real OpenKBP training patients (checked on ``train-pats``: mandible at low axis-0
index, spinal cord at high; RightParotid at low axis-1 index, LeftParotid at high; brainstem at low axis-2
index, esophagus at high):

* axis 0: anterior → posterior (rows of an axial slice);
* axis 1: patient right → patient left (columns of an axial slice);
* axis 2: superior → inferior (the axial slice index, the last axis).

Anatomy (drawn by :mod:`mddose.data.phantom_anatomy`)
-------
All shapes are analytic: elliptic cross-sections whose centre and semi-axes vary smoothly along the
cranio-caudal coordinate ``s`` (mm below the top of the scanned body). The body runs from a cropped cranium
through the face and mandible to the neck and shoulders; inside it lie a skull, vertebrae with a spinal canal,
mandible, airway (air in the pharynx, larynx and trachea), subcutaneous fat, brainstem, spinal cord,
parotids, larynx and esophagus. Sizes and positions are randomised per patient. Targets: a primary PTV70
(tumour around the oropharynx, lateralised or midline, often with a gross node), optionally a PTV63 (a margin
around it plus ipsilateral nodes) and a PTV56 (elective nodal chains, bilateral or ipsilateral), so that one
to three levels are present; PTVs are mutually exclusive (as in OpenKBP), cropped 4 mm from the skin and
5 mm from the spinal cord. Some OARs are occasionally not contoured (their file is absent), like real data.
CT in integer HU: −1000 exactly outside the body (so the body is ``ct > -1000``), soft tissue ~40, fat ~−90,
brain ~35, parotids ~−20, bone 250–1150, airway air ~−990, plus Gaussian noise (σ 12 HU).
The possible-dose mask is the body within the slices spanned by the targets ± 20 mm (OpenKBP's mask, too,
is the body only over the slices where dose was computed).

Determinism: a phantom is a pure function of ``(seed, grid)``; :func:`write_phantoms` derives patient k's
seed from ``(seed, k)`` with :class:`numpy.random.SeedSequence`, so ``pt_k`` does not depend on how many
patients are written, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mddose.data.openkbp import write_patient
from mddose.data.patient import OPENKBP_SPACING, Patient, RoiConfig
from mddose.data.phantom_anatomy import draw_anatomy, draw_frame
from mddose.data.phantom_dose import compute_dose
from mddose.ownership import claim

log = logging.getLogger(__name__)

GRIDS: tuple[int, ...] = (64, 128)
SLAB_MARGIN_MM = 20.0  # possible-dose mask: body within the targets' slices ± this margin


def grid_spacing(grid: int) -> tuple[float, float, float]:
    """Voxel size in mm of a ``grid``³ phantom: OpenKBP's at 128, the same physical field at 64."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, not {grid}")
    factor = 128 / grid
    return (OPENKBP_SPACING[0] * factor, OPENKBP_SPACING[1] * factor, OPENKBP_SPACING[2] * factor)


# Target levels drawn (generic keys) and their probabilities: one to three levels, the highest always.
_LEVEL_COMBOS = (
    (("high",), 0.2), (("high", "low"), 0.3), (("high", "mid"), 0.1), (("high", "mid", "low"), 0.4),
)
# Probability that an OAR is not contoured (roughly as often as in the OpenKBP training set).
_ABSENT_P = {"Brainstem": 0.05, "SpinalCord": 0.0, "RightParotid": 0.03, "LeftParotid": 0.03,
             "Esophagus": 0.5, "Larynx": 0.5, "Mandible": 0.4}


def make_phantom(
    seed: int, grid: int = 128, patient_id: str = "pt_0", rois: RoiConfig | None = None
) -> Patient:
    """One synthetic head-and-neck patient with its modelled dose; a pure function of ``(seed, grid)``.

    ``rois`` picks the names written: OARs with the OpenKBP names above are drawn (others stay absent), and
    the targets, by prescription, play the primary (highest), high-risk (middle) and elective (lowest) parts.
    """
    rois = rois or RoiConfig()
    spacing = grid_spacing(grid)
    rng = np.random.default_rng(seed)
    f = draw_frame(rng, grid, spacing)
    by_rx = sorted(rois.targets, key=rois.prescription, reverse=True)
    names = {"high": by_rx[0]}
    if len(by_rx) >= 2:
        names["low"] = by_rx[-1]
    if len(by_rx) >= 3:
        names["mid"] = by_rx[1]
    combos = [c for c in _LEVEL_COMBOS if set(c[0]) <= set(names)]
    p = np.array([c[1] for c in combos])
    levels = combos[int(rng.choice(len(combos), p=p / p.sum()))][0]
    anatomy = draw_anatomy(rng, f, levels)
    present = rng.random(len(_ABSENT_P)) >= np.array(list(_ABSENT_P.values()))
    structures: dict[str, np.ndarray] = {}
    for (name, _), keep in zip(_ABSENT_P.items(), present):
        if name in rois.oars and keep and anatomy.structures[name].any():
            structures[name] = anatomy.structures[name]
    for key, name in names.items():
        if key in anatomy.structures:
            structures[name] = anatomy.structures[key]
    targets = np.zeros(f.shape, dtype=bool)
    for name in names.values():
        if name in structures:
            targets |= structures[name]
    zs = np.flatnonzero(targets.any(axis=(0, 1)))
    margin = int(round(SLAB_MARGIN_MM / spacing[2]))
    slab = np.zeros(f.shape[2], dtype=bool)
    slab[max(zs[0] - margin, 0): zs[-1] + margin + 1] = True
    possible = anatomy.body & slab[None, None, :]
    patient = Patient(patient_id, anatomy.ct, possible, spacing, structures, None, rois)
    patient.dose = compute_dose(patient)
    return patient


def patient_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th (0-based) phantom of a run: independent of how many are written."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, not {seed}")
    child = np.random.SeedSequence(seed).spawn(index + 1)[index]
    return int(child.generate_state(1, dtype=np.uint64)[0])


def write_phantoms(
    out_dir: str | Path, n_patients: int, seed: int, grid: int = 128, progress: bool = True, overwrite: bool = False
) -> list[Path]:
    """Write phantoms ``pt_1 … pt_N`` (plain ``.csv``, OpenKBP layout) into ``out_dir``; returns the folders.

    Each folder is written atomically. ``out_dir`` is claimed (:func:`mddose.ownership.claim`): a folder holding
    anything else (real patients) is refused, earlier phantoms are replaced only with ``overwrite``. Bad
    arguments raise ValueError; an ``out_dir`` that cannot be written raises :class:`MddoseError` naming it.
    """
    grid_spacing(grid)  # validates the grid before anything is written
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, not {n_patients}")
    patient_seed(seed, 0)  # validates the seed
    paths = []
    with claim(out_dir, "mddose phantom", overwrite=overwrite) as folder:
        for k in tqdm(range(n_patients), desc="phantoms", unit="pt", disable=not progress):
            patient = make_phantom(patient_seed(seed, k), grid=grid, patient_id=f"pt_{k + 1}")
            paths.append(Path(out_dir) / write_patient(patient, folder / patient.patient_id).name)
    log.info("wrote %d phantoms (grid %d, seed %d) to %s", n_patients, grid, seed, out_dir)
    return paths
