"""``mddose finetune`` end to end on tiny phantoms: from OpenKBP folders and from DICOM, its refusals, its resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mddose.data.openkbp import list_patients, read_patient
from mddose.errors import MddoseError
from mddose.experiments import finetune as finetune_module
from mddose.experiments.finetune import finetune
from mddose.inference.predict import predict
from mddose.inference.predictor import checkpoint_folder
from mddose.io.dicom_write import export_patient_dicom
from mddose.qa.tolerance import ERROR_TABLE
from mddose.training.loop import train
from tests.helpers import trained_run


@pytest.fixture(scope="module")
def start_and_clinic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A micro model trained on 3 phantoms, and a 'clinic' of 5 other phantoms (another seed)."""
    from mddose.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("finetune")
    run, _ = trained_run(root / "start", patients=3, steps=4)
    write_phantoms(root / "clinic", n_patients=5, seed=7, grid=64, progress=False)
    return run, root / "clinic"


def test_finetune_from_openkbp_folders_end_to_end(start_and_clinic: tuple[Path, Path], tmp_path: Path) -> None:
    start, clinic = start_and_clinic
    state = finetune(start, clinic, tmp_path / "ft", minutes=0.05, device="cpu", progress=False)
    assert [Path(p).name for p in state["split"]["heldout"]] == ["pt_4", "pt_5"]  # a fifth, at least 2
    for stage in ("before", "after"):
        assert set(state[stage]) == {"dose_score", "dvh_score"} and state[stage]["dose_score"] > 0
    assert state["trained"]["step"] > 4  # counted on from the start model's 4 steps
    work = tmp_path / "ft" / "finetune"
    assert (work / "report" / "report.html").is_file() and (work / "eval" / "summary.json").is_file()
    assert (checkpoint_folder(tmp_path / "ft") / ERROR_TABLE).is_file()  # qa's tolerances are the clinic's
    assert json.loads((work / "finetune.json").read_text())["after"] == state["after"]
    predict(tmp_path / "ft", work / "heldout", tmp_path / "pred", nifti=False, progress=False)  # a run like any
    assert sorted(p.name for p in (tmp_path / "pred").glob("pt_*.csv")) == ["pt_4.csv", "pt_5.csv"]


@pytest.mark.slow
def test_finetune_from_dicom_folders(start_and_clinic: tuple[Path, Path], tmp_path: Path) -> None:
    start, clinic = start_and_clinic
    for folder in list_patients(clinic):
        export_patient_dicom(read_patient(folder), tmp_path / "dicom" / folder.name)
    state = finetune(start, tmp_path / "dicom", tmp_path / "ft", minutes=0.05, val_patients=2, device="cpu",
                     progress=False)
    imported = tmp_path / "ft" / "finetune" / "patients"
    assert sorted(p.name for p in imported.iterdir()) == [f"pt_{i}" for i in range(1, 6)]
    assert state["after"]["dose_score"] > 0


def test_finetune_refuses_too_few_patients_and_patients_without_dose(
    start_and_clinic: tuple[Path, Path], tmp_path: Path
) -> None:
    start, clinic = start_and_clinic
    few = tmp_path / "few"
    for folder in list_patients(clinic)[:4]:
        shutil.copytree(folder, few / folder.name)
    with pytest.raises(MddoseError, match="needs at least 5 patients with a dose \\(3 to train on, 2 held out\\)"):
        finetune(start, few, tmp_path / "ft", minutes=0.05, device="cpu", progress=False)
    shutil.copytree(list_patients(clinic)[4], few / "pt_5")
    for dose in (few / "pt_2").glob("dose.*"):
        dose.unlink()
    with pytest.raises(MddoseError, match="pt_2: no dose"):
        finetune(start, few, tmp_path / "ft2", minutes=0.05, device="cpu", progress=False)
    shutil.rmtree(few / "pt_2")
    shutil.copytree(list_patients(clinic)[1], few / "pt_2")
    for target in (few / "pt_3").glob("PTV*"):  # ROIs the model cannot take: no target of its own
        target.unlink()
    with pytest.raises(MddoseError, match="pt_3: no target: none of the model's targets PTV56, PTV63, PTV70"):
        finetune(start, few, tmp_path / "ft3", minutes=0.05, device="cpu", progress=False)
    assert not (tmp_path / "ft3").exists()  # refused before anything was written


def test_an_interrupted_finetune_resumes(start_and_clinic: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    start, clinic = start_and_clinic

    def killed(*args, **kwargs):  # trains a few steps, checkpoints, then the process 'dies'
        kwargs.pop("minutes")
        train(*args, max_steps=7, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(start, clinic, tmp_path / "ft", minutes=0.05, device="cpu", progress=False)
    state = json.loads((tmp_path / "ft" / "finetune" / "finetune.json").read_text())
    assert "before" in state and "trained" not in state
    monkeypatch.undo()
    state = finetune(start, clinic, tmp_path / "ft", minutes=0.05, device="cpu", progress=False)
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert state["trained"]["step"] > 7 and history["history"][0]["step"] > 4  # it went on from step 7
