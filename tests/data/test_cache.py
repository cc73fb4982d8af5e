"""Compact cache: round trip at the documented precision, resumable prepare, no broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mddose.data.cache import DOSE_STEP_GY, Cache, CachedPatient, prepare_cache
from mddose.data.openkbp import list_patients, read_patient, write_patient
from mddose.errors import MddoseError
from tests.conftest import toy_patient


@pytest.fixture
def split(tmp_path: Path) -> Path:
    for k in (1, 2, 3):
        write_patient(toy_patient(f"pt_{k}", seed=k), tmp_path / "data" / f"pt_{k}")
    return tmp_path / "data"


def test_round_trip_precision(split: Path, tmp_path: Path) -> None:
    summary = prepare_cache(split, tmp_path / "cache", progress=False)
    assert summary["n_patients"] == 3 and summary["added"] == 3
    cache = Cache(tmp_path / "cache")
    for folder in list_patients(split):
        original = read_patient(folder)
        back = cache.patient(folder.name)
        inside = original.possible_dose_mask
        np.testing.assert_array_equal(back.possible_dose_mask, inside)
        np.testing.assert_array_equal(back.ct[inside], original.ct[inside])  # exact HU inside the mask
        assert (back.ct[~inside] == -1000).all()
        for name, mask in original.structures.items():
            np.testing.assert_array_equal(back.structures[name], mask)
        err = np.abs(back.dose - original.dose)
        assert err.max() <= DOSE_STEP_GY / 2 + 1e-4
        score = err.sum() / inside.sum()  # OpenKBP dose score of the cached reference against the original
        assert score < 0.05
    # the slice index lists exactly the axial slices that meet the possible-dose mask
    p1 = read_patient(split / "pt_1")
    assert cache.entries["pt_1"]["slices"] == np.flatnonzero(p1.possible_dose_mask.any(axis=(0, 1))).tolist()
    for pid in ("pt_1", "pt_2", "pt_3"):  # the cached patient finds the same slices in its crop
        assert cache.get(pid).axial_slices() == cache.entries[pid]["slices"]
        assert CachedPatient.from_patient(read_patient(split / pid)).axial_slices() == cache.entries[pid]["slices"]


def test_rois_outside_mask_are_kept(tmp_path: Path) -> None:
    p = toy_patient()
    p.structures["Brainstem"] = np.zeros_like(p.possible_dose_mask)
    p.structures["Brainstem"][60:64, 60:64, 86:96] = True  # beyond the body (z < 84), as in real data
    back = CachedPatient.from_patient(p).to_patient(p.rois)
    np.testing.assert_array_equal(back.structures["Brainstem"], p.structures["Brainstem"])


def test_rerun_adds_only_missing_and_recovers(split: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    prepare_cache(split, cache_dir, progress=False)
    stamp = (cache_dir / "pt_2.npz.xz").stat().st_mtime_ns
    (cache_dir / "pt_3.npz.xz").unlink()  # as if the run had been killed before pt_3 was written
    (cache_dir / ".pt_3.npz.xz.abc.tmp").write_bytes(b"partial")  # a temp file left by a kill
    summary = prepare_cache(split, cache_dir, progress=False)
    assert summary["added"] == 1 and summary["n_patients"] == 3
    assert (cache_dir / "pt_2.npz.xz").stat().st_mtime_ns == stamp
    assert len(Cache(cache_dir)) == 3


def test_corrupt_cache_file_is_a_clear_error(split: Path, tmp_path: Path) -> None:
    prepare_cache(split, tmp_path / "cache", progress=False)
    (tmp_path / "cache" / "pt_1.npz.xz").write_bytes(b"garbage")
    with pytest.raises(MddoseError, match="pt_1.npz.xz: corrupt cache file"):
        Cache(tmp_path / "cache").get("pt_1")
    with pytest.raises(MddoseError, match="not an mddose cache"):
        Cache(tmp_path)


def test_real_patients_cache(openkbp_validation: Path, tmp_path: Path) -> None:
    folders = list_patients(openkbp_validation)[:2]
    for f in folders:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / f.name).symlink_to(f)
    summary = prepare_cache(tmp_path / "src", tmp_path / "cache", progress=False)
    assert summary["dose_score_vs_original_max"] < 0.05
    index = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert index["size_mib"] < 1.0  # well under 50 MiB / 169 patients each
    cache = Cache(tmp_path / "cache")
    for f in folders:
        original, back = read_patient(f), cache.patient(f.name)
        for name, mask in original.structures.items():
            np.testing.assert_array_equal(back.structures[name], mask)
        assert np.abs(back.dose - original.dose).sum() / original.possible_dose_mask.sum() < 0.05
