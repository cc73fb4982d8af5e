"""The phantoms' anatomy: analytic shapes in a randomised body, drawn from one random generator.

All shapes are elliptic cross-sections whose centre and semi-axes vary smoothly along the cranio-caudal
coordinate ``s`` (mm below the top of the scanned body); :class:`Frame` holds the coordinates and draws them.
:func:`draw_anatomy` draws, in this order, the bones (skull, vertebrae, canal), the airway with larynx and
esophagus, the mandible, the parotids and brainstem, the targets (:func:`_targets`) and the CT. The order is
part of the phantom: a patient is a pure function of its seed, so a change of order is a change of data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Body outline knots along s (mm below the top of the body): semi-axes and centre (axis 0, + posterior).
_S = np.array([0.0, 60, 80, 130, 150, 200, 215, 245, 500])
_AP_SEMI = np.array([85.0, 95, 92, 88, 66, 60, 62, 72, 74])
_LR_SEMI = np.array([70.0, 75, 70, 66, 56, 56, 72, 160, 165])
_AP_CENTRE = np.array([5.0, 5, 0, -5, 8, 10, 10, 14, 14])
_CORD_OFFSET = (np.array([60.0, 130, 150, 500]), np.array([15.0, 22, 28, 30]))  # cord behind body centre


@dataclass
class Frame:
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


def draw_frame(rng: np.random.Generator, grid: int, spacing: tuple[float, float, float]) -> Frame:
    """The grid's coordinates and a randomised body outline (size, neck length, position)."""
    n = grid
    ap = (np.arange(n) - (n - 1) / 2) * spacing[0]
    lr = (np.arange(n) - (n - 1) / 2) * spacing[1]
    top = rng.uniform(35.0, 65.0)  # mm from the first slice to the top of the (cropped) head
    s = np.arange(n) * spacing[2] + spacing[2] / 2 - top
    neck = rng.uniform(0.9, 1.1)  # stretches the anatomy below the skull base
    knots = np.where(_S > 80, 80 + (_S - 80) * neck, _S)
    f_ap, f_lr = rng.uniform(0.9, 1.1, size=2)
    return Frame(
        ap=ap, lr=lr, s=s,
        body_ap=np.interp(s, knots, _AP_CENTRE) + rng.uniform(-8.0, 8.0),
        body_lr=np.full(n, rng.uniform(-5.0, 5.0)),
        semi_ap=np.interp(s, knots, _AP_SEMI) * f_ap,
        semi_lr=np.interp(s, knots, _LR_SEMI) * f_lr,
    )


@dataclass
class Anatomy:
    """A drawn patient before naming: CT (HU), body mask and structures under generic keys."""

    ct: np.ndarray
    body: np.ndarray
    structures: dict[str, np.ndarray]  # generic keys: OAR names and "high" / "mid" / "low" target levels


Parts = dict[str, np.ndarray]


def _bones(u, f: Frame, body: np.ndarray) -> tuple[Parts, dict[str, float | np.ndarray]]:
    """Skull, brain, vertebrae with canal and disc spaces; also the spine's geometry the rest is placed by."""
    mid = f.body_lr
    cord_ap = f.body_ap + np.interp(f.s, *_CORD_OFFSET) + u(-3, 3)
    r_cord = u(4.5, 6.0)
    s_base = u(65.0, 75.0)  # skull base: brainstem above, spinal cord below
    below = f.s >= s_base
    canal = f.tube(cord_ap, mid, r_cord + 3, r_cord + 3, active=below)
    vb_ap = cord_ap - (r_cord + 3 + 11)
    vb_semi = (u(8.0, 10.0), u(10.0, 12.0))
    vertebra = f.tube(vb_ap, mid, *vb_semi, active=below)
    skull_slices = f.s < s_base + 5
    petrous = np.zeros_like(body)
    for side in (-1, 1):
        petrous |= f.ellipsoid((float(np.interp(s_base, f.s, cord_ap)) - 8, mid[0] + side * 32, s_base - 8),
                               (9, 15, 7))
    parts = {
        "cord": f.tube(cord_ap, mid, r_cord, r_cord, active=below),
        "arch": f.tube(cord_ap + 2, mid, r_cord + 8, r_cord + 9, active=below) & ~canal,
        "vertebra": vertebra,
        "vertebra_core": f.tube(vb_ap, mid, vb_semi[0] - 2.5, vb_semi[1] - 2.5, active=below),
        "disc": (np.mod(f.s - s_base, 18.0) > 14.0)[None, None, :] & vertebra,
        "skull": (body & ~f.body(inset_mm=9.0) & f.body(inset_mm=3.0) & skull_slices[None, None, :]) | petrous,
        "brain": f.body(inset_mm=9.0) & (f.s < s_base - 5)[None, None, :],
    }
    return parts, {"cord_ap": cord_ap, "r_cord": r_cord, "s_base": s_base, "vb_ap": vb_ap, "vb_front": vb_semi[0]}


