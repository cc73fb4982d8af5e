"""Folder-level evaluation and ``mddose evaluate`` end to end on three tiny synthetic patients."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mddose.cli import app, main
from mddose.data.openkbp import (
    read_sparse_csv,
    write_dose_csv,
    write_patient,
    write_sparse_csv,
)
from mddose.data.patient import OPENKBP_SHAPE, Patient
from mddose.errors import MddoseError
from mddose.evaluate.folders import evaluate

IDS = ("pt_1", "pt_2", "pt_3")


def synthetic_patient(patient_id: str, seed: int) -> Patient:
    """A 128³ OpenKBP-grid patient with a small body block, two PTVs, a cord and an empty Larynx contour."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in OPENKBP_SHAPE), indexing="ij")
    body = (abs(x - 64) < 20) & (abs(y - 64) < 22) & (abs(z - 60) < 8)
    r2 = (x - 62.0) ** 2 + (y - 64.0 - seed) ** 2 + ((z - 60.0) * 0.6) ** 2
    structures = {
        "PTV70": r2 < 25, "PTV56": (r2 >= 25) & (r2 < 60) & body,
        "SpinalCord": (abs(x - 78) < 2) & (abs(y - 64) < 2) & body,
        "Larynx": np.zeros(OPENKBP_SHAPE, dtype=bool),  # contoured but empty: must be skipped
    }
    dose = np.where(body, 72.0 * np.exp(-r2 / 400.0) + rng.uniform(0, 0.5, OPENKBP_SHAPE), 0.0)
    ct = np.where(body, 40.0, -1000.0)
    return Patient(patient_id, ct, body, (3.906, 3.906, 2.5), structures, dose)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """reference split, method A (pt_3 missing, one unmatched file), method B (pt_N/dose.csv.gz layout)."""
    root = tmp_path_factory.mktemp("eval")
    patients = [synthetic_patient(pid, i) for i, pid in enumerate(IDS)]
    for p in patients:
        write_patient(p, root / "ref" / p.patient_id)
    for p in patients[:2]:
        write_dose_csv(root / "A" / f"{p.patient_id}.csv", p.dose * 1.03, p.possible_dose_mask)
    write_dose_csv(root / "A" / "pt_99.csv", patients[0].dose, patients[0].possible_dose_mask)
    for p in patients:
        shifted = np.roll(p.dose, 1, axis=0)
        write_dose_csv(root / "B" / p.patient_id / "dose.csv.gz", shifted, p.possible_dose_mask)
    return {"root": root, "ref": root / "ref", "A": root / "A", "B": root / "B"}


