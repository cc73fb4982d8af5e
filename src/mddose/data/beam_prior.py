"""The beam prior: the project's beam model run on the patient's own anatomy, with the plan's gantry angles.

A dose-prediction network has to guess where the plan's beams run and how their dose falls off with depth. The
plan's field arrangement is known, though: OpenKBP's plans used nine equispaced coplanar fields at 0°, 40°, …,
320° (:data:`OPENKBP_BEAM_ANGLES`, the default template). For coplanar beams each field's aperture is a per-slice
projection of the targets, so :func:`mddose.data.phantom_dose.compute_dose` (apertures per prescription level,
radiological depth, penumbra, scatter, OAR sparing, a ray-based optimiser; no learning) gives a physical first
guess of the dose for any patient. Fed to the network as one more structure channel (``DataConfig.beam_prior``),
in the dose's own units, it tells the network where the beams go; the network learns the correction.

``mddose prepare`` stores it in the cache for every patient (with the angles it used, recorded in the index);
``predict`` and ``qa`` compute it for a new patient with the angles of the model's configuration. A patient
without a target gets an all-zero prior (the beam model aims at the targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mddose.data.patient import Patient
from mddose.data.phantom_dose import compute_dose

#: OpenKBP's plan template: nine equispaced coplanar fields (the OpenKBP paper; ababier/open-kbp issue #36)
OPENKBP_BEAM_ANGLES: tuple[float, ...] = tuple(40.0 * k for k in range(9))


def check_angles(angles: Sequence[float]) -> tuple[float, ...]:
    """Gantry angles in degrees as a tuple of floats in [0, 360); at least one, no repeats."""
    values = tuple(float(a) for a in angles)
    if not values or any(not 0.0 <= a < 360.0 for a in values) or len(set(values)) < len(values):
        raise ValueError(f"beam angles are distinct gantry angles in [0, 360) degrees, at least one; got {values}")
    return values


def beam_prior(patient: Patient, angles: Sequence[float] = OPENKBP_BEAM_ANGLES) -> np.ndarray:
    """The beam model's dose (Gy, float32, the patient's grid, 0 outside the possible-dose mask) for ``angles``."""
    return compute_dose(patient, angles=check_angles(angles))
