"""Slice dataset: channel layout, normalisation, 2.5D, resizing and anatomically safe augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mddose.data.cache import Cache, CachedPatient, prepare_cache
from mddose.data.dataset import DataConfig, SliceDataset, structure_channels
from mddose.data.openkbp import write_patient
from tests.conftest import toy_patient


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    root = tmp_path_factory.mktemp("ds")
    write_patient(toy_patient("pt_1"), root / "data" / "pt_1")
    prepare_cache(root / "data", root / "cache", progress=False)
    return Cache(root / "cache")


def test_layout_and_values(cache: Cache) -> None:
    cfg = DataConfig()
    ds = SliceDataset(cache, cfg, return_mask=True)
    p = toy_patient("pt_1")
    assert len(ds) == len(p.axial_slices())
    z = 60
    cond, dose, mask = ds[ds.items.index(("pt_1", z))]
    assert cond.shape == (cfg.cond_channels, 128, 128) == (9, 128, 128)
    assert dose.shape == mask.shape == (1, 128, 128)
    # CT channel: clipped HU / 1000 inside the possible-dose mask, air outside
    inside = p.possible_dose_mask[:, :, z]
    np.testing.assert_allclose(cond[0].numpy()[inside], p.ct[:, :, z][inside] / 1000, atol=1e-6)
    assert (cond[0].numpy()[~inside] == -1.0).all()
    # target channel: PTV70 → 1.0, PTV56 → 0.8
    tgt = cond[1].numpy()
    assert np.allclose(tgt[p.structures["PTV70"][:, :, z]], 1.0)
    assert np.allclose(tgt[p.structures["PTV56"][:, :, z]], 0.8)
    assert (tgt[~(p.structures["PTV70"] | p.structures["PTV56"])[:, :, z]] == 0).all()
    # OARs in RoiConfig order
    oars = cfg.rois.oars
    np.testing.assert_array_equal(cond[2 + oars.index("SpinalCord")].numpy(), p.structures["SpinalCord"][:, :, z])
    assert cond[2 + oars.index("Larynx")].sum() == 0  # not contoured
    np.testing.assert_allclose(dose[0].numpy(), p.dose[:, :, z] * inside / 80.0, atol=0.05 / 80 + 1e-6)
    np.testing.assert_array_equal(mask[0].numpy(), inside)


def test_per_level_targets_and_context(cache: Cache) -> None:
    cfg = DataConfig(target_encoding="per_level", context_slices=2)
    assert cfg.cond_channels == 5 + 3 + 7
    cond, _ = SliceDataset(cache, cfg)[10]
    assert cond.shape[0] == 15
    vol = cache.get("pt_1")
    z = SliceDataset(cache, cfg).items[10][1]
    centre = structure_channels(vol, z, DataConfig())[0]
    np.testing.assert_array_equal(cond[2].numpy(), centre)  # centre slice in the middle of the CT stack
    np.testing.assert_array_equal(cond[3].numpy(), structure_channels(vol, z + 1, DataConfig())[0])


def test_target_context_adds_the_prescription_maps_above_and_below(cache: Cache) -> None:
    cfg = DataConfig(target_context=[-3, 2])  # a list, as JSON gives it back
    assert cfg.target_context == (-3, 2) and cfg.cond_channels == 9 + 2
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    vol, plain = cache.get("pt_1"), DataConfig()
    shape = vol.full_shape
    z = next(z for z in range(3, shape[2] - 2)  # a slice whose neighbours' targets differ from its own
             if not np.array_equal(structure_channels(vol, z - 3, plain)[1], structure_channels(vol, z, plain)[1]))
    cond = structure_channels(vol, z, cfg)
    np.testing.assert_array_equal(cond[:9], structure_channels(vol, z, plain))  # the usual channels come first
    np.testing.assert_array_equal(cond[9], structure_channels(vol, z - 3, plain)[1])
    np.testing.assert_array_equal(cond[10], structure_channels(vol, z + 2, plain)[1])
    assert not structure_channels(vol, shape[2] - 1, DataConfig(target_context=(2,)))[-1].any()  # past the patient
    for bad in ((0,), (2, 2)):
        with pytest.raises(ValueError, match="distinct non-zero"):
            DataConfig(target_context=bad)
    for bad in ([1.7, -4], [True, 3], "48", None):
        with pytest.raises(ValueError, match="integers"):
            DataConfig(target_context=bad)
    with pytest.raises(ValueError, match="prescription"):
        DataConfig(target_context=(2,), target_encoding="per_level")


def test_resize_256(cache: Cache) -> None:
    cond, dose = SliceDataset(cache, DataConfig(image_size=256))[5]
    assert cond.shape == (9, 256, 256) and dose.shape == (1, 256, 256)
    assert set(np.unique(cond[2:].numpy())) <= {0.0, 1.0}  # masks stay binary


def test_flip_swaps_paired_organs(cache: Cache) -> None:
    cfg = DataConfig(augment=True, max_shift=0, ct_jitter_hu=0, ct_scale_jitter=0)
    plain = SliceDataset(cache, DataConfig())
    aug = SliceDataset(cache, cfg)
    i = plain.items.index(("pt_1", 50))
    ref_cond, ref_dose = plain[i]
    oars = cfg.rois.oars
    r, l = 2 + oars.index("RightParotid"), 2 + oars.index("LeftParotid")
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        cond, dose = aug[i]
        if torch.equal(cond, ref_cond):
            continue
        flipped += 1
        assert torch.equal(cond[l], ref_cond[r].flip(-1)) and torch.equal(cond[r], ref_cond[l].flip(-1))
        assert torch.equal(dose, ref_dose.flip(-1)) and torch.equal(cond[0], ref_cond[0].flip(-1))
    assert 0 < flipped < 8


def test_shift_and_jitter_are_reproducible(cache: Cache) -> None:
    aug = SliceDataset(cache, DataConfig(augment=True))
    torch.manual_seed(3)
    a = aug[7]
    torch.manual_seed(3)
    b = aug[7]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (9, 128, 128)


def test_patient_without_dose_gives_conditions_only() -> None:
    p = toy_patient(with_dose=False)
    vol = CachedPatient.from_patient(p)
    assert structure_channels(vol, 60, DataConfig()).shape == (9, 128, 128)


def test_real_cache_slices(openkbp_validation: Path, tmp_path: Path) -> None:
    from mddose.data.openkbp import list_patients

    folder = list_patients(openkbp_validation)[0]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / folder.name).symlink_to(folder)
    prepare_cache(tmp_path / "src", tmp_path / "cache", progress=False)
    ds = SliceDataset(Cache(tmp_path / "cache"), DataConfig(), return_mask=True)
    cond, dose, mask = ds[len(ds) // 2]
    assert 0 < dose.max() <= 1.0 and (dose[mask == 0] == 0).all()
    assert cond[1].max() > 0 or cond[2:].max() > 0


def test_crops_hold_the_patient_and_prediction_windows_cover_it(cache: Cache) -> None:
    from mddose.data.dataset import patient_window, random_window

    vol = cache.get(cache.patient_ids[0])
    (x0, y0), (sx, sy) = vol.offset[:2], vol.ct.shape[:2]
    torch.manual_seed(0)
    for _ in range(20):
        wx, wy = random_window(vol, 32)
        assert wx.stop - wx.start == wy.stop - wy.start == 32
        assert 0 <= wx.start and wx.stop <= vol.full_shape[0] and 0 <= wy.start and wy.stop <= vol.full_shape[1]
        for (lo, n), w in (((x0, sx), wx), ((y0, sy), wy)):  # the box inside the window, or the window inside it
            assert (w.start <= lo and lo + n <= w.stop) or (lo <= w.start and w.stop <= lo + n)
    wx, wy = patient_window(vol, 16)
    assert (wx.stop - wx.start) % 16 == 0 and (wy.stop - wy.start) % 16 == 0
    assert wx.start <= x0 and x0 + sx <= wx.stop and wy.start <= y0 and y0 + sy <= wy.stop
    cfg = DataConfig(crop=32, augment=True)
    cond, dose = SliceDataset(cache, cfg)[0]
    assert cond.shape[1:] == dose.shape[1:] == (32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        DataConfig(crop=40)


def test_crops_on_a_cache_of_another_grid_are_a_one_line_error(cache: Cache) -> None:
    from mddose.errors import MddoseError

    with pytest.raises(MddoseError, match=r"pt_1 has a 128x128 in-plane grid.*native 64x64"):
        SliceDataset(cache, DataConfig(image_size=64, crop=32))
