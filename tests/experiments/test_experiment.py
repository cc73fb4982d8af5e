"""The paper's tables end to end at a tiny budget: every row trains, predicts and is scored; re-running resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mddose.errors import MddoseError
from mddose.experiments.tables import describe, reference_row, run_experiment, select_rows, table_rows
from tests.helpers import micro_config, phantom_cache


def test_rows_differ_only_in_blocks() -> None:
    base = micro_config()
    rows3, rows4 = table_rows("table3", base), table_rows("table4", base)
    assert list(rows3) == ["conv", "swin", "mamba"] and list(rows4) == ["none", "conv", "swin", "mamba"]
    assert {r.model.encoder_block for r in rows3.values()} == {"mamba"}
    assert {r.model.denoiser_block for r in rows4.values()} == {"mamba"}
    assert all(r.train == base.train and r.data == base.data for r in [*rows3.values(), *rows4.values()])
    with pytest.raises(MddoseError, match="unknown table"):
        table_rows("table9", base)
    rows1 = table_rows("table1", base)
    assert list(rows1) == ["C3D-like", "HD-UNet-like", "DiffDP-like", "DoseDiff-like", "SP-DiffDose-like", "MD-Dose"]
    assert [r.objective for r in rows1.values()] == ["regression"] * 2 + ["diffusion"] * 4
    assert rows1["MD-Dose"].model == base.model == rows3["mamba"].model.replace(name=base.model.name)
    assert all(r.train == base.train for r in rows1.values())
    assert all(r.data == base.data for name, r in rows1.items() if name != "DoseDiff-like")  # it reads distances
    assert rows1["DoseDiff-like"].data.structure_encoding == "distance"
    layout = table_rows("layout", base)
    assert [(r.model.denoiser_block, r.model.encoder_block, r.model.conv_levels) for r in layout.values()] == [
        ("mamba", "mamba", 0), ("mamba", "mamba", base.model.conv_levels), ("conv", "conv", base.model.conv_levels)]
    assert all(r.train == base.train and r.data == base.data for r in layout.values())


@pytest.mark.parametrize("table", ["table1", "table3", "table4", "layout"])
def test_table_end_to_end_and_resume(tmp_path: Path, table: str) -> None:
    data, cache = phantom_cache(tmp_path, patients=3)
    base = micro_config(val_patients=0)
    result = run_experiment(table, cache, data, tmp_path / "exp", budget_minutes=0.02, base=base, steps=2,
                            device="cpu", progress=False)
    md = (tmp_path / "exp" / f"{table}.md").read_text()
    reference = reference_row(table)
    assert "0.02 min of training each" in md and f"| {reference} |" in md
    assert set(result["scores"]) == set(table_rows(table, base))
    assert all(m["steps"] >= 1 for m in result["methods"].values())
    assert (tmp_path / "exp" / "eval" / "per_patient.csv").is_file()
    assert {p.name for p in (tmp_path / "exp" / "eval" / "figures").iterdir()} == {
        "pt_1_comparison.png", "pt_1_dvh.png", "pt_1_dose.png"}
    assert "eval/figures/pt_1_comparison.png" in md
    summary = json.loads((tmp_path / "exp" / "eval" / "summary.json").read_text())
    assert summary["against"] == reference
    # re-running finds every method done: nothing is trained or predicted again
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp" / "preds").glob("*/prediction.json")}
    run_experiment(table, cache, data, tmp_path / "exp", budget_minutes=0.02, base=base, steps=2, device="cpu",
                   progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    if table == "table1":  # another step count: the diffusion rows predict again, nothing trains again
        runs = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp" / "runs").glob("*/checkpoints/last/trainer.json")}
        result = run_experiment(table, cache, data, tmp_path / "exp", budget_minutes=0.02, base=base, steps=3,
                                device="cpu", progress=False)
        assert runs == {p: p.stat().st_mtime_ns for p in runs} and result["steps"] == 3
        again = {p.parent.name for p in stamps if p.stat().st_mtime_ns != stamps[p]}
        assert again == {"DiffDP-like", "DoseDiff-like", "SP-DiffDose-like", "MD-Dose"}
        assert "conv denoiser, conv encoder, fused by windowed attention, signed distance maps" in md


def test_interrupted_method_resumes(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=3)
    base = micro_config(val_patients=0)
    kw = dict(budget_minutes=0.02, base=base, steps=2, device="cpu", progress=False)
    run_experiment("table4", cache, data, tmp_path / "exp", **kw)
    # as if killed during the Mamba row's training: no "done" marker, no predictions yet
    (tmp_path / "exp" / "runs" / "mamba" / "experiment_done.json").unlink()
    shutil.rmtree(tmp_path / "exp" / "preds" / "mamba")
    result = run_experiment("table4", cache, data, tmp_path / "exp", **kw)
    assert (tmp_path / "exp" / "runs" / "mamba" / "experiment_done.json").is_file()
    assert (tmp_path / "exp" / "preds" / "mamba" / "prediction.json").is_file()
    assert result["methods"]["mamba"]["steps"] >= 1


def test_table2_times_every_method_and_resumes(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    base = micro_config(val_patients=0)
    result = run_experiment("table2", cache, data, tmp_path / "t2", base=base, steps=2, device="cpu",
                            progress=False, time_patients=1)
    assert list(result["methods"]) == list(table_rows("table1", base))
    for m in result["methods"].values():
        assert m["parameters"] > 0 and m["patients"] == ["pt_1"]
        assert 0 < m["seconds_per_iteration"] and 0 < m["seconds_per_slice"] < m["seconds_per_patient"]
        assert m["network_evaluations_per_slice"] == (2 if m["objective"] == "diffusion" else 1)
    md = (tmp_path / "t2" / "table2.md").read_text()
    assert "| MD-Dose |" in md and "s / patient" in md and "CPU" in md
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "t2" / "timing").glob("*.json")}
    assert len(stamps) == 6
    run_experiment("table2", cache, data, tmp_path / "t2", base=base, steps=2, device="cpu", progress=False,
                   time_patients=1)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # another step count times again
    result = run_experiment("table2", cache, data, tmp_path / "t2", base=base, steps=1, device="cpu",
                            progress=False, time_patients=1)
    assert all(m["steps"] == 1 for m in result["methods"].values())
    assert all(stamps[p] != p.stat().st_mtime_ns for p in stamps)


@pytest.mark.slow
def test_3d_baselines_in_tables_1_and_2(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    kw = dict(base=micro_config(val_patients=0), steps=2, device="cpu", progress=False, baselines_3d=True,
              patch_3d=(32, 32, 16))
    result = run_experiment("table1", cache, data, tmp_path / "t1", budget_steps=3,
                            only=["HD-UNet-like-3D", "C3D-like-3D"], **kw)
    assert list(result["methods"]) == ["C3D-like-3D", "HD-UNet-like-3D", "MD-Dose"]  # the reference row always runs
    assert result["methods"]["C3D-like-3D"]["model"]["dims"] == 3 and result["scores"]["HD-UNet-like-3D"]
    assert "cascade U-Net (3D, 32×32×16 patches)" in (tmp_path / "t1" / "table1.md").read_text()
    timing = run_experiment("table2", cache, data, tmp_path / "t2", time_patients=1, **kw)
    m = timing["methods"]["C3D-like-3D"]
    assert m["dims"] == 3 and m["seconds_per_slice"] == pytest.approx(m["seconds_per_patient"] / m["slices_per_patient"])
    assert "3D rows" in (tmp_path / "t2" / "table2.md").read_text()


def test_only_names_rows_of_the_table() -> None:
    rows = table_rows("table1", micro_config())
    assert list(select_rows("table1", rows, ["HD-UNet-like"])) == ["HD-UNet-like", "MD-Dose"]
    assert list(select_rows("table1", rows, ["DoseDiff-like"])) == ["DoseDiff-like", "MD-Dose"]
    assert select_rows("table1", rows, None) == rows
    with pytest.raises(MddoseError, match="table1 has no row 'hd-unet': choose from C3D-like, HD-UNet-like"):
        select_rows("table1", rows, ["hd-unet"])


def test_bad_sampler_is_refused_before_training(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    with pytest.raises(MddoseError, match="unknown sampler"):
        run_experiment("table3", cache, data, tmp_path / "exp", budget_steps=2, base=micro_config(val_patients=0),
                       sampler="euler", device="cpu", progress=False)
    assert not (tmp_path / "exp" / "runs").exists()


def test_one_table_per_folder(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    kw = dict(base=micro_config(val_patients=0), steps=2, device="cpu", progress=False, time_patients=1)
    run_experiment("table2", cache, data, tmp_path / "exp", **kw)
    with pytest.raises(MddoseError, match="holds the table2 experiment"):
        run_experiment("table3", cache, data, tmp_path / "exp", budget_minutes=0.02, **kw)


@pytest.mark.slow
def test_cli_table2_and_train_a_baseline(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(micro_config(val_patients=0).to_dict()))
    cli = [sys.executable, "-m", "mddose.cli"]
    proc = subprocess.run([*cli, "experiment", "table2", str(cache), str(data), str(tmp_path / "t2"), "--config",
                           str(cfg), "--steps", "1", "--time-patients", "1", "--device", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "MD-Dose:" in proc.stdout and "s per patient" in proc.stdout and (tmp_path / "t2" / "table2.md").is_file()
    proc = subprocess.run([*cli, "train", str(cache), str(tmp_path / "run"), "--config", str(cfg), "--method",
                           "hd-unet", "--max-steps", "2", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["arch"] == "dense"
    proc = subprocess.run([*cli, "train", str(cache), str(tmp_path / "run"), "--resume", "--decay-steps", "7",
                           "--max-steps", "3", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["decay_steps"] == 7
    proc = subprocess.run([*cli, "train", str(cache), str(tmp_path / "bad"), "--method", "unet"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: unknown method 'unet': choose md-dose, diffdp, dosediff, sp-diffdose, c3d, hd-unet, c3d-3d, "
        "hd-unet-3d")


def test_step_budget_and_budget_mismatch(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=3)
    kw = dict(base=micro_config(val_patients=0), steps=2, device="cpu", progress=False)
    result = run_experiment("table3", cache, data, tmp_path / "exp", budget_steps=3, **kw)
    assert {m["steps"] for m in result["methods"].values()} == {3} and result["budget_steps"] == 3
    assert "3 training steps each" in (tmp_path / "exp" / "table3.md").read_text()
    with pytest.raises(MddoseError, match="trained with budget"):
        run_experiment("table3", cache, data, tmp_path / "exp", budget_minutes=0.02, **kw)
    kw["base"] = micro_config(val_patients=0, lr=1e-4)
    with pytest.raises(MddoseError, match="another configuration"):
        run_experiment("table3", cache, data, tmp_path / "exp", budget_steps=3, **kw)


def test_input_levers_stack_on_the_beam_prior() -> None:
    """The inputs table: every lever after the prior is measured on top of it, against it; the first layer follows."""
    base = micro_config()
    rows = table_rows("inputs", base)
    assert reference_row("inputs") == "beam-prior" and list(rows)[:2] == ["none", "beam-prior"]
    assert not rows["none"].data.beam_prior and all(r.data.beam_prior for n, r in rows.items() if n != "none")
    prior = rows["beam-prior"]
    assert prior.model.in_channels == rows["none"].model.in_channels and prior.model.cond_channels == (
        rows["none"].model.cond_channels + 1)
    context = rows["beam-prior+target-context"]
    assert context.data.target_context == (-8, -4, 4, 8) and context.model.cond_channels == prior.model.cond_channels + 4
    distance = rows["beam-prior+distance"].data
    assert (distance.structure_encoding, distance.target_encoding) == ("distance", "per_level")
    decay = rows["beam-prior+decay-groups"]
    assert decay.data == prior.data and decay.model == prior.model and decay.train.weight_decay_on == "matrices"
    assert prior.train == base.train and base.train.weight_decay_on == "all"
    assert "), beam prior, weight decay on the matrices only, " in describe(decay)
    assert "target maps at z -8, -4, +4, +8, beam prior" in describe(context)
    assert list(select_rows("inputs", rows, ["none"])) == ["none", "beam-prior"]
