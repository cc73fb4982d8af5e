"""Signed distance inputs (DoseDiff's "distance-aware" conditioning): sign, millimetre scale, absent structures,
and the augmentations that must keep them right (flips swap paired organs, shifts uncover far-away pixels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from mddose.data.cache import Cache, prepare_cache
from mddose.data.dataset import DataConfig, SliceDataset, _shift, structure_channels
from mddose.data.distance import signed_distance
from mddose.data.openkbp import write_patient
from tests.conftest import toy_patient

DISTANCE = {"target_encoding": "per_level", "structure_encoding": "distance"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    root = tmp_path_factory.mktemp("distance")
    write_patient(toy_patient("pt_1"), root / "data" / "pt_1")
    prepare_cache(root / "data", root / "cache", progress=False)
    return Cache(root / "cache")


def test_sign_and_millimetres_on_anisotropic_pixels() -> None:
    mask = np.zeros((40, 50), bool)
    mask[10:20, 20:30] = True
    sd = signed_distance(mask, (2.0, 3.0), scale_mm=30.0)
    assert sd.dtype == np.float32 and (sd[mask] < 0).all() and (sd[~mask] > 0).all()
    assert sd[25, 25] == pytest.approx(6 * 2.0 / 30)  # 6 pixels of 2 mm below the square's last row
    assert sd[15, 35] == pytest.approx(6 * 3.0 / 30)  # 6 pixels of 3 mm right of its last column
    assert sd[12, 25] == pytest.approx(-3 * 2.0 / 30)  # 3 rows from the nearest row outside it
    assert sd[39, 0] == 1.0 and sd.min() >= -1.0  # beyond the scale: clipped


def test_the_grown_box_gives_the_whole_slices_map() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = np.zeros((128, 128), bool)
        x, y = rng.integers(0, 118, 2)
        mask[x:x + rng.integers(1, 10), y:y + rng.integers(1, 10)] = True  # anywhere, at the edges too
        spacing = (3.906, 2.5)
        whole = distance_transform_edt(~mask, sampling=spacing) - distance_transform_edt(mask, sampling=spacing)
        np.testing.assert_allclose(signed_distance(mask, spacing), np.clip(whole / 50.0, -1, 1), atol=1e-6)


def test_absent_or_filling_structures() -> None:
    assert (signed_distance(np.zeros((8, 8)), (1.0, 1.0)) == 1.0).all()  # absent: far away everywhere
    assert (signed_distance(np.ones((8, 8)), (1.0, 1.0)) == -1.0).all()


def test_distance_channels_of_a_slice(cache: Cache) -> None:
    cfg = DataConfig(**DISTANCE)
    vol, p, z = cache.get("pt_1"), toy_patient("pt_1"), 60
    cond = structure_channels(vol, z, cfg)
    masks = structure_channels(vol, z, DataConfig(target_encoding="per_level"))
    assert cond.shape == (cfg.cond_channels, 128, 128) == (1 + 3 + 7, 128, 128)
    np.testing.assert_array_equal(cond[0], masks[0])  # the CT is unchanged
    for c in range(1, 11):  # the sign is the mask
        np.testing.assert_array_equal(cond[c] < 0, masks[c] > 0.5)
    targets, oars = cfg.rois.targets, cfg.rois.oars
    cord = cond[1 + len(targets) + oars.index("SpinalCord")]
    reference = distance_transform_edt(~p.structures["SpinalCord"][:, :, z], sampling=p.spacing[:2])
    np.testing.assert_allclose(cord[~p.structures["SpinalCord"][:, :, z]],
                               np.minimum(reference / 50.0, 1.0)[~p.structures["SpinalCord"][:, :, z]], atol=1e-6)
    assert (cond[1 + targets.index("PTV63")] == 1.0).all()  # not contoured
    assert (cond[1 + len(targets) + oars.index("Larynx")] == 1.0).all()
    assert (structure_channels(vol, 0, cfg)[1:] == 1.0).all()  # a slice outside the cached box


def test_settings_are_checked_and_saved() -> None:
    cfg = DataConfig(**DISTANCE, distance_scale_mm=30)
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="structure_encoding must be 'mask' or 'distance', not 'sdf'"):
        DataConfig(target_encoding="per_level", structure_encoding="sdf")
    with pytest.raises(ValueError, match="needs target_encoding 'per_level'"):
        DataConfig(structure_encoding="distance")
    with pytest.raises(ValueError, match="distance_scale_mm must be positive"):
        DataConfig(**DISTANCE, distance_scale_mm=0)


def test_flip_swaps_the_paired_organs_distance_maps(cache: Cache) -> None:
    cfg = DataConfig(**DISTANCE, augment=True, max_shift=0, ct_jitter_hu=0, ct_scale_jitter=0)
    plain, aug = SliceDataset(cache, DataConfig(**DISTANCE)), SliceDataset(cache, cfg)
    i = plain.items.index(("pt_1", 50))
    ref, _ = plain[i]
    first_oar = 1 + len(cfg.rois.targets)
    r, l = first_oar + cfg.rois.oars.index("RightParotid"), first_oar + cfg.rois.oars.index("LeftParotid")
    assert (ref[r] < 0).any() and (ref[l] < 0).any()
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        cond, _ = aug[i]
        if torch.equal(cond, ref):
            continue
        flipped += 1
        assert torch.equal(cond[l], ref[r].flip(-1)) and torch.equal(cond[r], ref[l].flip(-1))
    assert 0 < flipped < 8


def test_shifts_uncover_far_away_pixels(cache: Cache) -> None:
    cfg = DataConfig(**DISTANCE)
    assert cfg.shift_fill(12) == [-1.0] + [1.0] * 10 + [0.0]  # CT air, distance maps far, a trailing channel 0
    cond = torch.from_numpy(structure_channels(cache.get("pt_1"), 60, cfg))
    moved = _shift(cond, 3, -2, cfg.shift_fill(cond.shape[0]))
    assert (moved[0, :3] == -1.0).all() and (moved[1:, :3] == 1.0).all() and (moved[1:, :, -2:] == 1.0).all()
    # in the dataset: a scale so large that no distance reaches +1, so only uncovered pixels hold it
    far = SliceDataset(cache, DataConfig(**DISTANCE, distance_scale_mm=1e4, augment=True, max_shift=6))
    i = far.items.index(("pt_1", 60))
    present = [c for c in range(1, 11) if (cond[c] < 0).any()]  # on this slice (absent ones are +1 everywhere)
    assert len(present) >= 3
    shifted = 0
    for seed in range(6):
        torch.manual_seed(seed)
        present_maps = far[i][0][present]
        assert not (present_maps == 0).any()
        edge = (present_maps == 1.0).all(0)
        shifted += bool(edge.any())
        rows, cols = edge.all(1), edge.all(0)  # the +1 pixels are whole uncovered rows and columns
        assert (edge == (rows[:, None] | cols[None, :])).all()
    assert shifted


def test_resizing_keeps_distances_continuous(cache: Cache) -> None:
    cond, _ = SliceDataset(cache, DataConfig(**DISTANCE, image_size=256))[5]
    assert cond.shape == (11, 256, 256) and cond.min() >= -1 and cond.max() <= 1
    assert len(np.unique(cond[1:].numpy())) > 100  # bilinear, not nearest
