"""Shared DICOM fixtures: phantoms written as a clinic's CT series + RTSTRUCT + RTDOSE, and their import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mddose.data.patient import Patient
from mddose.data.phantom import make_phantom
from mddose.io.dicom_import import ImportResult, import_dicom
from mddose.io.dicom_write import export_patient_dicom
from mddose.io.geometry import ModelGrid, VolumeGeometry, default_geometry, index_map
from tests.io.real_patient import real_imported  # noqa: F401 - the real patient, imported once (a fixture)

GRID64 = ModelGrid((64, 64, 64), (7.812, 7.812, 5.0))  # the 64-phantom's own grid, for fast imports


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def on_patient_grid(volume: np.ndarray, model: VolumeGeometry, patient_geometry: VolumeGeometry) -> np.ndarray:
    """The part of a model-grid volume that covers the patient's own grid (same spacing and axes, shifted by
    whole voxels), zero where the model grid does not reach."""
    m, off = index_map(model, patient_geometry)
    np.testing.assert_allclose(m, np.eye(3), atol=1e-9)
    off = np.rint(off).astype(int)
    out = np.zeros(patient_geometry.shape, dtype=volume.dtype)
    src, dst = [], []
    for a in range(3):
        lo, hi = max(0, off[a]), min(volume.shape[a], off[a] + patient_geometry.shape[a])
        src.append(slice(lo, hi))
        dst.append(slice(lo - off[a], hi - off[a]))
    out[tuple(dst)] = volume[tuple(src)]
    return out


@pytest.fixture(scope="session")
def phantom128() -> Patient:
    return make_phantom(0, 128, "pt_1")


@pytest.fixture(scope="session")
def phantom64() -> Patient:
    return make_phantom(1, 64, "pt_2")


@pytest.fixture(scope="session")
def dicom128(tmp_path_factory: pytest.TempPathFactory, phantom128: Patient) -> Path:
    return export_patient_dicom(phantom128, tmp_path_factory.mktemp("dicom128") / "pt_1")


@pytest.fixture(scope="session")
def dicom64(tmp_path_factory: pytest.TempPathFactory, phantom64: Patient) -> Path:
    return export_patient_dicom(phantom64, tmp_path_factory.mktemp("dicom64") / "pt_2")


@pytest.fixture(scope="session")
def imported128(tmp_path_factory: pytest.TempPathFactory, dicom128: Path) -> ImportResult:
    """The 128 phantom imported with the default (OpenKBP) model grid."""
    return import_dicom(dicom128, tmp_path_factory.mktemp("imported128") / "pt_1")


@pytest.fixture(scope="session")
def imported64(tmp_path_factory: pytest.TempPathFactory, dicom64: Path) -> ImportResult:
    return import_dicom(dicom64, tmp_path_factory.mktemp("imported64") / "pt_2", grid=GRID64)


def patient_geometry(patient: Patient) -> VolumeGeometry:
    """Where :func:`export_patient_dicom` puts a patient by default."""
    return default_geometry(patient.shape, patient.spacing)
