"""What import-dicom tells a physicist (issue 33, part 6): a ROI is called cut by the model field only when part
of it lies outside the field (not when resampling changes its volume), point ROIs (markers, isocentres) are
listed once apart from the unmapped volumes, the unmapped list is printed once, and crops name the
patient's ends (superior/inferior; the direction itself is checked on a phantom in test_dicom_roundtrip)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from mddose.data.patient import Patient
from mddose.io.dicom_import import import_dicom
from mddose.io.geometry import ModelGrid, VolumeGeometry
from tests.io.conftest import patient_geometry
from tests.io.real_patient import RealImport

#: 15.6 mm voxels (small ROIs lose volume by resampling) in a field 200 mm head to feet (the phantom is longer).
COARSE = ModelGrid((32, 32, 40), (15.624, 15.624, 5.0))


def test_only_rois_beyond_the_field_are_called_cut(tmp_path: Path, dicom64: Path, phantom64: Patient,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = import_dicom(dicom64, tmp_path / "pt_2", grid=COARSE)
    volumes = result.sidecar["roi_volumes"]
    model = VolumeGeometry.from_dict(result.sidecar["model_geometry"])
    z_ends = [float(model.index_to_world(np.array([0.0, 0.0, k]))[2]) for k in (0, COARSE.shape[2] - 1)]
    z_lo, z_hi = min(z_ends) - COARSE.spacing[2] / 2, max(z_ends) + COARSE.spacing[2] / 2
    source = patient_geometry(phantom64)  # the DICOM CT lies on the phantom's own grid
    slice_z = source.index_to_world(np.stack([np.zeros(64), np.zeros(64), np.arange(64.0)], axis=1))[:, 2]
    in_slices = (slice_z >= z_lo) & (slice_z <= z_hi)
    voxel_cc = float(np.prod(phantom64.spacing)) / 1000
    resampled_only = cut = 0
    for name, v in volumes.items():
        said = f"ROI {name} extends beyond the model field" in caplog.text
        if name in phantom64.structures:  # measured here: the ROI's voxels on slices inside the field
            inside_cc = float(phantom64.structures[name][:, :, in_slices].sum()) * voxel_cc
            assert v["in_field_cc"] == pytest.approx(inside_cc, rel=1e-3, abs=1e-3), name
        assert said == (v["in_field_cc"] < 0.99 * v["dicom_cc"]), name
        resampled_only += v["model_cc"] < 0.95 * v["dicom_cc"] and not said
        cut += said
    assert resampled_only >= 1 and cut >= 1  # both cases occur: only the real cut is reported
    assert "cut by the model field" not in caplog.text


def _with_points(dicom: Path, folder: Path) -> Path:
    """A copy of ``dicom`` whose RTSTRUCT also has a MARKER (one POINT contour), an ISOCENTER (no contour) and a
    volume no model ROI matches (a copy of the brainstem named 'Hirnstamm')."""
    shutil.copytree(dicom, folder)
    rs = pydicom.dcmread(folder / "RS.dcm")
    frame = rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    brainstem = next(r.ROINumber for r in rs.StructureSetROISequence if r.ROIName == "Brainstem")
    contours = next(c for c in rs.ROIContourSequence if c.ReferencedROINumber == brainstem)
    for number, (name, kind) in enumerate((("Marker 1", "MARKER"), ("Isocenter 1", "ISOCENTER"),
                                           ("Hirnstamm", "ORGAN")), start=100):
        roi, obs, item = Dataset(), Dataset(), Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        obs.ObservationNumber, obs.ReferencedROINumber, obs.RTROIInterpretedType = number, number, kind
        item.ReferencedROINumber = number
        if kind == "MARKER":
            point = Dataset()
            point.ContourGeometricType, point.NumberOfContourPoints, point.ContourData = "POINT", 1, ["0", "0", "0"]
            item.ContourSequence = DicomSequence([point])
        elif kind == "ORGAN":
            item.ContourSequence = contours.ContourSequence
        rs.StructureSetROISequence.append(roi)
        rs.RTROIObservationsSequence.append(obs)
        rs.ROIContourSequence.append(item)
    rs.save_as(folder / "RS.dcm")
    return folder


def test_point_rois_are_listed_apart_and_unmapped_names_once(tmp_path: Path, dicom64: Path) -> None:
    folder = _with_points(dicom64, tmp_path / "dicom")
    result = import_dicom(folder, tmp_path / "pt_2", grid=COARSE)
    assert result.unmapped == ["Hirnstamm"]
    proc = subprocess.run([sys.executable, "-m", "mddose.cli", "import-dicom", str(folder), str(tmp_path / "cli")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    unmapped = [line for line in lines if "unmapped" in line]
    points = [line for line in lines if "point ROIs" in line]
    assert len(unmapped) == 1 and "Hirnstamm" in unmapped[0], lines
    assert "Marker 1" not in unmapped[0] and "Isocenter 1" not in unmapped[0]
    assert len(points) == 1 and points[0].endswith("Marker 1, Isocenter 1"), lines
    assert sum("Hirnstamm" in line for line in lines) == 1


def test_real_patient_words(real_imported: RealImport) -> None:
    """Its 12 markers and isocentres are one line of points; nothing is called cut (the 321 mm body in a 320 mm
    field loses no contoured voxel), though resampling changes the volumes; the crop names its ends."""
    log, sidecar = real_imported.log, real_imported.result.sidecar
    points = [m for m in log if m.startswith("point ROIs")]
    markers = [f"I{k}" for k in range(1, 8)] + [f"Isocenter {k}" for k in range(1, 6)]
    assert points == [f"point ROIs (markers, isocentres: points, not volumes; not imported): {', '.join(markers)}"]
    unmapped = [m for m in log if m.startswith("unmapped")]
    assert len(unmapped) == 1 and "PTV-1" not in unmapped[0] and not any(n in unmapped[0] for n in ("I1", "Iso"))
    assert sidecar["unmapped_roi_names"] == [
        "GTV-1", "CTV-1", "CTV-2", "GTV-2", "GTV-3", "Heart", "Lung L", "Lung R", "contrast"]
    volumes = sidecar["roi_volumes"]
    assert all(v["in_field_cc"] == v["dicom_cc"] for v in volumes.values())
    assert volumes["SpinalCord"]["model_cc"] < 0.96 * volumes["SpinalCord"]["dicom_cc"]  # resampling, not a cut
    assert not any("beyond the model field" in m or "cut by" in m for m in log)
    crop = [m for m in log if m.startswith("patient longer than the model field")]
    said = ("patient longer than the model field head to feet (321 mm > 320 mm): centred on the targets, "
            "0 mm cut off at the superior end and 1 mm at the inferior end")
    assert crop == [said]
    assert sidecar["crop"][0]["cropped_mm_inferior"] == 1.0
