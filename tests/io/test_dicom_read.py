"""Reading the small RT files that pydicom ships (skipped where pydicom's test data is absent)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from mddose.io.dicom_read import read_rtdose, read_rtstruct
from mddose.io.dicom_scan import read_header
from mddose.io.geometry import VolumeGeometry
from mddose.io.rasterise import rasterise_roi


def _testdata(name: str) -> str:
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name)
    except Exception:  # noqa: BLE001 - absent data, or a download that is not possible offline
        path = None
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return str(path)


def test_pydicom_rtdose() -> None:
    path = _testdata("rtdose.dcm")
    dose = read_rtdose(path)
    raw = pydicom.dcmread(path)
    assert dose.dose.shape == (int(raw.Rows), int(raw.Columns), int(raw.NumberOfFrames)) == (10, 10, 15)
    assert dose.units == "RELATIVE" and dose.summation == "BEAM"
    np.testing.assert_allclose(dose.dose[:, :, 0], raw.pixel_array[0] * float(raw.DoseGridScaling), rtol=1e-6)
    assert dose.geometry.spacing == (10.0, 10.0, 5.0)
    np.testing.assert_allclose(dose.geometry.origin, [float(v) for v in raw.ImagePositionPatient])
    np.testing.assert_allclose(dose.geometry.index_to_world([0, 0, 14])[2] - dose.geometry.origin[2], 70.0)
    assert dose.frame_of_reference_uid == raw.FrameOfReferenceUID


def test_pydicom_rtstruct_without_preamble() -> None:
    path = _testdata("rtstruct.dcm")
    ds = read_header(path)  # no 'DICM' preamble: read leniently
    rois = read_rtstruct(ds)
    assert [(r.name, r.interpreted_type, len(r.contours)) for r in rois] == [
        ("patient", "EXTERNAL", 3), ("Isocenter 1", "ISOCENTER", 0), ("Isocenter 2", "ISOCENTER", 0)
    ]  # POINT contours are skipped
    # rasterise the 400 × 300 mm outline (planes z = -200, -190, -180) on a 5 mm grid of 5 mm slices
    geom = VolumeGeometry((80, 100, 5), (5.0, 5.0, 5.0), (-247.5, -197.5, -200.0),
                          np.column_stack([(0, 1, 0), (1, 0, 0), (0, 0, 1)]))
    mask = rasterise_roi(rois[0].contours, geom, "patient", path)
    per_slice = mask.sum(axis=(0, 1))
    assert list(np.flatnonzero(per_slice)) == [0, 1, 2, 3, 4]  # planes on slices 0, 2, 4 and filled between
    assert per_slice[0] == pytest.approx(400 * 300 / 25, rel=0.05)
