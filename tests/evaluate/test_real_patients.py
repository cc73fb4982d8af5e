"""On real OpenKBP patients: our scores equal a straightforward re-computation of the official semantics.

The independent computation below follows ``ababier/open-kbp`` ``provided_code/dose_evaluation_class.py``
line by line in plain loops (``np.percentile`` on each ROI's voxel list, float64), sharing no code with
:mod:`mddose.evaluate`. Skipped, visibly, where ../shared/openkbp is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mddose.data.openkbp import list_patients, read_patient
from mddose.data.patient import RoiConfig
from mddose.evaluate.challenge import dvh_score
from mddose.evaluate.folders import read_reference
from mddose.evaluate.score import dose_metrics, score_patient


def official_style(patient, reference: np.ndarray, prediction: np.ndarray):
    """Dose score and {(roi, metric): (ref, pred)} exactly as the challenge's evaluator computes them."""
    voxel_size = np.prod(patient.spacing)
    tenth_cc = np.maximum(1, np.round(100 / voxel_size))
    table = {}
    for roi in RoiConfig().all:
        if roi not in patient.structures or not patient.structures[roi].max():
            continue
        mask = patient.structures[roi].flatten()
        pair = []
        for dose in (reference.flatten(), prediction.flatten()):
            roi_dose = dose[mask]
            if roi in RoiConfig().oars:
                pair.append({"D_0.1_cc": np.percentile(roi_dose, 100 - tenth_cc / len(roi_dose) * 100),
                             "mean": roi_dose.mean()})
            else:
                pair.append({"D_99": np.percentile(roi_dose, 1), "D_95": np.percentile(roi_dose, 5),
                             "D_1": np.percentile(roi_dose, 99)})
        table.update({(roi, m): (pair[0][m], pair[1][m]) for m in pair[0]})
    score = np.sum(np.abs(reference - prediction)) / np.sum(patient.possible_dose_mask)
    return score, table


def test_scores_equal_official_semantics(openkbp_validation) -> None:
    rng = np.random.default_rng(0)
    folders = list_patients(openkbp_validation)[:2]
    dose_scores, tables, ours = [], [], []
    for folder in folders:
        patient, reference = read_reference(folder, RoiConfig())
        noise = gaussian_filter(rng.normal(0, 1, reference.shape), 2.0)
        prediction = np.where(patient.possible_dose_mask, reference * (1 + 0.3 * noise), 0.0)
        ref_metrics = dose_metrics(patient, reference)
        result = score_patient(patient, reference, ref_metrics, prediction, "noisy", gamma=False)
        score, table = official_style(patient, reference, prediction)
        assert result.scores["openkbp_dose_score"] == pytest.approx(score, abs=1e-9)
        assert set(result.differences) == set(table)
        for key, (ref_value, pred_value) in table.items():
            assert ref_metrics.openkbp[key] == pytest.approx(ref_value, abs=1e-9)
            assert result.differences[key] == pytest.approx(abs(ref_value - pred_value), abs=1e-9)
        dose_scores.append(score)
        tables.append(table)
        ours.append(result)
        # Reference against itself: every score is exactly zero.
        same = score_patient(patient, reference, ref_metrics, reference.copy(), "self", gamma=False)
        assert same.scores["openkbp_dose_score"] == 0.0 and same.scores["openkbp_dvh_score"] == 0.0
        assert same.scores["paper_dose_score"] == 0.0 and same.scores["hi_abs_diff"] == 0.0
    # Pooled challenge DVH score: nan-mean over the whole (patient, ROI, metric) table.
    official_dvh = np.nanmean([abs(r - p) for t in tables for r, p in t.values()])
    assert dvh_score(r.differences for r in ours) == pytest.approx(official_dvh, abs=1e-9)
    assert np.mean([r.scores["openkbp_dose_score"] for r in ours]) == pytest.approx(np.mean(dose_scores), abs=1e-9)


def test_light_reader_matches_read_patient(openkbp_validation) -> None:
    folder = list_patients(openkbp_validation)[0]
    light, reference = read_reference(folder, RoiConfig())
    full = read_patient(folder)
    assert light.spacing == full.spacing and light.present_rois() == full.present_rois()
    assert np.array_equal(light.possible_dose_mask, full.possible_dose_mask)
    assert all(np.array_equal(light.structures[k], full.structures[k]) for k in full.structures)
    assert reference.dtype == np.float64 and np.array_equal(reference.astype(np.float32), full.dose)
