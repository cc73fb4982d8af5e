"""``mddose qa`` end to end: outputs, the DICOM route, bad input, and the CLI with a run trained here."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mddose.data.openkbp import read_dose_csv, write_patient, write_sparse_csv
from mddose.data.patient import Patient
from mddose.data.phantom import make_phantom
from mddose.errors import MddoseError
from mddose.io.dicom_write import export_patient_dicom
from mddose.io.geometry import ModelGrid
from mddose.qa.run import run_qa
from tests.helpers import trained_run
from tests.qa.helpers import PhysicsPredictor, raised_oar, stated_table

GRID64 = ModelGrid((64, 64, 64), (7.812, 7.812, 5.0))  # the 64-phantom's own grid


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 64³ phantom with a plan whose left parotid is 30 % too hot, as an OpenKBP folder and as DICOM."""
    root = tmp_path_factory.mktemp("qa")
    phantom = make_phantom(1, 64, "pt_2")
    plan = dataclasses.replace(phantom, dose=raised_oar(phantom, phantom.dose, "LeftParotid"))
    table = stated_table().save(root / "errors.json")
    weights = root / "weights.safetensors"
    weights.write_bytes(b"stand-in")
    return {"openkbp": write_patient(plan, root / "openkbp" / "pt_2"),
            "dicom": export_patient_dicom(plan, root / "dicom" / "pt_2"),
            "other_frame": export_patient_dicom(plan, root / "other" / "pt_2"), "errors": table,
            "weights": weights, "root": root}


def _qa(case: dict[str, Path], patient_dir: Path, out: Path, plan: Path | None = None, **kw) -> dict:
    return run_qa(PhysicsPredictor(case["weights"]), patient_dir, plan, out, errors=case["errors"], gamma=False,
                  grid=GRID64, **kw)


def test_outputs_and_flags_from_openkbp_folder(case: dict[str, Path], tmp_path: Path) -> None:
    summary = _qa(case, case["openkbp"], tmp_path / "out")
    assert summary["flagged"] == ["LeftParotid"]
    out = tmp_path / "out"
    for name in ("qa.json", "qa.csv", "qa.html", "figures/dvh.png", "prediction/pt_2.csv", "prediction/pt_2_std.csv"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "qa.json").read_text())
    assert saved["format"] == "mddose-qa/1" and saved["flagged"] == ["LeftParotid"] and saved["seconds"] >= 0
    assert {"roi", "metric", "plan", "achievable", "difference", "tolerance", "flag"} <= set(saved["rows"][0])
    csv_lines = (out / "qa.csv").read_text().splitlines()
    assert len(csv_lines) == len(saved["rows"]) + 1 and csv_lines[0].startswith("roi,kind,metric")
    assert list(out.glob("figures/slice_*.png"))
    html = (out / "qa.html").read_text()
    assert "LeftParotid" in html and 'class="flagged"' in html and "data:image/png;base64" in html


def test_dicom_folder_gives_the_same_flags(case: dict[str, Path], tmp_path: Path) -> None:
    from_csv = _qa(case, case["openkbp"], tmp_path / "a")
    from_dicom = _qa(case, case["dicom"], tmp_path / "b")  # imported on the fly, plan = its RTDOSE
    assert from_dicom["flagged"] == from_csv["flagged"] == ["LeftParotid"]
    assert (tmp_path / "b" / "patient" / "pt_2" / "dicom_geometry.json").is_file()
    rows_a = {(r["roi"], r["metric"]): r for r in from_csv["rows"]}
    rows_b = {(r["roi"], r["metric"]): r for r in from_dicom["rows"]}
    assert rows_a.keys() == rows_b.keys()
    assert [k for k in rows_a if rows_a[k]["flag"]] == [k for k in rows_b if rows_b[k]["flag"]]
    # an explicit RTDOSE plan on the imported folder gives the same answer
    explicit = _qa(case, tmp_path / "b" / "patient" / "pt_2", tmp_path / "c", plan=case["dicom"] / "RD.dcm")
    assert explicit["flagged"] == ["LeftParotid"]


