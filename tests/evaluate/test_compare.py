"""Paired t-tests and the Table-I-style markdown on made-up numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mddose.evaluate.compare import MetricSpec, comparison_markdown, mean_std, paired_ttest

PATIENTS = [f"pt_{i}" for i in range(1, 9)]


def _values(xs) -> dict[str, float]:
    return dict(zip(PATIENTS, map(float, xs)))


def test_paired_not_unpaired() -> None:
    """A small consistent per-patient shift on widely spread values: only a paired test sees it."""
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    shifted = base + 0.1 + np.array([0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0])
    test = paired_ttest(_values(shifted), _values(base))
    assert test.n_pairs == 8 and test.significant
    assert test.p_value == pytest.approx(stats.ttest_rel(shifted, base).pvalue)
    assert stats.ttest_ind(shifted, base).pvalue > 0.5  # an unpaired test would see nothing


def test_pairs_only_common_finite_patients() -> None:
    a = {"pt_1": 1.0, "pt_2": 2.0, "pt_3": float("nan"), "pt_4": 4.0}
    b = {"pt_1": 1.5, "pt_2": 2.5, "pt_3": 3.5}  # pt_4 missing in b, pt_3 NaN in a
    assert paired_ttest(a, b).n_pairs == 2
    assert math.isnan(paired_ttest({"pt_1": 1.0}, {"pt_1": 2.0}).p_value)  # one pair: no test
    same = _values(range(8))
    assert not paired_ttest(same, same).significant  # identical: p is NaN, no star


def test_mean_std_sample() -> None:
    mean, std, n = mean_std({"a": 1.0, "b": 3.0, "c": float("nan")})
    assert (mean, n) == (2.0, 2) and std == pytest.approx(math.sqrt(2.0))
    assert math.isnan(mean_std({"a": 1.0})[1])


def test_markdown_stars_and_columns() -> None:
    rng = np.random.default_rng(0)
    ours = 2.0 + rng.normal(0, 0.5, 8)
    per_patient = {
        "Ours": {"openkbp_dose_score": _values(ours), "gamma_pass_rate": _values([math.nan] * 8)},
        "Worse": {"openkbp_dose_score": _values(ours + 1.0 + rng.normal(0, 0.05, 8)),
                  "gamma_pass_rate": _values([math.nan] * 8)},
        "Noisy": {"openkbp_dose_score": _values(ours + rng.normal(0, 0.5, 8)),
                  "gamma_pass_rate": _values([math.nan] * 8)},
    }
    metrics = (MetricSpec("openkbp_dose_score", "Dose"), MetricSpec("gamma_pass_rate", "Gamma", True))
    md = comparison_markdown(per_patient, "Ours", metrics, notes=["gamma not computed"])
    main_table = md.split("\n\n")[0]  # the p-value table follows after a blank line
    rows = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("| ")}
    assert "Gamma" not in md.splitlines()[0]  # no finite value anywhere: column left out
    assert rows["Worse"].count("*") == 1 and "*" not in rows["Ours"]
    noisy_p = paired_ttest(per_patient["Noisy"]["openkbp_dose_score"], per_patient["Ours"]["openkbp_dose_score"])
    assert ("*" in rows["Noisy"]) == (noisy_p.p_value < 0.05)
    mean, std, _ = mean_std(per_patient["Ours"]["openkbp_dose_score"])
    assert f"{mean:.3f} ± {std:.3f}" in rows["Ours"]
    assert "- gamma not computed" in md
    with pytest.raises(ValueError, match="against"):
        comparison_markdown(per_patient, "Nobody", metrics)
