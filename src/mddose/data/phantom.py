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

Anatomy
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mddose.data.openkbp import write_patient
from mddose.data.patient import Patient, RoiConfig
from mddose.data.phantom_dose import compute_dose
from mddose.errors import MddoseError

log = logging.getLogger(__name__)

SPACING_128: tuple[float, float, float] = (3.906, 3.906, 2.5)
GRIDS: tuple[int, ...] = (64, 128)
SLAB_MARGIN_MM = 20.0  # possible-dose mask: body within the targets' slices ± this margin

# Body outline knots along s (mm below the top of the body): semi-axes and centre (axis 0, + posterior).
_S = np.array([0.0, 60, 80, 130, 150, 200, 215, 245, 500])
_AP_SEMI = np.array([85.0, 95, 92, 88, 66, 60, 62, 72, 74])
_LR_SEMI = np.array([70.0, 75, 70, 66, 56, 56, 72, 160, 165])
_AP_CENTRE = np.array([5.0, 5, 0, -5, 8, 10, 10, 14, 14])
_CORD_OFFSET = (np.array([60.0, 130, 150, 500]), np.array([15.0, 22, 28, 30]))  # cord behind body centre


def grid_spacing(grid: int) -> tuple[float, float, float]:
    """Voxel size in mm of a ``grid``³ phantom: OpenKBP's at 128, the same physical field at 64."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, not {grid}")
    factor = 128 / grid
    return (SPACING_128[0] * factor, SPACING_128[1] * factor, SPACING_128[2] * factor)


@dataclass
class _Frame:
    """Voxel-centre coordinates in mm: ``ap`` (X,), ``lr`` (Y,) from the grid centre, ``s`` (Z,) below the
    top of the body, plus the body's per-slice outline (centre and semi-axes, each (Z,))."""

    ap: np.ndarray
    lr: np.ndarray
    s: np.ndarray
    body_ap: np.ndarray
    body_lr: np.ndarray
    semi_ap: np.ndarray
    semi_lr: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.ap.size, self.lr.size, self.s.size)

    def ramp(self, knots: list[float], values: list[float]) -> np.ndarray:
        """A per-slice quantity, piecewise linear in ``s`` (constant beyond the end knots)."""
        return np.interp(self.s, knots, values)

    def tube(self, c_ap, c_lr, a, b, active=None) -> np.ndarray:
        """Bool (X, Y, Z) mask of per-slice ellipses: centre (c_ap, c_lr), semi-axes (a, b), on ``active``
        slices (default: where both semi-axes are positive). Arguments are scalars or (Z,) arrays."""
        z = self.s.size
        c_ap, c_lr, a, b = (np.broadcast_to(np.asarray(v, dtype=np.float64), (z,)) for v in (c_ap, c_lr, a, b))
        on = (a > 0) & (b > 0) if active is None else np.asarray(active) & (a > 0) & (b > 0)
        out = np.zeros(self.shape, dtype=bool)
        ks = np.flatnonzero(on)
        if ks.size == 0:
            return out
        k0, k1 = ks[0], ks[-1] + 1
        i0, i1 = np.searchsorted(self.ap, [np.min((c_ap - a)[ks]), np.max((c_ap + a)[ks])])
        j0, j1 = np.searchsorted(self.lr, [np.min((c_lr - b)[ks]), np.max((c_lr + b)[ks])])
        sl = slice(k0, k1)
        safe_a, safe_b = np.where(on, a, 1.0)[sl], np.where(on, b, 1.0)[sl]
        u = (self.ap[i0:i1, None, None] - c_ap[sl]) / safe_a  # (x, 1, z)
        v = (self.lr[None, j0:j1, None] - c_lr[sl]) / safe_b  # (1, y, z)
        out[i0:i1, j0:j1, sl] = (u * u + v * v <= 1.0) & on[sl]
        return out

    def ellipsoid(self, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
        """Bool (X, Y, Z) ellipsoid; ``centre`` and ``semi`` in mm as (ap, lr, s)."""
        t = 1.0 - ((self.s - centre[2]) / semi[2]) ** 2
        scale = np.sqrt(np.clip(t, 0.0, None))
        return self.tube(centre[0], centre[1], semi[0] * scale, semi[1] * scale, active=t > 0)

    def body(self, inset_mm: float = 0.0) -> np.ndarray:
        """The body outline, shrunk by ``inset_mm`` (an analytic approximation of an erosion)."""
        return self.tube(self.body_ap, self.body_lr, self.semi_ap - inset_mm, self.semi_lr - inset_mm,
                         active=self.s >= 0)


def _frame(rng: np.random.Generator, grid: int, spacing: tuple[float, float, float]) -> _Frame:
    """The grid's coordinates and a randomised body outline (size, neck length, position)."""
    n = grid
    ap = (np.arange(n) - (n - 1) / 2) * spacing[0]
    lr = (np.arange(n) - (n - 1) / 2) * spacing[1]
    top = rng.uniform(35.0, 65.0)  # mm from the first slice to the top of the (cropped) head
    s = np.arange(n) * spacing[2] + spacing[2] / 2 - top
    neck = rng.uniform(0.9, 1.1)  # stretches the anatomy below the skull base
    knots = np.where(_S > 80, 80 + (_S - 80) * neck, _S)
    f_ap, f_lr = rng.uniform(0.9, 1.1, size=2)
    return _Frame(
        ap=ap, lr=lr, s=s,
        body_ap=np.interp(s, knots, _AP_CENTRE) + rng.uniform(-8.0, 8.0),
        body_lr=np.full(n, rng.uniform(-5.0, 5.0)),
        semi_ap=np.interp(s, knots, _AP_SEMI) * f_ap,
        semi_lr=np.interp(s, knots, _LR_SEMI) * f_lr,
    )


@dataclass
class _Anatomy:
    """A drawn patient before naming: CT (HU), body mask and structures under generic keys."""

    ct: np.ndarray
    body: np.ndarray
    structures: dict[str, np.ndarray]  # generic keys: OAR names and "high" / "mid" / "low" target levels


def _anatomy(rng: np.random.Generator, f: _Frame, levels: tuple[str, ...]) -> _Anatomy:
    """Draw one patient's anatomy with the target ``levels`` (generic keys, see :func:`_targets`)."""
    u = rng.uniform
    body = f.body()
    mid = f.body_lr
    cord_ap = f.body_ap + np.interp(f.s, *_CORD_OFFSET) + u(-3, 3)
    r_cord = u(4.5, 6.0)
    s_base = u(65.0, 75.0)  # skull base: brainstem above, spinal cord below
    below = f.s >= s_base

    # Bones, canal, vertebrae.
    cord = f.tube(cord_ap, mid, r_cord, r_cord, active=below)
    canal = f.tube(cord_ap, mid, r_cord + 3, r_cord + 3, active=below)
    arch = f.tube(cord_ap + 2, mid, r_cord + 8, r_cord + 9, active=below) & ~canal
    vb_ap = cord_ap - (r_cord + 3 + 11)
    vb_semi = (u(8.0, 10.0), u(10.0, 12.0))
    vertebra = f.tube(vb_ap, mid, *vb_semi, active=below)
    vertebra_core = f.tube(vb_ap, mid, vb_semi[0] - 2.5, vb_semi[1] - 2.5, active=below)
    disc = (np.mod(f.s - s_base, 18.0) > 14.0)[None, None, :] & vertebra
    skull_slices = f.s < s_base + 5
    skull = body & ~f.body(inset_mm=9.0) & f.body(inset_mm=3.0) & skull_slices[None, None, :]
    brain = f.body(inset_mm=9.0) & (f.s < s_base - 5)[None, None, :]
    petrous = np.zeros_like(body)
    for side in (-1, 1):
        petrous |= f.ellipsoid((float(np.interp(s_base, f.s, cord_ap)) - 8, mid[0] + side * 32, s_base - 8),
                               (9, 15, 7))

    # Airway: pharynx in front of the vertebrae, moving forward into larynx and trachea.
    pharynx_ap = vb_ap - vb_semi[0] - u(9.0, 13.0)
    front_ap = f.body_ap - f.semi_ap + u(20.0, 26.0)
    s_lx = u(150.0, 165.0)  # top of the larynx
    w = np.clip((f.s - (s_lx - 25)) / 25, 0, 1)
    air_ap = (1 - w) * pharynx_ap + w * front_ap
    air_semi = (f.ramp([s_base, s_lx], [u(5, 8), u(5, 7)]), f.ramp([s_base, s_lx], [u(9, 13), u(6, 8)]))
    airway = f.tube(air_ap, mid, *air_semi, active=f.s >= s_base - 15)
    larynx = f.tube(air_ap, mid, u(10, 12), u(12, 15), active=(f.s >= s_lx) & (f.s <= s_lx + u(30, 45)))
    eso_ap = vb_ap - vb_semi[0] - u(5.0, 8.0)
    esophagus = f.tube(eso_ap, mid, u(4, 6), u(6, 9), active=f.s >= s_lx + u(30, 45)) & ~larynx

    # Mandible: an arch in front of the pharynx with rami running up towards the skull base.
    s_m = u(95.0, 110.0)  # top of the mandible body
    arch_c = pharynx_ap - u(20.0, 30.0)
    arch_semi = (u(42.0, 55.0), u(38.0, 48.0))
    arch_slices = (f.s >= s_m) & (f.s <= s_m + u(30.0, 40.0))
    arch_ring = f.tube(arch_c, mid, *arch_semi, active=arch_slices)
    arch_ring &= ~f.tube(arch_c, mid, arch_semi[0] - 12, arch_semi[1] - 12, active=arch_slices)
    arch_ring &= (f.ap[:, None, None] <= arch_c[None, None, :])  # anterior half only
    rami = np.zeros_like(body)
    ramus_slices = (f.s >= s_base - 5) & (f.s < s_m + 5)
    for side in (-1, 1):
        rami |= f.tube(arch_c + 4, mid + side * (arch_semi[1] - 5), 12, 5, active=ramus_slices)
    mandible = (arch_ring | rami) & body

    # Parotids: lateral to the rami, behind them.
    parotids = {}
    for side, name in ((-1, "RightParotid"), (1, "LeftParotid")):
        s_p = s_base + u(10, 25)
        c = (float(np.interp(s_p, f.s, arch_c)) + 20 + u(-3, 3),
             float(np.interp(s_p, f.s, mid + side * (f.semi_lr - u(17, 20)))), s_p)
        parotids[name] = f.ellipsoid(c, (u(18, 24), u(11, 14), u(20, 26))) & ~mandible & body

    brainstem = f.tube(cord_ap + f.ramp([s_base - 45, s_base], [-4, 0]), mid,
                       f.ramp([s_base - 45, s_base], [u(12, 15), r_cord + 2]),
                       f.ramp([s_base - 45, s_base], [u(14, 17), r_cord + 2]),
                       active=(f.s >= s_base - u(42, 50)) & (f.s < s_base))
    structures = {"Brainstem": brainstem & body, "SpinalCord": cord & body, **parotids,
                  "Esophagus": esophagus & body, "Larynx": larynx & body, "Mandible": mandible}
    prv = f.tube(cord_ap, mid, r_cord + 5, r_cord + 5, active=f.s >= s_base - 10)  # cord + 5 mm
    structures.update(_targets(rng, f, levels, prv, air_ap, cord_ap))

    # CT in HU, innermost last.
    ct = np.full(f.shape, 40.0, dtype=np.float32)
    ct[body & ~f.body(inset_mm=u(4.0, 10.0))] = -90.0  # subcutaneous fat
    ct[brain] = 35.0
    for name in parotids:
        ct[structures[name]] = -20.0
    ct[larynx] = 150.0
    ct[vertebra] = 800.0
    ct[vertebra_core] = 250.0
    ct[disc] = 80.0
    ct[arch] = 700.0
    ct[skull | petrous] = 1000.0
    ct[mandible] = 1150.0
    ct[airway] = -990.0
    ct += rng.normal(0.0, 12.0, size=ct.shape).astype(np.float32)
    ct = np.clip(np.round(ct), -999.0, None)  # the body is exactly where HU > -1000
    ct[~body] = -1000.0
    return _Anatomy(ct=ct, body=body, structures=structures)


def _targets(
    rng: np.random.Generator, f: _Frame, levels: tuple[str, ...], prv: np.ndarray, air_ap: np.ndarray,
    cord_ap: np.ndarray,
) -> dict[str, np.ndarray]:
    """Exclusive target masks under generic keys: "high" (the primary, always), "mid" (a margin around it and
    ipsilateral nodes) and "low" (elective nodal chains), each only if in ``levels``."""
    u = rng.uniform
    side = rng.choice([-1, 0, 1], p=[0.4, 0.2, 0.4])
    node_side = side if side != 0 else rng.choice([-1, 1])
    s_c = u(95.0, 140.0)
    k_c = int(np.argmin(np.abs(f.s - s_c)))
    primary_c = (air_ap[k_c] + u(-10, 5), f.body_lr[k_c] + side * u(8, 22), s_c)
    primary_semi = (u(20, 30), u(20, 30), u(25, 42))
    parts = [(primary_c, primary_semi)]
    if rng.random() < 0.7:  # a gross node, ipsilateral level II
        s_n = s_c + u(0, 30)
        k_n = int(np.argmin(np.abs(f.s - s_n)))
        node_c = (cord_ap[k_n] - u(25, 35), f.body_lr[k_n] + node_side * (f.semi_lr[k_n] - u(24, 30)), s_n)
        parts.append((node_c, (u(14, 22), u(12, 18), u(16, 26))))
    allowed = f.body(inset_mm=4.0) & ~prv
    high = np.zeros(f.shape, dtype=bool)
    for c, semi in parts:
        high |= f.ellipsoid(c, semi)
    out = {"high": high & allowed}

    taken = out["high"].copy()
    if "mid" in levels:  # margin around the primary plus ipsilateral level III nodes
        m = u(8.0, 12.0)
        mid = np.zeros_like(high)
        for c, semi in parts:
            mid |= f.ellipsoid(c, (semi[0] + m, semi[1] + m, semi[2] + m))
        s_3 = s_c + u(35, 55)
        k_3 = int(np.argmin(np.abs(f.s - s_3)))
        mid |= f.ellipsoid((cord_ap[k_3] - u(25, 32), f.body_lr[k_3] + node_side * (f.semi_lr[k_3] - u(20, 26)),
                            s_3), (u(12, 16), u(10, 14), u(15, 22)))
        out["mid"] = mid & allowed & ~taken
        taken |= out["mid"]
    if "low" in levels:  # elective nodal chains along the neck, levels II-IV
        s_top, s_bot = s_c - u(25, 40), u(190, 225)
        on = (f.s >= s_top) & (f.s <= s_bot)
        low = np.zeros_like(high)
        sides = (-1, 1) if rng.random() < 0.8 else (node_side,)
        for sd in sides:
            low |= f.tube(cord_ap - u(24, 32), f.body_lr + sd * (f.semi_lr - u(22, 27)), u(17, 22), u(14, 18),
                          active=on)
        out["low"] = low & allowed & ~taken
    return {k: v for k, v in out.items() if v.any() or k == "high"}


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
    f = _frame(rng, grid, spacing)
    by_rx = sorted(rois.targets, key=rois.prescription, reverse=True)
    names = {"high": by_rx[0]}
    if len(by_rx) >= 2:
        names["low"] = by_rx[-1]
    if len(by_rx) >= 3:
        names["mid"] = by_rx[1]
    combos = [c for c in _LEVEL_COMBOS if set(c[0]) <= set(names)]
    p = np.array([c[1] for c in combos])
    levels = combos[int(rng.choice(len(combos), p=p / p.sum()))][0]
    anatomy = _anatomy(rng, f, levels)
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
    out_dir: str | Path, n_patients: int, seed: int, grid: int = 128, progress: bool = True
) -> list[Path]:
    """Write phantoms ``pt_1 … pt_N`` (plain ``.csv``, OpenKBP layout) into ``out_dir``; returns the folders.

    Each folder is written atomically (an existing ``pt_k`` is replaced). Bad arguments raise ValueError;
    an ``out_dir`` that cannot be written raises :class:`MddoseError` naming it.
    """
    grid_spacing(grid)  # validates the grid before anything is written
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, not {n_patients}")
    patient_seed(seed, 0)  # validates the seed
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MddoseError("output path exists and is not a folder", out_dir)
    paths = []
    for k in tqdm(range(n_patients), desc="phantoms", unit="pt", disable=not progress):
        patient = make_phantom(patient_seed(seed, k), grid=grid, patient_id=f"pt_{k + 1}")
        folder = out_dir / patient.patient_id
        try:
            paths.append(write_patient(patient, folder))
        except OSError as e:
            raise MddoseError(f"cannot write phantom ({e.strerror or e})", folder) from None
    log.info("wrote %d phantoms (grid %d, seed %d) to %s", n_patients, grid, seed, out_dir)
    return paths
