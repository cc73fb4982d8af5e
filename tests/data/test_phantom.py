"""Synthetic head-and-neck phantoms: determinism, anatomy, dose physics, files and the ``phantom`` command."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from mddose.cli import app
from mddose.data.openkbp import read_patient
from mddose.data.patient import Patient, RoiConfig
from mddose.data.phantom import grid_spacing, make_phantom, patient_seed, write_phantoms
from mddose.data.phantom_dose import DoseModel, beam_angles, compute_dose
from mddose.errors import MddoseError

GRID = 64
SHAPE = (GRID, GRID, GRID)


@pytest.fixture(scope="module")
def phantoms() -> list[Patient]:
    """Twelve small phantoms (about a second in all), shared by the tests below."""
    return [make_phantom(seed, grid=GRID, patient_id=f"pt_{seed}") for seed in range(12)]


def _highest(p: Patient) -> tuple[str, float]:
    name = max(p.prescriptions, key=p.prescriptions.get)
    return name, p.prescriptions[name]


def _single_level(phantoms: list[Patient]) -> Patient:
    return next(p for p in phantoms if len(p.prescriptions) == 1)


def test_grid_spacing_keeps_the_openkbp_field() -> None:
    assert grid_spacing(128) == (3.906, 3.906, 2.5)
    assert grid_spacing(64) == (7.812, 7.812, 5.0)
    with pytest.raises(ValueError, match="grid"):
        grid_spacing(32)


def test_same_seed_same_phantom_other_seed_other_phantom(phantoms: list[Patient]) -> None:
    a, b = make_phantom(3, grid=GRID, patient_id="pt_3"), phantoms[3]
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.dose, b.dose)
    assert a.structures.keys() == b.structures.keys()
    assert all(np.array_equal(a.structures[k], b.structures[k]) for k in a.structures)
    assert not np.array_equal(phantoms[4].ct, a.ct)
    assert not np.array_equal(phantoms[4].dose, a.dose)


@pytest.mark.parametrize("grid", [64, 128])
def test_shapes_spacing_and_masks_inside_the_body(grid: int, phantoms: list[Patient]) -> None:
    p = make_phantom(5, grid=grid) if grid == 128 else phantoms[5]
    assert p.shape == (grid,) * 3 and p.spacing == grid_spacing(grid)
    assert p.ct.dtype == np.float32 and p.dose is not None and p.dose.dtype == np.float32
    body = p.ct > -1000
    assert p.possible_dose_mask.any() and not (p.possible_dose_mask & ~body).any()
    for name, mask in p.structures.items():
        assert name in p.rois.all
        assert mask.any() and not (mask & ~body).any(), name
    assert -1000 <= p.ct.min() and 700 < p.ct.max() < 1500  # air outside, bone inside
    inside = p.ct[p.possible_dose_mask]
    assert -150 < np.median(inside) < 80  # mostly soft tissue and fat
    assert (inside < -900).any()  # an airway


def test_anatomy_follows_the_openkbp_orientation(phantoms: list[Patient]) -> None:
    """Axis 0 anterior→posterior, axis 1 patient right→left, axis 2 superior→inferior, as in train-pats."""
    for p in phantoms:
        centre = {k: np.argwhere(m).mean(axis=0) for k, m in p.structures.items()}
        assert centre["RightParotid"][1] < centre["SpinalCord"][1] < centre["LeftParotid"][1]
        assert centre["Brainstem"][2] < centre["SpinalCord"][2]
        if "Mandible" in centre:
            assert centre["Mandible"][0] < centre["SpinalCord"][0]
        if "Larynx" in centre:
            assert centre["Larynx"][0] < centre["SpinalCord"][0]


def test_target_levels_and_contours_vary_like_real_data(phantoms: list[Patient]) -> None:
    assert all("PTV70" in p.prescriptions for p in phantoms)  # the highest level is always there
    assert {len(p.prescriptions) for p in phantoms} == {1, 2, 3}
    assert any(set(RoiConfig().oars) - set(p.structures) for p in phantoms)  # some OARs not contoured
    assert all("SpinalCord" in p.structures for p in phantoms)
    for p in phantoms:  # PTVs are exclusive, as in OpenKBP
        names = list(p.prescriptions)
        total = sum(p.structures[n].astype(int) for n in names)
        assert total.max() == 1


def test_dose_is_scaled_to_the_prescription_and_zero_outside_the_mask(phantoms: list[Patient]) -> None:
    for p in phantoms:
        name, rx = _highest(p)
        assert np.percentile(p.dose[p.structures[name]], 5) == pytest.approx(rx, rel=0.02)
        for level, value in p.prescriptions.items():  # lower levels near theirs too
            assert np.percentile(p.dose[p.structures[level]], 5) == pytest.approx(value, rel=0.05)
        assert p.dose.min() >= 0 and not p.dose[~p.possible_dose_mask].any()
        assert p.dose.max() < 1.35 * rx  # hot spots stay plausible


def test_organs_at_risk_are_spared(phantoms: list[Patient]) -> None:
    """Lowering fluence where beams cross an OAR lowers its dose: compare against the same plan without."""
    for p in phantoms[:4]:
        _, rx = _highest(p)
        cord = p.structures["SpinalCord"] & p.possible_dose_mask
        free = compute_dose(p, DoseModel(sparing=()))
        assert p.dose[cord].max() < 0.7 * rx and p.dose[cord].mean() < 0.5 * rx
        assert p.dose[cord].mean() < 0.75 * free[cord].mean()
        assert p.dose[cord].max() < 0.8 * free[cord].max()


def _beams_covering(target: np.ndarray, angles: tuple[float, ...]) -> np.ndarray:
    """How many beams' apertures (the target's projection across each beam) cover each pixel of a slice."""
    rows, cols = np.indices(target.shape).astype(float)
    count = np.zeros(target.shape, dtype=int)
    for angle in np.deg2rad(angles):
        across = rows * np.sin(angle) + cols * np.cos(angle)  # coordinate across a beam at this gantry angle
        bins = np.round(across).astype(int)
        count += np.isin(bins, np.unique(bins[target]))
    return count


def test_dose_shows_beam_streaks(phantoms: list[Patient]) -> None:
    """Outside the target, dose on beam paths is well above dose between beams, and a ring around the target
    varies far more with angle than the same plan delivered by a 36-beam arc."""
    p = _single_level(phantoms)
    name, _ = _highest(p)
    target = p.structures[name]
    far = ndimage.distance_transform_edt(~target, sampling=p.spacing) > 15  # mm from the target
    on, off = [], []
    for z in np.flatnonzero(target.any(axis=(0, 1))):
        covered = _beams_covering(target[:, :, z], beam_angles(1))
        region = p.possible_dose_mask[:, :, z] & far[:, :, z]
        on.append(p.dose[:, :, z][region & (covered > 0)])
        off.append(p.dose[:, :, z][region & (covered == 0)])
    on_path, between = np.concatenate(on), np.concatenate(off)
    assert between.size > 50 and on_path.mean() > 1.5 * between.mean()

    arc = compute_dose(p, angles=tuple(range(0, 360, 10)))
    z = int(np.argmax(target.sum(axis=(0, 1))))
    points = np.argwhere(target[:, :, z])
    centre = points.mean(axis=0)
    radius = np.sqrt(((points - centre) ** 2).sum(axis=1)).max() + 25.0 / p.spacing[0]
    phi = np.deg2rad(np.arange(0, 360, 2))
    ring = np.stack([centre[0] - radius * np.cos(phi), centre[1] + radius * np.sin(phi)])
    inside = ndimage.map_coordinates(p.possible_dose_mask[:, :, z].astype(float), ring, order=1) > 0.99
    inside &= np.roll(inside, 1)

    def roughness(dose: np.ndarray) -> float:
        values = ndimage.map_coordinates(dose[:, :, z], ring, order=1)
        return float(np.abs(values - np.roll(values, 1))[inside].mean() / values[inside].mean())

    assert inside.sum() > 20 and roughness(p.dose) > 1.3 * roughness(arc)


def test_custom_roi_config_names_the_targets() -> None:
    rois = RoiConfig(oars=("SpinalCord", "Heart"), targets=("PTV60",))
    p = make_phantom(1, grid=GRID, rois=rois)
    assert set(p.structures) == {"SpinalCord", "PTV60"} and p.rois == rois
    assert np.percentile(p.dose[p.structures["PTV60"]], 5) == pytest.approx(60.0, rel=0.02)


def test_write_phantoms_is_byte_identical_and_reads_back(tmp_path) -> None:
    first = write_phantoms(tmp_path / "a", n_patients=2, seed=7, grid=GRID, progress=False)
    again = write_phantoms(tmp_path / "b", n_patients=1, seed=7, grid=GRID, progress=False)
    other = write_phantoms(tmp_path / "c", n_patients=1, seed=8, grid=GRID, progress=False)
    assert [f.name for f in first] == ["pt_1", "pt_2"]
    files = sorted(f.name for f in first[0].iterdir())
    assert "ct.csv" in files and "dose.csv" in files and "voxel_dimensions.csv" in files
    assert files == sorted(f.name for f in again[0].iterdir())  # pt_1 does not depend on the count
    assert all((first[0] / f).read_bytes() == (again[0] / f).read_bytes() for f in files)
    assert (first[0] / "dose.csv").read_bytes() != (other[0] / "dose.csv").read_bytes()

    back = read_patient(first[1], shape=SHAPE)
    made = make_phantom(patient_seed(7, 1), grid=GRID, patient_id="pt_2")
    assert back.spacing == made.spacing
    assert np.array_equal(back.ct, made.ct) and np.array_equal(back.dose, made.dose)
    assert np.array_equal(back.possible_dose_mask, made.possible_dose_mask)
    assert back.structures.keys() == made.structures.keys()


def test_write_phantoms_rejects_bad_arguments(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MddoseError, match="not a folder"):
        write_phantoms(tmp_path / "file", n_patients=1, seed=0, grid=GRID, progress=False)
    with pytest.raises(ValueError):
        write_phantoms(tmp_path / "out", n_patients=1, seed=-1, grid=GRID, progress=False)
    with pytest.raises(ValueError):
        write_phantoms(tmp_path / "out", n_patients=1, seed=0, grid=32, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_phantom_writes_readable_patients(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "ph"
    result = runner.invoke(app, ["phantom", str(out), "--patients", "2", "--seed", "3", "--grid", "64"])
    assert result.exit_code == 0, result.output
    assert "wrote 2" in result.output
    patients = [read_patient(out / f"pt_{k}", shape=SHAPE) for k in (1, 2)]
    assert all(p.dose is not None and p.dose.max() > 50 for p in patients)

    bad = runner.invoke(app, ["phantom", str(tmp_path / "bad"), "--grid", "32"])
    assert bad.exit_code != 0 and "grid" in bad.output
    negative = runner.invoke(app, ["phantom", str(tmp_path / "bad"), "--seed", "-1", "--grid", "64"])
    assert negative.exit_code != 0
    assert not (tmp_path / "bad").exists()
