"""Phantom → DICOM (CT + RTSTRUCT + RTDOSE) → import-dicom gives back the same masks and dose."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mddose.data.openkbp import read_patient
from mddose.data.patient import Patient
from mddose.io.dicom_import import SIDECAR, ImportResult, import_dicom
from mddose.io.dicom_write import export_patient_dicom
from mddose.io.geometry import MODEL_DIRECTION, ModelGrid, VolumeGeometry
from tests.io.conftest import GRID64, dice, on_patient_grid, patient_geometry


def test_phantom_round_trip_masks_and_dose(phantom128: Patient, imported128: ImportResult) -> None:
    model = VolumeGeometry.from_dict(imported128.sidecar["model_geometry"])
    assert model.shape == (128, 128, 128) and model.spacing == (3.906, 3.906, 2.5)
    back = read_patient(imported128.patient_dir)  # what every other command reads
    assert back.patient_id == "pt_1" and back.spacing == (3.906, 3.906, 2.5)
    assert sorted(back.structures) == sorted(phantom128.structures)
    geom = patient_geometry(phantom128)
    for name, mask in phantom128.structures.items():
        assert dice(mask, on_patient_grid(back.structures[name], model, geom)) >= 0.98, name
    dose = on_patient_grid(back.dose, model, geom)
    assert np.abs(dose - phantom128.dose).max() <= 0.01 * phantom128.dose.max()
    assert dice(phantom128.possible_dose_mask, on_patient_grid(back.possible_dose_mask, model, geom)) >= 0.98
    body = phantom128.possible_dose_mask
    ct = on_patient_grid(back.ct, model, geom)
    expected = np.maximum(np.rint(phantom128.ct[body]), -1000.0)  # DICOM: integer HU; OpenKBP: ≥ -1000
    assert np.abs(ct[body] - expected).max() <= 1e-3


def test_sidecar_records_the_frame(dicom128: Path, imported128: ImportResult) -> None:
    sidecar = json.loads((imported128.patient_dir / SIDECAR).read_text())
    ct = pydicom.dcmread(next(dicom128.glob("CT_*.dcm")), stop_before_pixels=True)
    assert sidecar["frame_of_reference_uid"] == ct.FrameOfReferenceUID
    assert sidecar["study_instance_uid"] == ct.StudyInstanceUID
    assert sidecar["ct_series_instance_uid"] == ct.SeriesInstanceUID
    assert sidecar["crop"] == [] and sidecar["unmapped_roi_names"] == []
    np.testing.assert_allclose(sidecar["model_geometry"]["direction"], MODEL_DIRECTION)
    affine = np.asarray(sidecar["model_affine_lps"])
    np.testing.assert_allclose(affine[:3, 3], sidecar["model_geometry"]["origin"])
    assert sidecar["body_from"].startswith("ROI")


def _flip_to_prone(patient: Patient) -> tuple[Patient, VolumeGeometry]:
    """The same anatomy, stored as a prone CT would be: rows and columns reversed, the grid's first voxel
    moved to the old last row/column."""
    geom = patient_geometry(patient)
    d = np.asarray(geom.direction)
    origin = geom.index_to_world(np.array([patient.shape[0] - 1, patient.shape[1] - 1, 0.0]))
    prone = VolumeGeometry(geom.shape, geom.spacing, tuple(origin), np.column_stack([-d[:, 0], -d[:, 1], d[:, 2]]))

    def flip(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[::-1, ::-1, :])

    flipped = Patient(patient.patient_id, flip(patient.ct), flip(patient.possible_dose_mask), patient.spacing,
                      {k: flip(v) for k, v in patient.structures.items()}, flip(patient.dose), patient.rois)
    return flipped, prone


def test_other_patient_position_lands_in_the_same_orientation(
    tmp_path: Path, phantom64: Patient, imported64: ImportResult
) -> None:
    flipped, prone = _flip_to_prone(phantom64)
    folder = export_patient_dicom(flipped, tmp_path / "prone", geometry=prone)
    ct = pydicom.dcmread(next(folder.glob("CT_*.dcm")), stop_before_pixels=True)
    assert [float(v) for v in ct.ImageOrientationPatient] == [-1, 0, 0, 0, -1, 0]
    result = import_dicom(folder, tmp_path / "pt_2", grid=GRID64)
    for name, mask in imported64.patient.structures.items():
        assert dice(mask, result.patient.structures[name]) >= 0.98, name
    np.testing.assert_allclose(result.patient.dose, imported64.patient.dose, atol=0.01 * phantom64.dose.max())


def test_finer_ct_is_resampled_onto_the_model_grid(tmp_path: Path) -> None:
    """A CT at 2 mm with spheres, imported onto a 4 mm × 5 mm grid: masks match the analytic spheres and
    ROI volumes are preserved."""
    shape, spacing = (100, 100, 40), (2.0, 2.0, 2.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    geom = patient_geometry(Patient("x", np.zeros(shape), np.zeros(shape, bool), spacing))
    world = geom.index_to_world(ijk)
    body = np.hypot(world[..., 0] / 90, world[..., 1] / 80) < 1
    ptv = np.linalg.norm(world - [10, 0, 0], axis=-1) < 25
    cord = np.hypot(world[..., 0], world[..., 1] - 50) < 8
    dose = np.where(body, 70 * np.exp(-np.linalg.norm(world, axis=-1) ** 2 / 60**2), 0).astype(np.float32)
    patient = Patient("pt_3", np.where(body, 30.0, -1000.0), body, spacing,
                      {"PTV70": ptv, "SpinalCord": cord & body}, dose)
    folder = export_patient_dicom(patient, tmp_path / "fine")
    result = import_dicom(folder, tmp_path / "pt_3", grid=ModelGrid((64, 64, 24), (4.0, 4.0, 5.0)))
    model = VolumeGeometry.from_dict(result.sidecar["model_geometry"])
    mw = model.index_to_world(np.stack(np.meshgrid(*[np.arange(n) for n in model.shape], indexing="ij"), axis=-1))
    assert dice(result.patient.structures["PTV70"], np.linalg.norm(mw - [10, 0, 0], axis=-1) < 25) >= 0.95
    for name, v in result.sidecar["roi_volumes"].items():
        assert v["model_cc"] == pytest.approx(v["dicom_cc"], rel=0.1), name
    expected = 70 * np.exp(-np.linalg.norm(mw, axis=-1) ** 2 / 60**2)
    inner = result.patient.possible_dose_mask & (np.hypot(mw[..., 0] / 80, mw[..., 1] / 70) < 1)
    assert np.abs(result.patient.dose - expected)[inner].max() < 0.02 * 70


def test_contours_between_slices_and_on_every_other_slice(
    tmp_path: Path, dicom64: Path, imported64: ImportResult
) -> None:
    """RTSTRUCT planes shifted 0.4 slice off the CT go to the nearest slice; a ROI contoured on every other
    slice is filled in between."""
    folder = tmp_path / "shifted"
    folder.mkdir()
    for path in dicom64.glob("CT_*.dcm"):
        (folder / path.name).write_bytes(path.read_bytes())
    rs = pydicom.dcmread(dicom64 / "RS.dcm")
    names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
    for roi in rs.ROIContourSequence:
        keep = []
        for i, c in enumerate(roi.ContourSequence):
            pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            z = pts[0, 2]
            if names[roi.ReferencedROINumber] == "PTV56" and round(z / 5.0) % 2:
                continue  # every other plane dropped
            pts[:, 2] += 0.4 * 5.0
            c.ContourData = [f"{v:.4f}" for v in pts.ravel()]
            keep.append(c)
        roi.ContourSequence = keep
    rs.save_as(folder / "RS.dcm")
    result = import_dicom(folder, tmp_path / "pt_2", grid=GRID64)
    for name, mask in imported64.patient.structures.items():
        got = result.patient.structures[name]
        assert dice(mask, got) >= (0.9 if name == "PTV56" else 0.999), name


def test_roi_map_and_unmapped_names(
    tmp_path: Path, dicom64: Path, phantom64: Patient, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "clinical"
    folder.mkdir()
    for path in dicom64.glob("CT_*.dcm"):
        (folder / path.name).write_bytes(path.read_bytes())
    rs = pydicom.dcmread(dicom64 / "RS.dcm")
    clinical = {"PTV70": "PTV_70", "SpinalCord": "Cord", "LeftParotid": "Parotid L", "Brainstem": "Hirnstamm",
                "RightParotid": "Parotid R"}
    assert set(clinical) <= set(phantom64.structures)
    for roi in rs.StructureSetROISequence:
        roi.ROIName = clinical.get(roi.ROIName, roi.ROIName)
    rs.save_as(folder / "RS.dcm")
    roi_map = tmp_path / "map.json"
    roi_map.write_text(json.dumps({"Parotid L": "LeftParotid", "parotid r": None}))
    with caplog.at_level(logging.WARNING):
        result = import_dicom(folder, tmp_path / "pt_2", roi_map=roi_map, grid=GRID64)
    assert set(result.patient.structures) == set(phantom64.structures) - {"Brainstem", "RightParotid"}
    assert result.unmapped == ["Hirnstamm"]  # "Parotid R": mapped to null, ignored without a listing
    assert json.loads((tmp_path / "pt_2" / SIDECAR).read_text())["unmapped_roi_names"] == ["Hirnstamm"]
    assert "Hirnstamm" in caplog.text


def test_patient_larger_than_field_is_centred_on_targets(
    tmp_path: Path, dicom64: Path, phantom64: Patient, caplog: pytest.LogCaptureFixture
) -> None:
    targets = np.any([m for n, m in phantom64.structures.items() if n.startswith("PTV")], axis=0)
    body = phantom64.ct > -500
    span = [np.ptp(np.flatnonzero(targets.any(axis=tuple(b for b in range(3) if b != a)))) + 1 for a in range(3)]
    body_span = [np.ptp(np.flatnonzero(body.any(axis=tuple(b for b in range(3) if b != a)))) + 1 for a in range(3)]
    shape = (max(span[0], body_span[0] - 4), max(span[1], body_span[1] - 4), span[2] + 2)
    assert shape[1] < body_span[1] and shape[2] < body_span[2]  # the body is larger than the field
    grid = ModelGrid(shape, phantom64.spacing)
    with caplog.at_level(logging.WARNING):
        result = import_dicom(dicom64, tmp_path / "pt_2", grid=grid)
    crop = result.sidecar["crop"]
    assert {c["axis"] for c in crop} >= {1, 2} and all(c["centred_on"] == "targets" for c in crop)
    assert "longer than the model field" in caplog.text
    _check_cut_ends(result.sidecar, dicom64, caplog.text)
    vols = result.sidecar["roi_volumes"]
    for target in (n for n in phantom64.structures if n.startswith("PTV")):  # the targets fit: none is cropped
        assert vols[target]["model_cc"] == pytest.approx(vols[target]["dicom_cc"], rel=1e-6)
    assert result.patient.shape == grid.shape


def _check_cut_ends(sidecar: dict, dicom: Path, log_text: str) -> None:
    """The head-to-feet crop names the ends where the body really is cut: measured here from the CT slices' z
    (DICOM +z is superior) against the model grid's z extent, independently of the import's own arithmetic."""
    model = VolumeGeometry.from_dict(sidecar["model_geometry"])
    body_z = []
    for path in dicom.glob("CT_*.dcm"):
        ds = pydicom.dcmread(path)
        if (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) > -500).any():
            body_z.append(float(ds.ImagePositionPatient[2]))
    half = float(pydicom.dcmread(next(dicom.glob("CT_*.dcm")), stop_before_pixels=True).SliceThickness) / 2
    grid_z = [float(model.index_to_world(np.array([0.0, 0.0, k]))[2]) for k in (0, model.shape[2] - 1)]
    cut_superior = max(body_z) + half - (max(grid_z) + model.spacing[2] / 2)
    cut_inferior = (min(grid_z) - model.spacing[2] / 2) - (min(body_z) - half)
    assert cut_superior > 5 and cut_inferior > 5 and abs(cut_superior - cut_inferior) > 5  # two distinct ends
    line = next(t for t in log_text.splitlines() if "head to feet" in t)
    said = re.search(r"(\d+) mm cut off at the superior end and (\d+) mm at the inferior end", line)
    assert said is not None, line
    assert abs(float(said[1]) - cut_superior) <= 1 and abs(float(said[2]) - cut_inferior) <= 1, line
    crop = next(c for c in sidecar["crop"] if c["axis"] == 2)
    assert crop["cropped_mm_superior"] == pytest.approx(cut_superior, abs=0.5)
