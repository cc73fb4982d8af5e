"""3D inputs: structure volumes are the stacked slices, crops stay on the grid and over the patient, augmentation
swaps the paired organs, and a seeded draw repeats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mddose.data.cache import Cache
from mddose.data.dataset import DataConfig, slice_dose, structure_channels
from mddose.data.volume import VolumeDataset, crop_origin, dose_volume, mask_volume, structure_volume
from tests.helpers import phantom_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(phantom_cache(tmp_path_factory.mktemp("volume"), patients=2)[1])


def test_volumes_are_the_stacked_slices(cache: Cache) -> None:
    vol, cfg = cache.get("pt_1"), DataConfig()
    cond, dose, mask = structure_volume(vol, cfg), dose_volume(vol, cfg), mask_volume(vol)
    assert cond.shape == (cfg.cond_channels, 64, 64, 64) and dose.shape == mask.shape == (1, 64, 64, 64)
    for z in (0, 20, 40, 63):
        np.testing.assert_array_equal(cond[..., z], structure_channels(vol, z, cfg))
        np.testing.assert_array_equal(dose[..., z], slice_dose(vol, z, cfg))
    assert mask.sum() == vol.to_patient(cache.rois).possible_dose_mask.sum()
    with pytest.raises(ValueError, match="2.5D"):
        structure_volume(vol, DataConfig(context_slices=1))
    with pytest.raises(ValueError, match="2.5D"):
        structure_volume(vol, DataConfig(target_context=(2,)))


def test_crops_stay_on_the_grid_and_over_the_patient(cache: Cache) -> None:
    vol = cache.get("pt_2")
    torch.manual_seed(0)
    for _ in range(50):
        x, y, z = crop_origin(vol, (32, 32, 16))
        assert 0 <= x <= 32 and 0 <= y <= 32 and 0 <= z <= 48
        assert mask_volume(vol, range(z, z + 16))[:, x:x + 32, y:y + 32].any()
    with pytest.raises(ValueError, match="larger than the grid"):
        crop_origin(vol, (128, 32, 16))


def test_dataset_items_augmentation_and_seed(cache: Cache) -> None:
    plain = VolumeDataset(cache, DataConfig(), (32, 32, 16), crops_per_patient=3)
    assert len(plain) == 6
    torch.manual_seed(1)
    cond, dose = plain[0]
    assert cond.shape == (9, 32, 32, 16) and dose.shape == (1, 32, 32, 16) and dose.max() > 0
    torch.manual_seed(1)
    again = plain[0]
    torch.testing.assert_close(again[0], cond)
    # a mirrored crop: flipped along the right-left axis with the parotid channels swapped
    cfg = DataConfig(augment=True, ct_jitter_hu=0.0, ct_scale_jitter=0.0)
    flipped = VolumeDataset(cache, cfg, (32, 32, 16))
    rp, lp = (cfg.n_ct_channels + cfg.n_target_channels + cfg.rois.oars.index(n) for n in ("RightParotid",
                                                                                            "LeftParotid"))
    for seed in range(20):
        torch.manual_seed(seed)
        origin = crop_origin(cache.get("pt_1"), (32, 32, 16))
        mirrored = float(torch.rand(())) < 0.5
        torch.manual_seed(seed)
        c, d = flipped[0]
        x, y, z = origin
        ref = torch.from_numpy(structure_volume(cache.get("pt_1"), cfg, range(z, z + 16))[:, x:x + 32, y:y + 32])
        if mirrored:
            torch.testing.assert_close(c[rp], ref[lp].flip(-2))
            torch.testing.assert_close(c[0], ref[0].flip(-2))
        else:
            torch.testing.assert_close(c, ref)