@pytest.mark.slow
def test_cli_end_to_end(folders: dict[str, Path]) -> None:
    out = folders["root"] / "out"
    args = ["evaluate", str(folders["ref"]), str(folders["A"]), str(folders["B"]), "--out", str(out),
            "--name", "A", "--name", "B", "--against", "B", "--figures", "--figure-patient", "pt_1",
            "--no-gamma"]  # the real gamma has its own test (test_clinical); here it would take most of a minute
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "MISSING 1: pt_3" in result.output

    summary = json.loads((out / "summary.json").read_text())
    a, b = summary["methods"]["A"], summary["methods"]["B"]
    assert summary["n_reference_patients"] == 3 and summary["against"] == "B"
    assert (a["n_patients_scored"], a["n_missing"], a["missing"]) == (2, 1, ["pt_3"])
    assert a["unmatched"] == ["pt_99.csv"] and b["n_patients_scored"] == 3
    assert summary["gamma"]["computed"] is False and "--no-gamma" in summary["gamma"]["reason"]
    assert b["ttest"] is None and set(a["ttest"]) >= {"openkbp_dose_score", "hi_abs_diff"}

    # The dose score equals the formula applied to the files' own contents.
    expected = []
    for pid in IDS[:2]:
        ref = read_sparse_csv(folders["ref"] / pid / "dose.csv")
        mask = read_sparse_csv(folders["ref"] / pid / "possible_dose_mask.csv", mask=True)
        pred = read_sparse_csv(folders["A"] / f"{pid}.csv")
        expected.append(np.abs(ref - pred).sum() / mask.sum())
    assert a["openkbp"]["dose_score"] == pytest.approx(np.mean(expected), abs=1e-12)

    per_patient = (out / "per_patient.csv").read_text().splitlines()
    assert len(per_patient) == 1 + 6 and any(row.startswith("A,pt_3,missing,") for row in per_patient)
    per_roi = (out / "per_roi.csv").read_text()
    assert "Larynx" not in per_roi and ",PTV70,target,True,openkbp,D_95," in per_roi
    table = (out / "comparison.md").read_text()
    assert "| A |" in table and "| B |" in table and "pt_3" in table
    pngs = sorted(p.name for p in (out / "figures").iterdir())
    assert pngs == ["pt_1_comparison.png", "pt_1_dose.png", "pt_1_dvh.png"]
    assert summary["files"]["figures"] == [f"figures/{n}" for n in ("pt_1_dose.png", "pt_1_comparison.png",
                                                                     "pt_1_dvh.png")]
    assert all((out / "figures" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)


def test_gamma_is_scored_per_patient_when_available(folders: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring from evaluate to the gamma pass rate (pymedphys itself: test_clinical's real-gamma test)."""
    import mddose.evaluate.folders as folders_module
    import mddose.evaluate.score as score_module
    from mddose.evaluate.clinical import GammaResult

    seen: list[tuple[int, ...]] = []

    def stand_in(reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...]) -> GammaResult:
        seen.append(reference.shape)
        return GammaResult(90.0 + len(seen))

    monkeypatch.setattr(folders_module, "gamma_unavailable_reason", lambda: None)
    monkeypatch.setattr(score_module, "gamma_pass_rate", stand_in)
    summary = evaluate(folders["ref"], [folders["B"]], tmp_path / "out", progress=False)
    assert summary["gamma"] == {"computed": True, "criteria": summary["gamma"]["criteria"], "reason": None}
    assert seen == [OPENKBP_SHAPE] * 3  # once per scored patient, on the patient's grid
    assert summary["methods"]["B"]["gamma_pass_rate"] == pytest.approx(92.0)


def test_reference_against_itself_scores_zero(folders: dict[str, Path], tmp_path: Path) -> None:
    summary = evaluate(folders["ref"], [folders["ref"]], tmp_path, progress=False)
    method = summary["methods"]["ref"]
    assert method["n_patients_scored"] == 3 and method["n_missing"] == 0
    assert method["openkbp"] == {"dose_score": 0.0, "dvh_score": 0.0}
    assert method["paper"] == {"dose_score": 0.0, "dvh_score": 0.0, "hi_abs_diff": 0.0}


def test_wrong_grid_is_an_error(folders: dict[str, Path], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    ref = read_sparse_csv(folders["ref"] / "pt_1" / "dose.csv")
    outside.mkdir()
    (outside / "pt_1.csv").write_text(f",data\n5,1.0\n{128**3 + 7},2.0\n")
    with pytest.raises(MddoseError, match=r"pt_1\.csv.*outside the 128×128×128 grid"):
        evaluate(folders["ref"], [outside], tmp_path / "out1", progress=False)
    small = tmp_path / "small"  # a 64³ prediction's flat indices fall inside the 128³ range, in the wrong place
    write_sparse_csv(small / "pt_1.csv", ref[32:96, 32:96, 32:96])
    with pytest.raises(MddoseError, match=r"pt_1\.csv.*not on this patient's grid"):
        evaluate(folders["ref"], [small], tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2" / "summary.json").exists()


def test_folder_without_any_prediction(folders: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MddoseError, match="no prediction for any of the 3 reference patients"):
        evaluate(folders["ref"], [empty], tmp_path / "out", progress=False)
    with pytest.raises(MddoseError, match="names given"):
        evaluate(folders["ref"], [folders["A"]], tmp_path / "out", names=["x", "y"], progress=False)


def test_cli_prints_one_error_line(folders: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    missing = tmp_path / "nope"
    monkeypatch.setattr(sys, "argv", ["mddose", "evaluate", str(folders["ref"]), str(missing), "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(missing) in err and len(err.splitlines()) == 1
