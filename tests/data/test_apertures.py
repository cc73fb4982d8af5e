"""The fields' apertures as inputs: their geometry is the beam model's, and a network gains them without changing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mddose.data.beam_prior import OPENKBP_BEAM_ANGLES, field_apertures
from mddose.data.cache import Cache
from mddose.data.dataset import DataConfig, structure_channels
from mddose.data.phantom_dose import DoseModel, _rotate
from mddose.inference.predict import predict
from mddose.inference.predictor import load_model
from mddose.models.build import build_model
from mddose.runs.checkpoint import load_widened
from mddose.runs.run_config import for_data
from mddose.training.loop import train
from tests.helpers import micro_config, phantom_cache

PIXEL_MM = 2.0


def test_a_field_covers_the_rays_through_its_target() -> None:
    """One field, a one-pixel target: covered where the beam model's ray coordinate meets the target's."""
    side, spot = 64, (20, 40)
    target = np.zeros((1, side, side), dtype=bool)
    target[0, spot[0], spot[1]] = True
    columns = np.ascontiguousarray(np.broadcast_to(np.arange(side, dtype=np.float32), (side, side)))
    margin_px = DoseModel.aperture_margin_mm / PIXEL_MM
    for angle in (0.0, 40.0, 90.0, 200.0):
        cover = field_apertures(target, (PIXEL_MM, PIXEL_MM), (angle,))[0]
        ray = _rotate(columns, -angle, order=1)  # the beam model's ray of each pixel (phantom_dose._trace)
        offset = np.abs(ray - ray[spot])
        traced = np.hypot(*np.mgrid[0:side, 0:side] - (side - 1) / 2) < side / 2 - 2  # where the rotation is exact
        assert (cover[traced & (offset < 0.4)] == 1.0).all()
        assert (cover[traced & (offset < margin_px - 1.1)] == 1.0).all()  # bins of one pixel
        assert not cover[traced & (offset > margin_px + 1.6)].any()
    assert field_apertures(target, (PIXEL_MM, PIXEL_MM), (0.0,))[0, :, spot[1]].min() == 1.0  # gantry 0: along x


def test_coverage_counts_the_fields_per_target() -> None:
    targets = np.zeros((3, 48, 48), dtype=bool)
    targets[2, 20:26, 22:28] = True
    cover = field_apertures(targets, (3.0, 3.0), OPENKBP_BEAM_ANGLES)
    assert cover.dtype == np.float32 and cover.shape == targets.shape
    assert not cover[:2].any()  # a target absent from the slice opens no field
    assert (cover[2][targets[2]] == 1.0).all()  # every field opens on its own target
    assert 0.0 < cover[2, 2, 24] < 1.0 and cover[2, 2, 24] * 9 == pytest.approx(round(cover[2, 2, 24] * 9), abs=0.5)
    assert not field_apertures(np.zeros((1, 8, 8), dtype=bool), (3.0, 3.0), OPENKBP_BEAM_ANGLES).any()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return phantom_cache(tmp_path_factory.mktemp("apertures"), patients=2)


def test_the_dataset_appends_one_aperture_channel_per_target(phantoms: tuple[Path, Path]) -> None:
    _, cache_dir = phantoms
    cache = Cache(cache_dir)
    vol = cache.get(cache.patient_ids[0])
    z = cache.entries[vol.patient_id]["slices"][len(cache.entries[vol.patient_id]["slices"]) // 2]
    cfg = DataConfig(beam_prior=True, beam_apertures=True)
    channels = structure_channels(vol, z, cfg)
    assert channels.shape[0] == cfg.cond_channels == DataConfig(beam_prior=True).cond_channels + len(cfg.rois.targets)
    plain = structure_channels(vol, z, DataConfig(beam_prior=True))
    assert np.array_equal(channels[: plain.shape[0]], plain)  # the new channels come last, the rest unchanged
    per_level = structure_channels(vol, z, DataConfig(target_encoding="per_level"))[1:1 + len(cfg.rois.targets)]
    expected = field_apertures(per_level > 0, vol.spacing[:2], cfg.beam_angles)
    assert np.array_equal(channels[-len(cfg.rois.targets):], expected)
    assert expected.any()


def test_a_warm_start_gains_the_apertures_with_zero_weights(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    """The widened network's output at step 0 equals the network it started from; it then trains and predicts."""
    data, cache_dir = phantoms
    micro = micro_config(val_patients=0)
    prior = replace(micro.data, beam_prior=True)
    old_cfg = replace(micro, data=prior, model=for_data(micro.model, prior))
    train(cache_dir, tmp_path / "old", old_cfg, max_steps=2, progress=False)
    _, old, folder = load_model(tmp_path / "old", torch.device("cpu"))
    data_cfg = replace(old_cfg.data, beam_apertures=True)
    cfg = replace(old_cfg, data=data_cfg, model=for_data(old_cfg.model, data_cfg))
    start = build_model(cfg.model)
    assert load_widened(start, folder / "ema.safetensors") == ["structure_encoder.stem.weight"]
    cond = torch.randn(2, cfg.data.cond_channels, 32, 32)
    x_t, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(start.eval()(x_t, t, cond), old(x_t, t, cond[:, :-len(cfg.data.rois.targets)]))
    train(cache_dir, tmp_path / "new", cfg, max_steps=4, progress=False, init_from=folder, decay_steps=20)
    predict(tmp_path / "new", data, tmp_path / "pred", sampler="ddim", steps=1, nifti=False, progress=False)
    assert json.loads((tmp_path / "pred" / "prediction.json").read_text())["n_patients"] == 2
