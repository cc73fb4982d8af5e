"""OpenKBP reader/writer: exact round trips, the CT offset, and one clear error per bad input."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mddose.data.openkbp import (
    CT_OFFSET,
    list_patients,
    read_dose_csv,
    read_patient,
    read_sparse_csv,
    write_dose_csv,
    write_patient,
    write_sparse_csv,
)
from mddose.data.patient import RoiConfig, prescription_from_name
from mddose.errors import MddoseError
from tests.conftest import toy_patient


def assert_same_patient(a, b) -> None:
    assert a.patient_id == b.patient_id
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.possible_dose_mask, b.possible_dose_mask)
    assert a.spacing == b.spacing
    assert sorted(a.structures) == sorted(b.structures)
    for name in a.structures:
        np.testing.assert_array_equal(a.structures[name], b.structures[name])
    if a.dose is None:
        assert b.dose is None
    else:
        np.testing.assert_array_equal(a.dose, b.dose)


@pytest.mark.parametrize("compression", ["", "gz", "xz"])
def test_round_trip_toy_patient(tmp_path: Path, compression: str) -> None:
    p = toy_patient()
    write_patient(p, tmp_path / "pt_1", compression=compression)
    assert_same_patient(p, read_patient(tmp_path / "pt_1"))


def test_round_trip_real_patients_exact(openkbp_train: Path, openkbp_validation: Path, tmp_path: Path) -> None:
    for split in (openkbp_train, openkbp_validation):
        for folder in list_patients(split)[:2]:
            original = read_patient(folder)
            write_patient(original, tmp_path / folder.name)
            again = read_patient(tmp_path / folder.name)
            assert_same_patient(original, again)
            # and the CSV text itself carries the same voxel values as the challenge's file
            raw = read_sparse_csv(folder / "dose.csv.xz")
            np.testing.assert_array_equal(raw.astype(np.float32), again.dose)


def test_ct_offset_real_patient(openkbp_train: Path) -> None:
    p = read_patient(list_patients(openkbp_train)[0])
    inside = p.ct[p.possible_dose_mask]
    assert p.ct.min() == -CT_OFFSET  # air
    # soft tissue (muscle ~ +40 HU) dominates inside the body, fat sits near -100 HU
    hist, edges = np.histogram(inside, bins=np.arange(-200, 200, 10))
    assert 0 <= edges[np.argmax(hist)] <= 80


def test_rois_and_prescriptions() -> None:
    assert prescription_from_name("PTV70") == 70.0
    assert prescription_from_name("PTV_59.4") == 59.4
    assert prescription_from_name("Brainstem") is None
    assert toy_patient().prescriptions == {"PTV56": 56.0, "PTV70": 70.0}
    with pytest.raises(ValueError, match="prescription"):
        RoiConfig(targets=("Boost",))


def test_missing_roi_is_not_contoured(tmp_path: Path) -> None:
    p = toy_patient()
    write_patient(p, tmp_path / "pt_1")
    (tmp_path / "pt_1" / "LeftParotid.csv").unlink()
    assert "LeftParotid" not in read_patient(tmp_path / "pt_1").structures


def test_reading_without_dose_or_ct(tmp_path: Path) -> None:
    p = toy_patient()
    write_patient(p, tmp_path / "pt_1")
    light = read_patient(tmp_path / "pt_1", read_ct=False, read_dose=False)
    assert light.dose is None and (light.ct == -1000).all()
    np.testing.assert_array_equal(light.possible_dose_mask, p.possible_dose_mask)
    assert set(light.structures) == set(read_patient(tmp_path / "pt_1").structures)


def test_submission_format(tmp_path: Path) -> None:
    p = toy_patient()
    pred = p.dose + 1.0  # non-zero everywhere
    write_dose_csv(tmp_path / "pt_1.csv", pred, p.possible_dose_mask)
    back = read_dose_csv(tmp_path / "pt_1.csv")
    np.testing.assert_array_equal(back, np.where(p.possible_dose_mask, pred, 0))
    assert (tmp_path / "pt_1.csv").read_text().startswith(",data\n")


def test_list_patients_natural_order(tmp_path: Path) -> None:
    for name in ("pt_10", "pt_2", "pt_1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ct.csv").write_text(",data\n")
    assert [p.name for p in list_patients(tmp_path)] == ["pt_1", "pt_2", "pt_10"]


def _bad(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture
def patient_dir(tmp_path: Path) -> Path:
    write_patient(toy_patient(with_dose=False), tmp_path / "pt_1")
    return tmp_path / "pt_1"


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("ct.csv", ",data\n5,1.0\n2097152,3.0\n", "outside the 128×128×128 grid"),
        ("ct.csv", ",data\n5,1.0\n6,abc\n", "'abc' is not a number"),
        ("ct.csv", ",data\n5,1.0\nx7,2.0\n", "is not an integer"),
        ("ct.csv", "index,value\n5,1.0\n", "expected header ',data'"),
        ("possible_dose_mask.csv", ",data\n-4,\n", "index -4 is outside"),
        ("ct.csv", ",data\n5\n", "missing value"),
    ],
)
def test_bad_csv_one_clear_error(patient_dir: Path, filename: str, content: str, message: str) -> None:
    path = _bad(patient_dir, filename, content)
    with pytest.raises(MddoseError, match=message) as err:
        read_patient(patient_dir)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_compressed_file(patient_dir: Path) -> None:
    (patient_dir / "ct.csv").unlink()
    _bad(patient_dir, "ct.csv.xz", b"\xfd7zXZ\x00 truncated")
    with pytest.raises(MddoseError, match="ct.csv.xz: cannot read file"):
        read_patient(patient_dir)
    (patient_dir / "ct.csv.xz").unlink()
    _bad(patient_dir, "ct.csv.gz", gzip.compress(b",data\n1,2\n")[:-12])
    with pytest.raises(MddoseError, match="ct.csv.gz"):
        read_patient(patient_dir)


@pytest.mark.parametrize("name", ["ct", "possible_dose_mask", "voxel_dimensions"])
def test_missing_required_file(patient_dir: Path, name: str) -> None:
    (patient_dir / f"{name}.csv").unlink()
    with pytest.raises(MddoseError, match=f"missing {name}.csv"):
        read_patient(patient_dir)


def test_compressed_write_is_readable_by_stdlib(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4))
    arr[1, 2, 3] = 7.5
    write_sparse_csv(tmp_path / "d.csv.xz", arr)
    assert lzma.decompress((tmp_path / "d.csv.xz").read_bytes()).decode() == ",data\n27,7.5\n"


def test_cli_bad_input_one_line_nonzero(patient_dir: Path, tmp_path: Path) -> None:
    _bad(patient_dir, "ct.csv", ",data\n1,1.0\n999999999,2\n")
    split = tmp_path / "split"  # the cache beside the data folder: never inside an input
    split.mkdir()
    shutil.move(patient_dir, split / patient_dir.name)
    out = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "mddose.cli", "prepare", str(split), str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "ct.csv" in lines[0]
    assert not any(p.name.endswith(".npz.xz") for p in out.glob("*")) if out.exists() else True
    shutil.rmtree(out, ignore_errors=True)


def test_other_grids_carry_their_shape(tmp_path: Path) -> None:
    from mddose.data.patient import Patient

    p = toy_patient()
    small = Patient("pt_9", p.ct[::2, ::2, ::2], p.possible_dose_mask[::2, ::2, ::2], (7.812, 7.812, 5.0),
                    {k: v[::2, ::2, ::2] for k, v in p.structures.items()}, p.dose[::2, ::2, ::2])
    write_patient(small, tmp_path / "pt_9")
    assert (tmp_path / "pt_9" / "grid_shape.csv").read_text() == "64\n64\n64\n"
    assert_same_patient(small, read_patient(tmp_path / "pt_9"))
    write_patient(p, tmp_path / "pt_1")
    assert not (tmp_path / "pt_1" / "grid_shape.csv").exists()  # OpenKBP folders stay as the challenge has them
