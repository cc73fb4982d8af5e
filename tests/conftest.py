"""Shared fixtures. Real-patient tests read ../shared/openkbp and skip, visibly, where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

OPENKBP = Path(__file__).resolve().parents[1].parent / "shared" / "openkbp"


def openkbp_split(name: str) -> Path:
    """Path to a real OpenKBP split, or a visible skip when the shared data is not beside the checkout."""
    path = OPENKBP / name
    if not path.is_dir():
        pytest.skip(f"real OpenKBP data not found at {path}: real-patient test skipped")
    return path


@pytest.fixture(scope="session")
def openkbp_train() -> Path:
    return openkbp_split("train-pats")


@pytest.fixture(scope="session")
def openkbp_validation() -> Path:
    return openkbp_split("validation-pats")
