"""The beam prior as an input, and the warm start that adds it to a trained network without changing it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mddose.data.beam_prior import OPENKBP_BEAM_ANGLES, beam_prior
from mddose.data.cache import DOSE_STEP_GY, Cache, CachedPatient, prepare_cache
from mddose.data.dataset import DataConfig, SliceDataset, structure_channels
from mddose.data.openkbp import list_patients, read_patient
from mddose.data.phantom_dose import beam_workers
from mddose.errors import MddoseError
from mddose.inference.predict import predict
from mddose.inference.predictor import load_model
from mddose.models.build import build_model
from mddose.runs.checkpoint import load_widened
from mddose.runs.run_config import for_data
from mddose.training.loop import lr_at, train
from tests.helpers import micro_config, phantom_cache


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return phantom_cache(tmp_path_factory.mktemp("prior"))


def prior_config(**train: object):
    """The micro recipe with the beam prior as its last structure channel."""
    cfg = micro_config(**train)
    data = replace(cfg.data, beam_prior=True)
    return replace(cfg, data=data, model=for_data(cfg.model, data))


def test_prepare_stores_the_prior_that_predict_computes(phantoms: tuple[Path, Path]) -> None:
    data, cache_dir = phantoms
    cache = Cache(cache_dir)
    assert cache.beam_angles == OPENKBP_BEAM_ANGLES
    pid = cache.patient_ids[0]
    patient = read_patient(data / pid)
    fresh = CachedPatient.from_patient(patient, OPENKBP_BEAM_ANGLES)  # what predict makes of a new patient
    assert np.array_equal(cache.get(pid).prior, fresh.prior)
    prior = beam_prior(patient)
    inside = patient.possible_dose_mask
    assert np.isfinite(prior).all() and prior.min() >= 0 and not prior[~inside].any()
    targets = np.logical_or.reduce([patient.structures[t] for t in patient.prescriptions])
    assert prior[targets].mean() > 2 * prior[inside & ~targets].mean()  # the beams aim at the targets
    cfg = DataConfig(image_size=64, beam_prior=True)
    z = cache.entries[pid]["slices"][len(cache.entries[pid]["slices"]) // 2]
    channels = structure_channels(fresh, z, cfg)
    assert channels.shape[0] == cfg.cond_channels == DataConfig().cond_channels + 1
    expected = np.round(prior[:, :, z] / DOSE_STEP_GY) * DOSE_STEP_GY / cfg.dose_norm_gy
    assert np.allclose(channels[-1], expected, atol=1e-6)


def test_the_prior_does_not_depend_on_the_thread_count(phantoms: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The beams run side by side on the process's threads (phantom_dose.beam_workers) and sum in beam order."""
    patient = read_patient(phantoms[0] / Cache(phantoms[1]).patient_ids[0])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    alone = beam_prior(patient)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert beam_workers() == 3 and np.array_equal(beam_prior(patient), alone)


def test_a_cache_without_the_prior_is_refused_then_completed(tmp_path: Path, phantoms: tuple[Path, Path]) -> None:
    data, _ = phantoms
    cache_dir = tmp_path / "cache"
    prepare_cache(data, cache_dir, progress=False, beam_angles=None)
    assert Cache(cache_dir).beam_angles is None
    with pytest.raises(MddoseError, match="re-run 'mddose prepare'"):
        SliceDataset(Cache(cache_dir), DataConfig(image_size=32, beam_prior=True))
    summary = prepare_cache(data, cache_dir, progress=False)  # re-run: adds the prior to every patient
    assert summary["added"] == len(list_patients(data)) and Cache(cache_dir).beam_angles == OPENKBP_BEAM_ANGLES
    with pytest.raises(MddoseError, match="other gantry angles"):
        prepare_cache(data, cache_dir, progress=False, beam_angles=(0.0, 120.0, 240.0))


def test_train_and_predict_with_the_prior(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    data, cache_dir = phantoms
    train(cache_dir, tmp_path / "run", prior_config(val_patients=0), max_steps=3, progress=False)
    predict(tmp_path / "run", data, tmp_path / "pred", sampler="ddim", steps=1, nifti=False, progress=False)
    info = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert info["n_patients"] == len(list_patients(data))


def test_warm_start_adds_the_prior_with_zero_weights(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    """The widened network's output at step 0 equals the network it started from."""
    data, cache_dir = phantoms
    train(cache_dir, tmp_path / "old", micro_config(val_patients=0), max_steps=3, progress=False)
    old_cfg, old, folder = load_model(tmp_path / "old", torch.device("cpu"))
    cfg = prior_config(val_patients=0, warmup_steps=2)
    with pytest.raises(MddoseError, match="--decay-steps beyond step 5"):
        train(cache_dir, tmp_path / "bad", cfg, max_steps=3, progress=False, init_from=folder)
    train(cache_dir, tmp_path / "new", cfg, max_steps=5, progress=False, init_from=folder, decay_steps=50)
    start = build_model(cfg.model)
    assert load_widened(start, folder / "ema.safetensors") == ["structure_encoder.stem.weight"]
    cond = torch.randn(2, cfg.data.cond_channels, 32, 32)
    x_t, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(start.eval()(x_t, t, cond), old(x_t, t, cond[:, :-1]))
    trainer = json.loads((tmp_path / "new" / "checkpoints" / "last" / "trainer.json").read_text())
    assert trainer["step"] == 5  # counted on from the old run's 3 steps
    new_cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    assert new_cfg["train"]["restart_step"] == 3 and new_cfg["train"]["decay_steps"] == 50
    restarted = replace(cfg, train=replace(cfg.train, restart_step=3, decay_steps=50))
    assert lr_at(3, restarted) == pytest.approx(cfg.train.lr / 2)  # the warm-up starts again
    assert lr_at(5, restarted) == pytest.approx(cfg.train.lr)
    assert old_cfg.data.cond_channels + 1 == cfg.data.cond_channels
