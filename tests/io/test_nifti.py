"""NIfTI in and out: values, spacing and orientation (affine) survive; other orientations are reoriented."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mddose.data.patient import Patient
from mddose.io.dicom_import import ImportResult
from mddose.io.geometry import VolumeGeometry
from mddose.io.nifti import LPS_TO_RAS, export_nifti, load_volume, read_patient_nifti, save_volume, write_patient_nifti
from tests.io.conftest import patient_geometry


def test_patient_round_trip_keeps_values_and_affine(tmp_path: Path, phantom64: Patient) -> None:
    geom = patient_geometry(phantom64)
    write_patient_nifti(phantom64, tmp_path / "pt_2")
    back, back_geom = read_patient_nifti(tmp_path / "pt_2")
    assert back.patient_id == "pt_2" and back.spacing == phantom64.spacing
    np.testing.assert_allclose(back_geom.affine, geom.affine, atol=1e-5)
    np.testing.assert_array_equal(back.ct, phantom64.ct)
    np.testing.assert_array_equal(back.dose, phantom64.dose)
    np.testing.assert_array_equal(back.possible_dose_mask, phantom64.possible_dose_mask)
    assert sorted(back.structures) == sorted(phantom64.structures)
    for name, mask in phantom64.structures.items():
        np.testing.assert_array_equal(back.structures[name], mask)
    img = nib.load(tmp_path / "pt_2" / "ct.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("P", "L", "I")
    np.testing.assert_allclose(img.header.get_zooms(), phantom64.spacing, rtol=1e-6)


def test_other_orientations_are_reoriented(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    geom = VolumeGeometry((5, 6, 7), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0),
                          np.column_stack([(0, 1, 0), (1, 0, 0), (0, 0, -1)]))
    vol = rng.normal(size=geom.shape).astype(np.float32)
    save_volume(tmp_path / "ours.nii.gz", vol, geom)
    canonical = nib.as_closest_canonical(nib.load(tmp_path / "ours.nii.gz"))  # RAS, as most tools write
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    nib.save(canonical, tmp_path / "ras.nii")
    back, back_geom = load_volume(tmp_path / "ras.nii")
    np.testing.assert_array_equal(back, vol)
    np.testing.assert_allclose(back_geom.affine, geom.affine, atol=1e-5)
    np.testing.assert_allclose(canonical.affine, LPS_TO_RAS @ geom.affine @ _ras_from_ours(geom.shape), atol=1e-5)


def _ras_from_ours(shape: tuple[int, ...]) -> np.ndarray:
    """Index map from the RAS-canonical array to ours: axes (1, 0, 2), axis 1 ← reversed ours 0, etc."""
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt(("P", "L", "I")), axcodes2ornt(("R", "A", "S")))
    return inv_ornt_aff(transform, shape)


def test_export_nifti_of_an_imported_patient_sits_on_the_ct(tmp_path: Path, imported64: ImportResult) -> None:
    out = export_nifti(imported64.patient_dir, tmp_path / "nii")
    img = nib.load(out / "dose.nii.gz")
    model = VolumeGeometry.from_dict(imported64.sidecar["model_geometry"])
    np.testing.assert_allclose(img.affine, LPS_TO_RAS @ model.affine, atol=1e-4)
    np.testing.assert_allclose(np.asanyarray(img.dataobj), imported64.patient.dose, atol=1e-4)
