"""``mddose demo`` end to end at a tiny budget, the budget plan, and the output folder rules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mddose.atomic import write_json
from mddose.data.phantom import write_phantoms
from mddose.errors import MddoseError
from mddose.experiments.demo import (
    DemoPlan,
    default_patients,
    demo_config,
    plan_budget,
    run_demo,
)
from mddose.ownership import claim


@pytest.mark.slow
def test_demo_end_to_end_at_a_tiny_budget(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "mddose.cli", "demo", str(out), "--minutes", "0.5", "--train-patients", "2",
         "--test-patients", "1", "--device", "cpu"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "demo.json").read_text())
    assert info["status"] == "done"
    # the CLI ends with the scores of both methods and the report's path
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == f"report: {out / 'report' / 'report.html'}"
    for name in ("MD-Dose", "Trivial baseline"):
        assert any(line.strip().startswith(name) and "OpenKBP dose score" in line for line in lines), name
        assert all(math.isfinite(v) for v in info["scores"][name].values())
    # every stage ran and left its files
    assert set(info["stages"]) == {"data", "plan", "train", "predict", "evaluate", "report"}
    assert info["train"]["steps"] >= 1
    run_cfg = json.loads((out / "run" / "config.json").read_text())
    assert run_cfg["train"]["decay_steps"] == info["train"]["planned_steps"]  # the cosine ends with the time
    assert [p.name for p in sorted((out / "data" / "test").glob("pt_*"))] == ["pt_1"]
    assert (out / "predictions" / "mddose" / "pt_1.csv").is_file()
    assert (out / "predictions" / "trivial" / "pt_1.csv").is_file()
    history = json.loads((out / "run" / "history.json").read_text())["history"]
    assert (out / "run" / "loss.png").is_file() == bool(history)  # a curve once a step was logged
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert list(summary["methods"]) == ["MD-Dose", "Trivial baseline"]
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "mddose demo report" in page and "Run time" in page and "Training" in page
    figures = {"pt_1_slices.png", "pt_1_dvh.png"} | ({"loss.png"} if history else set())
    assert {p.name for p in (out / "report" / "figures").iterdir()} == figures
    # the plan's shares fit the budget
    plan, stages = info["plan"], info["stages"]
    planned = stages["data"] + stages["plan"] + sum(plan[k] for k in ("train_s", "predict_s", "finish_s", "margin_s"))
    # the plan stage's own measuring counts as spent; training gets at least 3 s even when the budget is spent
    assert planned <= plan["budget_s"] + 1.0 or plan["train_s"] == 3.0


def test_plan_splits_the_budget_and_shrinks_sampling_to_fit() -> None:
    cfg = demo_config()
    roomy = plan_budget(DemoPlan(budget_s=600, train_patients=16, test_patients=3, test_slices=200), cfg,
                        torch.device("cpu"), elapsed_s=20)
    tight = plan_budget(DemoPlan(budget_s=40, train_patients=2, test_patients=1, test_slices=200), cfg,
                        torch.device("cpu"), elapsed_s=10)
    for plan, elapsed in ((roomy, 20), (tight, 10)):
        assert plan.predict_threads == 1 and plan.train_threads >= 1
        assert plan.seconds_per_image > 0 and plan.seconds_per_step > 0
        assert elapsed + plan.train_s + plan.predict_s + plan.finish_s + plan.margin_s <= plan.budget_s + 3.0
    assert (tight.steps * tight.samples) <= (roomy.steps * roomy.samples)
    assert roomy.train_s > roomy.predict_s


def test_default_patients() -> None:
    assert default_patients(5) == (16, 3)
    assert default_patients(0.5) == (2, 1)


def test_too_short_a_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MddoseError, match="at least 0.5"):
        run_demo(tmp_path / "demo", minutes=0.2, progress=False)
    assert not (tmp_path / "demo").exists()


def test_out_dir_rules(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(MddoseError, match="mddose demo did not make .thesis.tex"):
        run_demo(foreign, minutes=0.5, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    earlier = tmp_path / "demo"
    with claim(earlier, "mddose demo"):  # an earlier demo: its own file, and a stage's folder inside
        write_json(earlier / "demo.json", {})
        write_phantoms(earlier / "data" / "test", n_patients=1, seed=0, grid=64, progress=False)
    with pytest.raises(MddoseError, match="--overwrite"):
        run_demo(earlier, minutes=0.5, progress=False)
    (earlier / "notes.txt").write_text("kept")
    with pytest.raises(MddoseError, match="notes.txt"):
        run_demo(earlier, minutes=0.5, progress=False, overwrite=True)
    assert (earlier / "notes.txt").read_text() == "kept" and (earlier / "data" / "test" / "pt_1").is_dir()
    (earlier / "notes.txt").unlink()
    with claim(earlier, "mddose demo", overwrite=True):  # what --overwrite does first: only its own files go
        assert sorted(p.name for p in earlier.iterdir()) == [".mddose-lock", ".mddose-owner"]
