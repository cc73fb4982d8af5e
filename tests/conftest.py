"""Shared fixtures. Real-patient tests read ../shared/openkbp and skip, visibly, where it is absent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Every test runs on one torch thread, and so do the processes the tests start: the tensors are small, and on
# a 2-core machine shared with other jobs two OpenMP threads spin-wait for each other (measured: a training
# step took 14 s instead of 0.17 s while another process ran).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

OPENKBP = Path(__file__).resolve().parents[1].parent / "shared" / "openkbp"


def openkbp_split(name: str) -> Path:
    """Path to a real OpenKBP split, or a visible skip when the shared data is not beside the checkout."""
    path = OPENKBP / name
    if not path.is_dir():
        pytest.skip(f"real OpenKBP data not found at {path}: real-patient test skipped")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read the real OpenKBP patients carry the ``openkbp`` marker (``-m "not openkbp"`` leaves them)."""
    for item in items:
        if {"openkbp_train", "openkbp_validation"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.openkbp)


@pytest.fixture(scope="session")
def openkbp_train() -> Path:
    return openkbp_split("train-pats")


@pytest.fixture(scope="session")
def openkbp_validation() -> Path:
    return openkbp_split("validation-pats")


def toy_patient(patient_id: str = "pt_1", seed: int = 0, with_dose: bool = True):
    """A small hand-made patient on the OpenKBP grid: body cylinder, a PTV70 and PTV56, cord, parotids.

    Kept independent of the phantom generator so that I/O tests pin down exact values.
    """
    import numpy as np

    from mddose.data.patient import Patient

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(128),) * 3, indexing="ij")
    body = ((x - 64) ** 2 + (y - 64) ** 2 < 30**2) & (z > 40) & (z < 84)
    ct = np.where(body, rng.integers(20, 60, body.shape), -1000).astype(np.float32)
    ptv70 = ((x - 60) ** 2 + (y - 58) ** 2 + (z - 60) ** 2) < 8**2
    ptv56 = (((x - 60) ** 2 + (y - 72) ** 2 + (z - 64) ** 2) < 7**2) & ~ptv70
    cord = ((x - 84) ** 2 + (y - 64) ** 2 < 9) & body
    rpar = ((x - 58) ** 2 + (y - 40) ** 2 + (z - 50) ** 2) < 5**2
    lpar = ((x - 58) ** 2 + (y - 88) ** 2 + (z - 50) ** 2) < 5**2
    structures = {"PTV70": ptv70, "PTV56": ptv56, "SpinalCord": cord, "RightParotid": rpar, "LeftParotid": lpar}
    dose = None
    if with_dose:
        dist = np.sqrt((x - 60) ** 2 + (y - 62) ** 2 + (z - 62) ** 2)
        dose = np.where(body, 72.0 * np.exp(-((dist / 14.0) ** 2)) + rng.uniform(0, 0.5, body.shape), 0.0)
        dose = np.round(dose, 3).astype(np.float32)
    return Patient(patient_id, ct, body, (3.906, 3.906, 2.5), structures, dose)
