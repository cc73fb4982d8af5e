"""Ablation tables end to end at a tiny budget: every row trains, predicts and is scored; re-running resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mddose.errors import MddoseError
from mddose.experiment import run_experiment, table_rows
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


@pytest.mark.parametrize("table", ["table3", "table4"])
def test_table_end_to_end_and_resume(tmp_path: Path, table: str) -> None:
    data, cache = phantom_cache(tmp_path, patients=3)
    base = micro_config(val_patients=0)
    result = run_experiment(table, cache, data, tmp_path / "exp", budget_minutes=0.02, base=base, steps=2,
                            device="cpu", progress=False)
    md = (tmp_path / "exp" / f"{table}.md").read_text()
    assert "0.02 min of training each" in md and "| mamba |" in md
    assert set(result["scores"]) == set(table_rows(table, base))
    assert (tmp_path / "exp" / "eval" / "per_patient.csv").is_file()
    summary = json.loads((tmp_path / "exp" / "eval" / "summary.json").read_text())
    assert summary["against"] == "mamba"
    # re-running finds every method done: nothing is trained or predicted again
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp" / "preds").glob("*/prediction.json")}
    run_experiment(table, cache, data, tmp_path / "exp", budget_minutes=0.02, base=base, steps=2, device="cpu",
                   progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


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