def _airway(u, f: Frame, spine: dict) -> tuple[Parts, dict[str, np.ndarray]]:
    """Pharynx in front of the vertebrae, moving forward into larynx and trachea; the esophagus behind."""
    mid, s_base = f.body_lr, spine["s_base"]
    pharynx_ap = spine["vb_ap"] - spine["vb_front"] - u(9.0, 13.0)
    front_ap = f.body_ap - f.semi_ap + u(20.0, 26.0)
    s_lx = u(150.0, 165.0)  # top of the larynx
    w = np.clip((f.s - (s_lx - 25)) / 25, 0, 1)
    air_ap = (1 - w) * pharynx_ap + w * front_ap
    air_semi = (f.ramp([s_base, s_lx], [u(5, 8), u(5, 7)]), f.ramp([s_base, s_lx], [u(9, 13), u(6, 8)]))
    airway = f.tube(air_ap, mid, *air_semi, active=f.s >= s_base - 15)
    larynx = f.tube(air_ap, mid, u(10, 12), u(12, 15), active=(f.s >= s_lx) & (f.s <= s_lx + u(30, 45)))
    eso_ap = spine["vb_ap"] - spine["vb_front"] - u(5.0, 8.0)
    esophagus = f.tube(eso_ap, mid, u(4, 6), u(6, 9), active=f.s >= s_lx + u(30, 45)) & ~larynx
    return {"airway": airway, "larynx": larynx, "esophagus": esophagus}, {"pharynx_ap": pharynx_ap, "air_ap": air_ap}


def _mandible(u, f: Frame, s_base: float, pharynx_ap: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An arch in front of the pharynx with rami running up towards the skull base; also the arch's centre."""
    mid = f.body_lr
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
    return (arch_ring | rami) & body, arch_c


def _parotids(u, f: Frame, s_base: float, arch_c: np.ndarray, mandible: np.ndarray, body: np.ndarray) -> Parts:
    """Both parotids: lateral to the rami, behind them."""
    parotids = {}
    for side, name in ((-1, "RightParotid"), (1, "LeftParotid")):
        s_p = s_base + u(10, 25)
        c = (float(np.interp(s_p, f.s, arch_c)) + 20 + u(-3, 3),
             float(np.interp(s_p, f.s, f.body_lr + side * (f.semi_lr - u(17, 20)))), s_p)
        parotids[name] = f.ellipsoid(c, (u(18, 24), u(11, 14), u(20, 26))) & ~mandible & body
    return parotids


def _brainstem(u, f: Frame, spine: dict) -> np.ndarray:
    """The brainstem: above the skull base, widening from the cord."""
    cord_ap, s_base, r_cord = spine["cord_ap"], spine["s_base"], spine["r_cord"]
    return f.tube(cord_ap + f.ramp([s_base - 45, s_base], [-4, 0]), f.body_lr,
                  f.ramp([s_base - 45, s_base], [u(12, 15), r_cord + 2]),
                  f.ramp([s_base - 45, s_base], [u(14, 17), r_cord + 2]),
                  active=(f.s >= s_base - u(42, 50)) & (f.s < s_base))


def _ct(rng: np.random.Generator, f: Frame, body: np.ndarray, parts: Parts) -> np.ndarray:
    """The CT in integer HU, innermost tissue last, with noise; exactly −1000 outside the body."""
    ct = np.full(f.shape, 40.0, dtype=np.float32)
    ct[body & ~f.body(inset_mm=rng.uniform(4.0, 10.0))] = -90.0  # subcutaneous fat
    for name, hu in (("brain", 35.0), ("RightParotid", -20.0), ("LeftParotid", -20.0), ("larynx", 150.0),
                     ("vertebra", 800.0), ("vertebra_core", 250.0), ("disc", 80.0), ("arch", 700.0),
                     ("skull", 1000.0), ("mandible", 1150.0), ("airway", -990.0)):
        ct[parts[name]] = hu
    ct += rng.normal(0.0, 12.0, size=ct.shape).astype(np.float32)
    ct = np.clip(np.round(ct), -999.0, None)  # the body is exactly where HU > -1000
    ct[~body] = -1000.0
    return ct


def draw_anatomy(rng: np.random.Generator, f: Frame, levels: tuple[str, ...]) -> Anatomy:
    """Draw one patient's anatomy with the target ``levels`` (generic keys, see :func:`_targets`)."""
    u, body = rng.uniform, f.body()
    bones, spine = _bones(u, f, body)
    air, ap = _airway(u, f, spine)
    mandible, arch_c = _mandible(u, f, spine["s_base"], ap["pharynx_ap"], body)
    parotids = _parotids(u, f, spine["s_base"], arch_c, mandible, body)
    structures = {"Brainstem": _brainstem(u, f, spine) & body, "SpinalCord": bones["cord"] & body, **parotids,
                  "Esophagus": air["esophagus"] & body, "Larynx": air["larynx"] & body, "Mandible": mandible}
    cord_ap, s_base, r_cord = spine["cord_ap"], spine["s_base"], spine["r_cord"]
    prv = f.tube(cord_ap, f.body_lr, r_cord + 5, r_cord + 5, active=f.s >= s_base - 10)  # cord + 5 mm
    structures.update(_targets(rng, f, levels, prv, ap["air_ap"], cord_ap))
    ct = _ct(rng, f, body, {**bones, **air, **parotids, "mandible": mandible})
    return Anatomy(ct=ct, body=body, structures=structures)


def _targets(
    rng: np.random.Generator, f: Frame, levels: tuple[str, ...], prv: np.ndarray, air_ap: np.ndarray,
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
