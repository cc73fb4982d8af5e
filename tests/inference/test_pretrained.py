"""The shipped model: its files load and match their config, ``predict openkbp`` works on a synthetic
patient, and ``export_run`` logs every stretch but replaces the weights only when they validate better."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mddose.data.openkbp import list_patients, read_dose_csv, read_patient
from mddose.data.phantom import write_phantoms
from mddose.errors import MddoseError
from mddose.experiments.shipping import (CARD_FILE, LOG_FILE, card_text, export_run, model_card, training_log,
                                         write_weights)
from mddose.inference.predictor import load_model
from mddose.inference.pretrained import PRETRAINED, pretrained_folder
from mddose.models.build import build_model
from mddose.runs.run_config import RunConfig
from mddose.training.loop import train
from tests.helpers import micro_config, phantom_cache


def test_packaged_weights_load_and_match_their_config() -> None:
    folder = pretrained_folder("openkbp")
    cfg = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
    state = load_file(str(folder / "ema.safetensors"))
    own = build_model(cfg.model).state_dict()
    assert set(state) == set(own) and all(state[k].shape == own[k].shape for k in own)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert (folder / "ema.safetensors").stat().st_size <= 16 * 2**20
    loaded_cfg, model, _ = load_model(folder, torch.device("cpu"))
    assert loaded_cfg == cfg and all(torch.isfinite(p).all() for p in model.parameters())
    rows = training_log(folder)
    assert rows and any(r["shipped"] for r in rows) and "Training log" in (folder / CARD_FILE).read_text()
    assert (folder / CARD_FILE).read_text() == card_text(folder)  # the card says what its files say


def test_predict_pretrained_on_a_synthetic_patient(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_phantoms(data, n_patients=1, seed=3, grid=64, progress=False)
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "-m", "mddose.cli", "predict", "openkbp", str(data), str(out),
                           "--steps", "2", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    patient = read_patient(list_patients(data)[0])
    dose = read_dose_csv(out / f"{patient.patient_id}.csv", patient.shape)
    assert dose.shape == patient.shape and np.isfinite(dose).all() and (dose >= 0).all()
    assert (dose[~patient.possible_dose_mask] == 0).all() and dose[patient.possible_dose_mask].max() > 0


def test_predict_names_its_model_first_a_shipped_one_by_name(tmp_path: Path) -> None:
    """MODEL DATA_DIR OUT_DIR, MODEL a folder or a shipped model's name; the earlier --pretrained NAME still works,
    with a warning naming the new spelling; a folder with a shipped model's name is refused as ambiguous."""
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mddose.cli", "predict", *args], capture_output=True, text=True,
                              cwd=tmp_path)

    proc = run("openkbp", str(tmp_path))
    assert proc.returncode == 1 and "expected MODEL DATA_DIR OUT_DIR" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("--pretrained", "openkbp", str(tmp_path))
    assert "deprecated: name the model first (mddose predict openkbp DATA_DIR OUT_DIR)" in proc.stderr
    assert proc.returncode == 1 and "expected MODEL DATA_DIR OUT_DIR" in proc.stderr
    (tmp_path / "openkbp").mkdir()  # a data folder of that name (as the README's openkbp/validation-pats)
    proc = run("openkbp", str(tmp_path / "openkbp"), str(tmp_path / "o"))
    assert "both a model" not in proc.stderr and "no patient folders" in proc.stderr
    (tmp_path / "openkbp" / "checkpoints").mkdir()  # a run of that name
    proc = run("openkbp", str(tmp_path / "data"), str(tmp_path / "o"))
    assert proc.returncode == 1 and "both a model shipped with mddose and a folder here" in proc.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(MddoseError, match="unknown pretrained"):
        pretrained_folder("nope")
    assert "openkbp" in PRETRAINED


