"""What qa records and shows (issue 33, part 6): the user's paths (not the temporary folder a DICOM patient is
imported into), slices named by the z a planning system shows, and one clear line when a DICOM folder holds
two plan doses."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from mddose.data.phantom import make_phantom
from mddose.errors import MddoseError
from mddose.io.dicom_write import export_patient_dicom
from mddose.io.geometry import ModelGrid, VolumeGeometry
from mddose.qa.page import slice_label
from mddose.qa.run import run_qa
from tests.qa.helpers import PhysicsPredictor, raised_oar, stated_table

GRID64 = ModelGrid((64, 64, 64), (7.812, 7.812, 5.0))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa_words")
    phantom = make_phantom(1, 64, "pt_2")
    plan = dataclasses.replace(phantom, dose=raised_oar(phantom, phantom.dose, "LeftParotid"))
    weights = root / "weights.safetensors"
    weights.write_bytes(b"stand-in")
    return {"dicom": export_patient_dicom(plan, root / "dicom" / "pt_2"),
            "errors": stated_table().save(root / "errors.json"), "weights": weights}


def _qa(case: dict[str, Path], patient_dir: Path, out: Path, plan: Path | None = None) -> dict[str, Any]:
    return run_qa(PhysicsPredictor(case["weights"]), patient_dir, plan, out, errors=case["errors"], gamma=False,
                  grid=GRID64)


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_qa_records_the_users_paths_not_a_temporary_one(case: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "qa"
    summary = _qa(case, case["dicom"], out)
    saved = json.loads((out / "qa.json").read_text())
    assert saved["plan"] == str((case["dicom"] / "RD.dcm").absolute())  # the RTDOSE of the DICOM folder given
    assert saved["patient_dir"] == str(case["dicom"].absolute())
    assert saved["imported_to"] == str((out / "patient" / "pt_2").absolute())
    paths = [s for s in _strings(saved) if s.startswith("/")]
    assert len(paths) >= 4 and all(Path(p).exists() for p in paths), paths  # every path recorded still exists
    html = (out / "qa.html").read_text()
    assert saved["plan"] in html and ".tmp" not in html and summary["plan"] == saved["plan"]


def test_qa_slices_are_named_by_their_patient_z(case: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "qa"
    _qa(case, case["dicom"], out)
    sidecar = json.loads((out / "patient" / "pt_2" / "dicom_geometry.json").read_text())
    model = VolumeGeometry.from_dict(sidecar["model_geometry"])
    html = (out / "qa.html").read_text()
    shown = re.findall(r"axial slice (\d+) \(z = (−?\d+\.\d) mm\)", html)
    assert shown
    for k, z in shown:  # the model grid runs head to feet: z = the first slice's z − k × 5 mm
        expected = model.origin[2] - int(k) * model.spacing[2]
        assert float(z.replace("−", "-")) == pytest.approx(expected, abs=0.051)
    assert not re.search(r"z = \d+ mm\)", html)  # no index × spacing


def test_slice_label_reads_the_imported_geometry() -> None:
    """The real patient's grid (as imported): slice 90 lies at z = 12.1 − 90 × 2.5 = −212.9 mm in its CT's frame;
    without a geometry (an OpenKBP folder) only the index is given."""
    grid = VolumeGeometry((128, 128, 128), (3.906, 3.906, 2.5), (-241.319, -293.1, 12.1),
                          np.column_stack([(0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)]))
    assert slice_label(90, grid) == "axial slice 90 (z = −212.9 mm)"
    assert slice_label(21, grid) == "axial slice 21 (z = −40.4 mm)"
    assert slice_label(90, None) == "axial slice 90"


def test_two_plan_doses_in_the_dicom_folder_are_refused_in_one_line(case: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pt_2"
    shutil.copytree(case["dicom"], folder)
    ds = pydicom.dcmread(folder / "RD.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "RD_other_plan.dcm")
    with pytest.raises(MddoseError) as exc:
        _qa(case, folder, tmp_path / "qa")
    text = str(exc.value)
    assert "several RTDOSE files" in text and "RD.dcm" in text and "RD_other_plan.dcm" in text and "\n" not in text
    assert not (tmp_path / "qa").exists()


def test_readme_qa_section_says_gamma_needs_the_extra() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Check a clinical plan against the achievable dose", 1)[1].split("\n## ", 1)[0]
    assert 'pip install "mddose[gamma]"' in section
    assert re.search(r'^gamma = \[.*pymedphys', (root / "pyproject.toml").read_text(), re.MULTILINE)