def test_bad_input_is_one_clear_error_and_nothing_written(case: dict[str, Path], tmp_path: Path) -> None:
    imported = tmp_path / "ok"
    _qa(case, case["dicom"], imported)
    patient_dir = imported / "patient" / "pt_2"
    big = tmp_path / "plan128.csv"
    write_sparse_csv(big, np.pad(read_dose_csv(case["openkbp"] / "dose.csv", (64, 64, 64)), ((0, 64),) * 3))
    small_on_big = tmp_path / "plan_shifted.csv"
    write_sparse_csv(small_on_big, np.roll(read_dose_csv(case["openkbp"] / "dose.csv", (64, 64, 64)), 20, axis=0))
    cases = [
        (case["openkbp"], big, "outside the 64×64×64 grid"),
        (case["openkbp"], small_on_big, "outside the patient's possible-dose mask"),
        (patient_dir, case["other_frame"] / "RD.dcm", "Frame of Reference"),
        (case["openkbp"], case["dicom"] / "RD.dcm", "needs the patient's DICOM folder"),
        (case["openkbp"], tmp_path / "missing.csv", "does not exist"),
    ]
    for k, (patient, plan, message) in enumerate(cases):
        with pytest.raises(MddoseError, match=message):
            _qa(case, patient, tmp_path / f"bad{k}", plan=plan)
        assert not (tmp_path / f"bad{k}").exists()
    no_targets = tmp_path / "no_targets" / "pt_2"
    p = make_phantom(1, 64, "pt_2")
    write_patient(Patient(p.patient_id, p.ct, p.possible_dose_mask, p.spacing,
                          {k: v for k, v in p.structures.items() if not k.startswith("PTV")}, p.dose), no_targets)
    with pytest.raises(MddoseError, match="no target ROI"):
        _qa(case, no_targets, tmp_path / "bad_t")
    table = json.loads(case["errors"].read_text())
    table["rois"] = table["rois"][:-1]
    (tmp_path / "other_rois.json").write_text(json.dumps(table))
    with pytest.raises(MddoseError, match="error table is for ROIs"):
        run_qa(PhysicsPredictor(case["weights"]), case["openkbp"], None, tmp_path / "bad_r",
               errors=tmp_path / "other_rois.json")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MddoseError, match="not a folder"):
        _qa(case, case["openkbp"], tmp_path / "a_file")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_run(tmp_path_factory.mktemp("qa_run"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mddose.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_calibrate_then_qa(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    fast = ["--samples", "2", "--steps", "2", "--device", "cpu"]
    proc = _cli("qa-calibrate", str(run), str(data), *fast)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((run / "checkpoints" / "last" / "qa_errors.json").read_text())
    assert table["patients"] == 3 and table["samples"] == 2 and table["metrics"]
    proc = _cli("qa", str(run), str(data / "pt_1"), "--out", str(tmp_path / "qa"), "--no-gamma", *fast)
    assert proc.returncode == 0, proc.stderr
    assert "ROI(s) flagged" in proc.stdout and "qa.html" in proc.stdout
    summary = json.loads((tmp_path / "qa" / "qa.json").read_text())
    assert summary["model"]["samples"] == 2 and summary["warnings"] == []
    std = read_dose_csv(tmp_path / "qa" / "prediction" / "pt_1_std.csv", (64, 64, 64))
    assert np.isfinite(std).all() and std.max() > 0
    hot = tmp_path / "hot.csv"  # 5 × the plan: every OAR far above anything the model can predict (≤ 80 Gy)
    write_sparse_csv(hot, 5 * read_dose_csv(data / "pt_1" / "dose.csv", (64, 64, 64)))
    proc = _cli("qa", str(run), str(data / "pt_1"), str(hot), "--out", str(tmp_path / "hot"), "--no-gamma",
                "--fail-on-flag", *fast)
    assert proc.returncode == 3, proc.stderr
    assert "FLAG" in proc.stdout
    proc = _cli("qa", str(run), "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