def test_export_logs_each_stretch_and_ships_only_improvements(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=3)
    run, target = tmp_path / "run", tmp_path / "weights"
    train(cache, run, micro_config(val_patients=0), max_steps=3, progress=False)
    first = export_run(run, data, steps=2, target=target)
    assert first["shipped"] and first["patients"] == 3 and first["steps"] == 3
    weights = (target / "ema.safetensors").read_bytes()
    table = json.loads((target / "qa_errors.json").read_text())  # qa's tolerances for the weights shipped
    assert table["patients"] == 3 and table["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    # a second stretch that validates no better is logged but leaves the shipped weights alone
    (target / LOG_FILE).write_text(json.dumps([{**first, "dose_score": 0.0}]))
    train(cache, run, max_steps=4, resume=True, progress=False)
    second = export_run(run, data, steps=2, target=target)
    assert not second["shipped"] and second["steps"] == 4 and "new_run" not in second
    assert (target / "ema.safetensors").read_bytes() == weights
    assert len(training_log(target)) == 2
    card = (target / CARD_FILE).read_text()
    assert card.count("| 20") == 2 and "Shipped weights: step 3" in card
    # a run trained from scratch in another folder starts its own CPU count
    train(cache, tmp_path / "fresh", micro_config(val_patients=0), max_steps=2, progress=False)
    third = export_run(tmp_path / "fresh", data, steps=2, target=target)
    fresh_seconds = json.loads((tmp_path / "fresh" / "checkpoints" / "last" / "trainer.json").read_text())["seconds"]
    assert third["new_run"] and third["cpu_minutes"] == round(fresh_seconds / 60, 1) and third["steps"] == 2
    assert "2 (new run)" in (target / CARD_FILE).read_text()


def test_shipped_config_picks_its_scan_path_on_the_users_machine(tmp_path: Path) -> None:
    run, target = tmp_path / "run", tmp_path / "weights"
    run.mkdir()
    target.mkdir()
    config = micro_config().to_dict()
    config["model"]["scan_backend"] = "cpu_kernel"  # what a run may train with
    (run / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.ones(2)}, str(run / "ema.safetensors"))
    write_weights(run, target)
    shipped = json.loads((target / "config.json").read_text())
    assert shipped["model"].pop("scan_backend") == "auto"
    assert shipped["model"] == {k: v for k, v in config["model"].items() if k != "scan_backend"}
    assert load_file(str(target / "ema.safetensors"))["w"].dtype == torch.float16
    card = model_card("openkbp", shipped | {"data": shipped["data"] | {"target_context": [-4, 4]}}, [])
    assert "7 OAR masks, the prescription map at slice offsets (-4, +4);" in card
    assert "7 OAR masks; training crops" in model_card("openkbp", shipped, [])  # none: nothing added


def test_qa_with_the_pretrained_model(tmp_path: Path) -> None:
    """The shipped model comes with its QA error table, measured with the very weights shipped."""
    from mddose.qa.tolerance import ERROR_TABLE, ErrorTable
    from mddose.runs.checkpoint import weights_sha256

    folder = pretrained_folder("openkbp")
    table = ErrorTable.load(folder / ERROR_TABLE)
    assert table.info["weights_sha256"] == weights_sha256(folder / "ema.safetensors")
    assert table.info["patients"] == 33 and set(table.metrics) == set(table.rois)
    data = tmp_path / "data"
    write_phantoms(data, n_patients=1, seed=3, grid=64, progress=False)
    proc = subprocess.run([sys.executable, "-m", "mddose.cli", "qa", "openkbp", str(data / "pt_1"),
                           "--out", str(tmp_path / "qa"), "--samples", "2", "--no-gamma", "--device", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "qa" / "qa.json").read_text())
    # a 64³ phantom's voxels are twice OpenKBP's: said in one line, nothing else to warn about
    assert [w for w in summary["warnings"] if "out of the model's scope: voxels" not in w] == []
    assert summary["model"]["sampler"] == "ddim" and summary["rows"]
