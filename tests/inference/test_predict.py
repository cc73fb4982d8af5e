"""Whole-patient prediction: every sampler gives finite doses inside the mask; outputs are what evaluate reads."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mddose.bench.samplers import bench_sampling
from mddose.data.openkbp import list_patients, read_dose_csv, read_patient
from mddose.errors import MddoseError
from mddose.evaluate.folders import evaluate
from mddose.inference.predict import predict
from mddose.runs.run_config import for_data
from mddose.training.loop import train
from tests.helpers import micro_config, phantom_cache, trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_run(tmp_path_factory.mktemp("predict"))


@pytest.mark.parametrize(("sampler", "steps"), [("dpm++", 3), ("ddim", 3), ("ddpm", 5)])
def test_samplers_finite_inside_mask(trained: tuple[Path, Path], tmp_path: Path, sampler: str, steps: int) -> None:
    run, data = trained
    summary = predict(run, data, tmp_path / "out", sampler=sampler, steps=steps, samples=2, progress=False)
    assert summary["n_patients"] == 3
    for folder in list_patients(data):
        p = read_patient(folder)
        dose = read_dose_csv(tmp_path / "out" / f"{p.patient_id}.csv", p.shape)
        std = read_dose_csv(tmp_path / "out" / "uncertainty" / f"{p.patient_id}.csv", p.shape)
        assert np.isfinite(dose).all() and (dose >= 0).all() and dose.max() <= 80.0 + 1e-3
        assert (dose[~p.possible_dose_mask] == 0).all() and dose[p.possible_dose_mask].max() > 0
        assert (std[~p.possible_dose_mask] == 0).all() and std.max() > 0
        assert (tmp_path / "out" / "nifti" / f"{p.patient_id}_dose.nii.gz").is_file()


def test_a_run_with_target_context_trains_and_predicts(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    cfg = micro_config(val_patients=0)
    context = replace(cfg.data, target_context=(-4, -2, 2, 4))
    cfg = replace(cfg, data=context, model=for_data(cfg.model, context))
    train(cache, tmp_path / "run", cfg, max_steps=2, progress=False)
    predict(tmp_path / "run", data, tmp_path / "out", sampler="ddim", steps=1, nifti=False, progress=False)
    for folder in list_patients(data):
        p = read_patient(folder)
        dose = read_dose_csv(tmp_path / "out" / f"{p.patient_id}.csv", p.shape)
        assert np.isfinite(dose).all() and (dose >= 0).all() and (dose[~p.possible_dose_mask] == 0).all()


@pytest.mark.slow
def test_cli_predict_then_evaluate(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    proc = subprocess.run([sys.executable, "-m", "mddose.cli", "predict", str(run), str(data), str(tmp_path / "p"),
                           "--steps", "2", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "predicted 3 patients" in proc.stdout
    summary = evaluate(data, [tmp_path / "p"], tmp_path / "eval", gamma=False, progress=False)  # gamma: evaluate's
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary


def test_predict_errors(tmp_path: Path, trained: tuple[Path, Path]) -> None:
    with pytest.raises(MddoseError, match="no checkpoint found"):
        predict(tmp_path, trained[1], tmp_path / "o", progress=False)
    proc = subprocess.run([sys.executable, "-m", "mddose.cli", "predict", str(trained[0]), str(trained[0]), str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_bench_sampling_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    result = bench_sampling(run, data, tmp_path / "s.json", grid=(("ddim", 2), ("dpm++", 2)), n_patients=1, progress=False)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [r["sampler"] for r in saved["results"]] == ["ddim", "dpm++"] == [r["sampler"] for r in result["results"]]
    assert all(r["seconds_per_patient"] > 0 and r["dose_score"] >= 0 for r in saved["results"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["c3d", "hd-unet", "c3d-3d", "hd-unet-3d"])
def test_deterministic_baseline_trains_and_predicts(tmp_path: Path, method: str) -> None:
    from mddose.runs.run_config import method_config

    data, cache = phantom_cache(tmp_path, patients=2)
    cfg = method_config(method, micro_config(val_patients=0), patch_size=(32, 32, 16))
    steps = 20 if method.endswith("3d") else 40
    result = train(cache, tmp_path / "run", cfg, max_steps=steps, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert result["step"] == steps and history[-1]["loss"] < 0.5 * history[0]["loss"]
    summary = predict(tmp_path / "run", data, tmp_path / "a", samples=3, nifti=False, progress=False)
    predict(tmp_path / "run", data, tmp_path / "b", seed=7, nifti=False, progress=False)
    assert (summary["objective"], summary["sampler"], summary["samples"]) == ("regression", "none", 1)
    assert not (tmp_path / "a" / "uncertainty").exists()
    for folder in list_patients(data):
        p = read_patient(folder)
        a = read_dose_csv(tmp_path / "a" / f"{p.patient_id}.csv", p.shape)
        b = read_dose_csv(tmp_path / "b" / f"{p.patient_id}.csv", p.shape)
        np.testing.assert_array_equal(a, b)  # deterministic: the seed changes nothing
        assert (a[~p.possible_dose_mask] == 0).all() and a[p.possible_dose_mask].max() > 0
    with pytest.raises(MddoseError, match="no sampler"):
        bench_sampling(tmp_path / "run", data, tmp_path / "s.json", progress=False)


def test_dosediff_trains_and_predicts_from_the_command_line(tmp_path: Path) -> None:
    """`mddose train --method dosediff` on phantoms, then `mddose predict` with the row's own sampler (DDIM, 8)."""
    data, cache = phantom_cache(tmp_path, patients=2)
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(micro_config(val_patients=0).to_dict()))
    cli = [sys.executable, "-m", "mddose.cli"]
    proc = subprocess.run([*cli, "train", str(cache), str(tmp_path / "run"), "--config", str(cfg), "--method",
                           "dosediff", "--max-steps", "3", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["model"]["fusion"], saved["data"]["structure_encoding"]) == ("transformer", "distance")
    proc = subprocess.run([*cli, "predict", str(tmp_path / "run"), str(data), str(tmp_path / "p"), "--device", "cpu",
                           "--samples", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert (summary["sampler"], summary["steps"]) == ("ddim", 8)
    for folder in list_patients(data):
        p = read_patient(folder)
        dose = read_dose_csv(tmp_path / "p" / f"{p.patient_id}.csv", p.shape)
        assert dose.shape == p.shape and np.isfinite(dose).all() and (dose >= 0).all()
        assert (dose[~p.possible_dose_mask] == 0).all() and dose[p.possible_dose_mask].max() > 0


def test_bad_sampler_settings_are_one_line_before_any_work(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    with pytest.raises(MddoseError, match="unknown sampler 'foo'"):
        predict(run, data, tmp_path / "o", sampler="foo", progress=False)
    with pytest.raises(MddoseError, match="steps must be in 1..1000"):
        predict(run, data, tmp_path / "o", steps=5000, progress=False)
    assert not (tmp_path / "o").exists()
    proc = subprocess.run([sys.executable, "-m", "mddose.cli", "predict", str(run), str(data), str(tmp_path / "o"),
                           "--sampler", "foo"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: unknown sampler 'foo': choose ddpm, ddim, dpm++"


def test_diverged_weights_are_refused_before_any_prediction(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from mddose.inference.predictor import checkpoint_folder

    run = tmp_path / "run"
    shutil.copytree(checkpoint_folder(trained[0]), run)
    state = load_file(str(run / "ema.safetensors"))
    state[next(iter(state))] = torch.full_like(state[next(iter(state))], float("nan"))
    save_file(state, str(run / "ema.safetensors"))
    with pytest.raises(MddoseError, match="NaN or infinite"):
        predict(run, trained[1], tmp_path / "out", steps=2, progress=False)
    assert not (tmp_path / "out").exists()


def test_model_default_sampler(tmp_path: Path) -> None:
    """Without --sampler/--steps a model is sampled the way its config says (the shipped model: DDIM, 1 trailing
    step from t = 999)."""
    import dataclasses

    from mddose.training.loop import train as run_train

    data, cache = phantom_cache(tmp_path, patients=2)
    cfg = micro_config(val_patients=0)
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, sampler="ddim", sampler_steps=2))
    run_train(cache, tmp_path / "run", cfg, max_steps=1, progress=False)
    summary = predict(tmp_path / "run", data, tmp_path / "p", progress=False, nifti=False)
    assert (summary["sampler"], summary["steps"]) == ("ddim", 2)
    assert predict(tmp_path / "run", data, tmp_path / "q", sampler="dpm++", progress=False, nifti=False)["steps"] == 2
    from mddose.inference.pretrained import pretrained_folder
    from mddose.runs.run_config import checkpoint_run_config

    shipped = checkpoint_run_config(pretrained_folder("openkbp")).diffusion
    assert shipped.sampling() == ("ddim", 1) and shipped.timestep_spacing == "trailing"


def test_mirror_average_swaps_paired_organs_and_pools_the_spread() -> None:
    import torch

    from mddose.inference.slicewise import mirror_average

    g = torch.Generator().manual_seed(0)
    cond = torch.rand((2, 4, 6, 5), generator=g)
    mask = torch.ones((2, 1, 6, 5))
    # A "network" whose two draws straddle channel 1 with spread 0.1: mirrored, it sees channel 2 (1 and 2 are a
    # pair) flipped.
    half = 0.1 / 2 ** 0.5  # two draws ±half: unbiased standard deviation 0.1
    draw = lambda c, m: torch.stack([c[:, 1:2] - half, c[:, 1:2] + half])  # noqa: E731
    mean, std, draws = mirror_average(draw, cond, mask, [(1, 2)])
    assert torch.allclose(mean, (cond[:, 1:2] + cond[:, 2:3]) / 2)
    half_gap = (cond[:, 1:2] - cond[:, 2:3]) / 2
    assert torch.allclose(std, (0.01 + half_gap.square()).sqrt())
    assert draws.shape == (2, 2, 1, 6, 5) and torch.allclose(draws.mean(dim=0), mean)  # each draw: both sides
    # A network that mirrors exactly (its output follows the flip and the swap) is left as it is, spread included.
    both = lambda c: (c[:, 1:2] + c[:, 2:3]) / 2  # noqa: E731
    symmetric = lambda c, m: torch.stack([both(c) - half, both(c) + half])  # noqa: E731
    mean, std, _ = mirror_average(symmetric, cond, mask, [(1, 2)])
    assert torch.allclose(mean, (cond[:, 1:2] + cond[:, 2:3]) / 2) and torch.allclose(std, torch.full_like(std, 0.1))


def test_mirrored_prediction_is_finite_inside_the_mask_and_recorded(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    plain = predict(run, data, tmp_path / "plain", steps=2, progress=False, nifti=False)
    summary = predict(run, data, tmp_path / "mirror", steps=2, progress=False, nifti=False, mirror=True)
    assert summary["mirror"] and not plain["mirror"]
    assert json.loads((tmp_path / "mirror" / "prediction.json").read_text())["mirror"] is True
    for folder in list_patients(data):
        p = read_patient(folder)
        dose = read_dose_csv(tmp_path / "mirror" / f"{p.patient_id}.csv", p.shape)
        other = read_dose_csv(tmp_path / "plain" / f"{p.patient_id}.csv", p.shape)
        assert np.isfinite(dose).all() and (dose >= 0).all() and (dose[~p.possible_dose_mask] == 0).all()
        assert not np.array_equal(dose, other)  # the mirrored half is a different prediction


def test_smoothing_keeps_the_targets_dose(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The default smoothing across slices leaves the dose inside every target as predicted and smooths the rest."""
    run, data = trained
    raw = predict(run, data, tmp_path / "raw", steps=2, progress=False, nifti=False, smooth_mm=0.0)
    smooth = predict(run, data, tmp_path / "smooth", steps=2, progress=False, nifti=False)
    assert raw["smooth_mm"] == 0 and smooth["smooth_mm"] > 0
    changed = 0
    for folder in list_patients(data):
        p = read_patient(folder)
        a = read_dose_csv(tmp_path / "raw" / f"{p.patient_id}.csv", p.shape)
        b = read_dose_csv(tmp_path / "smooth" / f"{p.patient_id}.csv", p.shape)
        targets = np.logical_or.reduce([p.structures[t] for t in p.rois.targets if t in p.structures])
        np.testing.assert_allclose(b[targets & p.possible_dose_mask], a[targets & p.possible_dose_mask], atol=1e-3)
        changed += int(np.abs(b - a)[~targets & p.possible_dose_mask].max() > 1e-2)
    assert changed > 0


def test_predict_and_qa_give_the_same_dose(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """One patient, seed and number of samples: ``mddose qa`` shows the dose and spread ``mddose predict`` writes."""
    from mddose.inference.predictor import Predictor
    from mddose.qa.run import run_qa
    from tests.qa.helpers import stated_table

    run, data = trained
    predict(run, data, tmp_path / "p", steps=2, samples=2, seed=3, device="cpu", nifti=False, progress=False)
    predictor = Predictor(run, steps=2, samples=2, seed=3, device="cpu", progress=False)
    summary = run_qa(predictor, data / "pt_1", None, tmp_path / "qa", errors=stated_table().save(tmp_path / "e.json"),
                     gamma=False)
    assert (summary["model"]["samples"], summary["model"]["seed"]) == (2, 3)
    qa = tmp_path / "qa" / "prediction"
    assert (qa / "pt_1.csv").read_bytes() == (tmp_path / "p" / "pt_1.csv").read_bytes()
    assert (qa / "pt_1_std.csv").read_bytes() == (tmp_path / "p" / "uncertainty" / "pt_1.csv").read_bytes()


def test_predictor_draws_mean_spread_and_settings(trained: tuple[Path, Path]) -> None:
    """K draws per patient: their mean is the prediction, their spread the uncertainty; keeping the draws changes
    nothing; another sampler reuses the loaded model; bad settings are refused before any work."""
    from mddose.inference.predictor import Predictor

    run, data = trained
    patient = read_patient(data / "pt_1")
    predictor = Predictor(run, sampler="ddim", steps=2, samples=3, seed=1, device="cpu", progress=False)
    assert predictor.weights.name == "ema.safetensors" and predictor.info["samples"] == 3
    kept, plain = predictor.predict(patient, keep_draws=True), predictor.predict(patient)
    assert plain.draws is None and np.array_equal(kept.mean, plain.mean) and np.array_equal(kept.spread, plain.spread)
    assert kept.draws.shape == (3, *patient.shape) and kept.spread.max() > 0
    np.testing.assert_allclose(kept.draws.mean(axis=0), kept.mean, atol=1e-4)  # smoothing is linear
    other = predictor.resampled("dpm++", 3)
    assert other.model is predictor.model and (other.sampler, other.steps, predictor.sampler) == ("dpm++", 3, "ddim")
    assert not np.array_equal(other.predict(patient).mean, plain.mean)
    with pytest.raises(MddoseError, match="unknown sampler"):
        predictor.resampled("euler", 3)
    with pytest.raises(MddoseError, match="--samples must be"):
        Predictor(run, samples=0, device="cpu")


def test_predictor_voxel_check_and_fallback_weights(trained: tuple[Path, Path], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A patient merely off the training voxel size is predicted with a warning logged; one far off is refused.
    A checkpoint without EMA weights predicts with its model weights."""
    import dataclasses
    import shutil

    from mddose.inference.predictor import Predictor, checkpoint_folder

    run, data = trained
    folder = tmp_path / "ck"
    shutil.copytree(checkpoint_folder(run), folder)
    (folder / "ema.safetensors").unlink()
    predictor = Predictor(folder, steps=1, device="cpu", progress=False)
    assert predictor.weights == folder / "model.safetensors"
    patient = read_patient(data / "pt_1")
    with caplog.at_level("WARNING"):
        predictor.predict(patient)
        assert "may be off" not in caplog.text
        predictor.predict(dataclasses.replace(patient, spacing=tuple(1.5 * s for s in patient.spacing)))
        assert "pt_1" in caplog.text and "may be off" in caplog.text
    with pytest.raises(MddoseError, match="another scale"):
        predictor.predict(dataclasses.replace(patient, spacing=tuple(3 * s for s in patient.spacing)))


def test_bench_sampling_predicts_as_predict_does(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """``bench sampling`` scores the dose ``mddose predict`` writes for the same sampler, steps, samples and seed."""
    from mddose.evaluate.challenge import dose_score

    run, data = trained
    result = bench_sampling(run, data, tmp_path / "s.json", grid=(("ddim", 2),), n_patients=1, samples=2, seed=4,
                            progress=False)
    predict(run, data, tmp_path / "p", sampler="ddim", steps=2, samples=2, seed=4, nifti=False, progress=False)
    p = read_patient(list_patients(data)[0])
    dose = read_dose_csv(tmp_path / "p" / f"{p.patient_id}.csv", p.shape)
    expected = dose_score(p.dose.astype(np.float64), dose.astype(np.float64), p.possible_dose_mask)
    assert result["results"][0]["samples"] == 2
    assert result["results"][0]["dose_score"] == pytest.approx(expected, abs=1e-3)
