"""A model that ships with its own 3D refiner: export ships it with the weights it was trained for (or adds it to
the weights already shipped), predict uses it unless told not to, and new weights never keep a stale one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.cli_options import refiner_choice
from mddose.errors import MddoseError
from mddose.experiments.shipping import CARD_FILE, LOG_FILE, export_run, training_log
from mddose.inference.predict import predict
from mddose.models.refiner import RefinerConfig
from mddose.runs.layout import OWN_REFINER, REFINER_CONFIG, REFINER_WEIGHTS
from mddose.training.loop import train
from mddose.training.refine import RefineConfig, train_refiner
from tests.helpers import micro_config, phantom_cache

SMALL = RefineConfig(model=RefinerConfig(widths=(4, 8), patch=(16, 16, 16)), steps=3, batch_size=1,
                     crops_per_patient=1)


def _worse_log(target: Path) -> None:
    """Make every logged row score worse than anything, so that the next export ships."""
    (target / LOG_FILE).write_text(json.dumps([{**r, "dose_score": 99.0} for r in training_log(target)]))


def test_a_refiner_ships_with_its_weights_and_goes_with_them(tmp_path: Path) -> None:
    data, cache = phantom_cache(tmp_path, patients=2)
    run, target, refiner = tmp_path / "run", tmp_path / "weights", tmp_path / "refiner"
    train(cache, run, micro_config(val_patients=0), max_steps=2, progress=False)
    assert export_run(run, data, steps=2, target=target)["shipped"]
    train_refiner(target, cache, refiner, SMALL, steps=2, device="cpu", progress=False)
    # the shipped weights gain the refiner trained for them: one row, at their steps, with the refiner's minutes
    _worse_log(target)
    row = export_run(target, data, steps=2, target=target, refiner=refiner)
    seconds = json.loads((refiner / REFINER_CONFIG).read_text())["seconds"]
    assert row["shipped"] and row["refiner"] and row["steps"] == 2 and "new_run" not in row
    assert row["cpu_minutes"] == round(seconds / 60, 1)
    assert sorted(p.name for p in (target / OWN_REFINER).iterdir()) == [REFINER_CONFIG, REFINER_WEIGHTS]
    assert "3D refinement stage" in (target / CARD_FILE).read_text()
    # predict refines with the model's own by default, and not when told not to
    own = predict(target, data, tmp_path / "own", steps=2, nifti=False, progress=False)
    assert own["refiner"] == str(target / OWN_REFINER) and own["smooth_mm"] == 0.0
    plain = predict(target, data, tmp_path / "plain", steps=2, nifti=False, progress=False,
                    refiner=False)
    assert plain["refiner"] is None and plain["smooth_mm"] > 0
    # a stretch warm-started from the shipped weights replaces them; the refiner trained for the old ones goes
    train(cache, tmp_path / "next", micro_config(val_patients=0), max_steps=4, progress=False, init_from=target,
          decay_steps=20)
    _worse_log(target)
    stretch = export_run(tmp_path / "next", data, steps=2, target=target)
    assert stretch["shipped"] and not stretch["refiner"] and "new_run" not in stretch
    assert not (target / OWN_REFINER).exists()
    assert predict(target, data, tmp_path / "after", steps=2, nifti=False,
                   progress=False)["refiner"] is None


def test_refiner_options_contradicting_each_other_are_refused() -> None:
    assert refiner_choice(None, False) is None and refiner_choice(None, True) is False
    assert refiner_choice(Path("r"), False) == Path("r")
    with pytest.raises(MddoseError, match="contradict"):
        refiner_choice(Path("r"), True)
