"""The HTML report: from an evaluation folder (with the run it leads to), from a run folder, and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mddose.atomic import write_json
from mddose.data.openkbp import list_patients, read_patient, write_dose_csv
from mddose.data.phantom import write_phantoms
from mddose.errors import MddoseError
from mddose.evaluate.folders import evaluate
from mddose.inference.trivial import predict_trivial
from mddose.runs.run_config import RunConfig, TrainConfig
from mddose.viz.report import build_report
from mddose.viz.report_data import find_sources, pick_patients
from mddose.viz.report_figures import patient_figure, report_slices
from tests.viz.test_figures import small_patient


def _run_folder(path: Path) -> Path:
    """A run folder as ``mddose train`` leaves it (config and history; no weights needed for a report)."""
    write_json(path / "config.json", RunConfig(train=TrainConfig(val_patients=1)).to_dict())
    history = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(10, 110, 10)]
    write_json(path / "history.json", {"history": history, "validation": [{"step": 100, "dose_score": 3.2}],
                                       "best": {"step": 100, "dose_score": 3.2}, "seconds": 95.0})
    return path


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 128³ phantoms, a 'model' (reference × 0.9 with an uncertainty) and the trivial baseline, evaluated."""
    root = tmp_path_factory.mktemp("report")
    ref = root / "reference"
    write_phantoms(ref, n_patients=2, seed=3, grid=128, progress=False)
    model = root / "model"
    for folder in list_patients(ref):
        p = read_patient(folder, read_ct=False)
        write_dose_csv(model / f"{p.patient_id}.csv", p.dose * 0.9, p.possible_dose_mask)
        write_dose_csv(model / "uncertainty" / f"{p.patient_id}.csv", p.dose * 0.05, p.possible_dose_mask)
    run = _run_folder(root / "run")
    write_json(model / "prediction.json", {"checkpoint": str(run / "checkpoints" / "best"), "sampler": "dpm++",
                                           "steps": 8, "samples": 4, "device": "cpu",
                                           "mean_seconds_per_patient": 2.5})
    predict_trivial(ref, root / "trivial", progress=False)
    evaluate(ref, [model, root / "trivial"], root / "eval", names=["Model", "Trivial"], gamma=False,
             progress=False)
    return root / "eval"


def test_report_from_an_evaluation(evaluation: Path) -> None:
    path = build_report(evaluation, progress=False)
    assert path == evaluation / "report" / "report.html"
    page = path.read_text(encoding="utf-8")
    figures = sorted(p.name for p in (path.parent / "figures").iterdir())
    assert figures == ["loss.png", "pt_1_dvh.png", "pt_1_slices.png", "pt_2_dvh.png", "pt_2_slices.png"]
    # self-contained: every figure embedded, nothing fetched
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r'(src|href)="(https?:|//)', page)
    for text in ("Model", "Trivial", "OpenKBP dose score", "Per-ROI errors", "PTV70", "uncertainty",
                 "reference solid", "Training", "Metric definitions", "dpm++"):
        assert text in page, text
    summary = json.loads((evaluation / "summary.json").read_text())
    model_score = summary["methods"]["Model"]["openkbp"]["dose_score"]
    assert f"{model_score:.3f}" in page  # the table quotes the evaluation's numbers


def test_figures_default_to_the_reference_method(evaluation: Path, tmp_path: Path) -> None:
    from mddose.viz.report_data import find_sources

    assert find_sources(evaluation).primary == "Model"  # the t-tests' reference: the first method by default
    copy = tmp_path / "eval"
    shutil.copytree(evaluation, copy)
    summary = json.loads((copy / "summary.json").read_text())
    write_json(copy / "summary.json", {**summary, "against": "Trivial"})  # as `mddose evaluate --against Trivial`
    assert find_sources(copy).primary == "Trivial"
    assert find_sources(copy, method="Model").primary == "Model"


def test_patient_figure_panels_and_slices() -> None:
    patient = small_patient()
    ref = patient.dose
    slices = report_slices(patient, ref)
    assert slices == sorted(set(slices)) and 8 in slices and len(slices) == 3  # through PTV70's centroid
    with_unc = patient_figure(patient, ref, ref * 0.9, ref * 0.05, method="M")
    titles = [ax.get_title() for ax in with_unc.axes if ax.get_title()]
    assert titles == ["Reference", "M", "M − reference", "Uncertainty (SD of samples)"]
    assert len(with_unc.axes) == 3 * 4 + 3  # panels + dose, error and SD colour bars
    without = patient_figure(patient, ref, ref * 0.9, None, slices=[8])
    assert len(without.axes) == 1 * 3 + 2


def test_report_from_a_run_folder(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run")
    path = build_report(run, out_dir=tmp_path / "out", progress=False)
    page = path.read_text(encoding="utf-8")
    assert [p.name for p in (path.parent / "figures").iterdir()] == ["loss.png"]
    assert "Training" in page and "3.200 Gy at step 100" in page and "1.6 min" in page
    assert 'id="patients"' not in page and 'id="scores"' not in page


def test_report_from_a_baseline_run_folder(tmp_path: Path) -> None:
    from mddose.runs.run_config import method_config

    run = _run_folder(tmp_path / "run")
    write_json(run / "config.json", method_config("hd-unet", RunConfig(train=TrainConfig(val_patients=1))).to_dict())
    page = build_report(run, out_dir=tmp_path / "out", progress=False).read_text(encoding="utf-8")
    assert "dense U-Net (HD-UNet-like), deterministic, mse loss" in page and "48–96–192–384" in page
    assert "Diffusion" not in page and "denoiser" not in page


def test_pick_patients_spreads_from_best_to_worst() -> None:
    rows = [{"method": "A", "patient_id": f"pt_{i}", "status": "scored", "openkbp_dose_score": str(10 - i)}
            for i in range(1, 10)]
    rows.append({"method": "A", "patient_id": "pt_0", "status": "missing", "openkbp_dose_score": ""})
    picked = pick_patients(rows, "A", 3)
    assert [pid for pid, _ in picked] == ["pt_9", "pt_5", "pt_1"]
    assert [why.split()[0] for _, why in picked] == ["best", "median", "worst"]
    assert [pid for pid, _ in pick_patients(rows[:2], "A", 3)] == ["pt_1", "pt_2"]


def test_neither_run_nor_evaluation_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MddoseError, match="neither an evaluation") as err:
        find_sources(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    done = subprocess.run([sys.executable, "-m", "mddose.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path}: neither an evaluation (summary.json), a "
                                                "training run (config.json + history.json) nor a demo folder "
                                                "(demo.json)"]
    assert not (tmp_path / "report").exists()


def test_wrong_summary_schema_and_unknown_method(tmp_path: Path, evaluation: Path) -> None:
    write_json(tmp_path / "summary.json", {"schema": "something/else", "methods": {}})
    with pytest.raises(MddoseError, match="schema"):
        build_report(tmp_path, progress=False)
    with pytest.raises(MddoseError, match="no method 'X'"):
        build_report(evaluation, out_dir=tmp_path / "out", method="X", progress=False)
