"""The 3D refinement stage: it starts as its first stage, trains on that stage's doses, and corrects only the
model it was trained for, within the possible-dose mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mddose.data.openkbp import list_patients, read_dose_csv, read_patient
from mddose.errors import MddoseError
from mddose.inference.predict import predict
from mddose.models.refiner import Refiner, RefinerConfig
from mddose.runs.layout import FIRST_STAGE, REFINER_CONFIG, REFINER_WEIGHTS
from mddose.training.loop import train
from mddose.training.refine import RefineConfig, train_refiner
from tests.helpers import micro_config, trained_run

SMALL = RefineConfig(model=RefinerConfig(widths=(4, 8), patch=(16, 16, 16)), steps=3, batch_size=1,
                     crops_per_patient=1)


@pytest.fixture(scope="module")
def refined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A micro run on 2 phantoms and a refiner trained 3 steps for it: (root, run, data)."""
    root = tmp_path_factory.mktemp("refine")
    run, data = trained_run(root, patients=2, steps=2)
    train_refiner(run, root / "cache", root / "refiner", SMALL, device="cpu", progress=False)
    return root, run, data


def test_an_untrained_refiner_returns_its_first_stage() -> None:
    refiner = Refiner(RefinerConfig(cond_channels=3, widths=(4, 8), patch=(8, 8, 8)))
    x = torch.rand(2, 4, 8, 8, 8)
    assert torch.equal(refiner(x), x[:, -1:])
    with pytest.raises(ValueError, match="multiple of 2"):
        RefinerConfig(widths=(4, 8), patch=(8, 8, 9))


def test_refine_trains_and_predicts_in_the_mask(refined: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, run, data = refined
    info = json.loads((root / "refiner" / REFINER_CONFIG).read_text())
    assert info["steps_done"] == 3 and info["patients"] == 2 and info["model"]["cond_channels"] == 9
    assert sorted(p.name for p in (root / "refiner" / FIRST_STAGE).iterdir()) == ["pt_1.npz", "pt_2.npz",
                                                                                 "source.json"]
    assert (root / "refiner" / REFINER_WEIGHTS).is_file()
    summary = predict(run, data, tmp_path / "pred", device="cpu", nifti=False, progress=False,
                      refiner=root / "refiner")
    assert summary["refiner"] == str(root / "refiner") and summary["smooth_mm"] == 0.0
    for folder in list_patients(data):
        patient = read_patient(folder, read_dose=False)
        dose = read_dose_csv(tmp_path / "pred" / f"{patient.patient_id}.csv", patient.shape)
        assert np.isfinite(dose).all() and dose.min() >= 0 and not dose[~patient.possible_dose_mask].any()
        assert dose.any()


def test_a_refiner_corrects_only_its_own_model(refined: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, run, data = refined
    other = tmp_path / "other"
    train(root / "cache", other, micro_config(val_patients=0, seed=1), max_steps=2, progress=False)
    with pytest.raises(MddoseError, match="trained on the doses of other weights"):
        predict(other, data, tmp_path / "pred", device="cpu", nifti=False, progress=False, refiner=root / "refiner")
    assert not (tmp_path / "pred").exists()
    with pytest.raises(MddoseError, match="first-stage doses of other weights or sampling"):
        train_refiner(other, root / "cache", root / "refiner", SMALL, device="cpu", progress=False)
    with pytest.raises(MddoseError, match="not a refiner folder"):
        predict(run, data, tmp_path / "pred", device="cpu", nifti=False, progress=False, refiner=data)
