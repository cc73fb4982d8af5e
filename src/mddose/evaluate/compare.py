"""Comparing methods: a Table-I-style markdown table with paired t-tests against one chosen method.

Each cell is ``mean ± std`` over the patients a method was scored on (sample standard deviation, ddof=1).
A star marks a method whose per-patient values differ from the chosen method's with ``p < 0.05`` in a
two-sided **paired** t-test (``scipy.stats.ttest_rel``) over the patients both were scored on, as the paper's
Table I does ("* ... p-value of less than 0.05, as determined by a paired t-test"). The p-values themselves
follow in a second table (the paper's Table III).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

SIGNIFICANCE = 0.05

PerPatient = Mapping[str, Mapping[str, Mapping[str, float]]]
"""method -> metric -> patient_id -> value."""


@dataclass(frozen=True)
class MetricSpec:
    """How one per-patient metric appears in the table."""

    key: str
    label: str
    higher_is_better: bool = False


TABLE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("openkbp_dose_score", "OpenKBP Dose score (Gy)"),
    MetricSpec("openkbp_dvh_score", "OpenKBP DVH score (Gy)"),
    MetricSpec("paper_dose_score", "Dose Score eq.8 (%)"),
    MetricSpec("paper_dvh_score", "DVH Score eq.9 (Gy)"),
    MetricSpec("hi_abs_diff", "\\|ΔHI\\|"),  # pipes escaped for markdown tables
    MetricSpec("gamma_pass_rate", "γ 3%/3mm (%)", higher_is_better=True),
)


@dataclass(frozen=True)
class TTest:
    """A paired t-test of one method against the chosen one on one metric."""

    p_value: float  # NaN when fewer than 2 pairs, or when every difference is 0
    n_pairs: int

    @property
    def significant(self) -> bool:
        return bool(self.p_value < SIGNIFICANCE)  # NaN compares False


def mean_std(values: Mapping[str, float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1, NaN for one value) and count of the finite values."""
    v = np.array([x for x in values.values() if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def paired_ttest(values: Mapping[str, float], against: Mapping[str, float]) -> TTest:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``) over patients finite in both mappings."""
    common = [p for p in values if p in against and math.isfinite(values[p]) and math.isfinite(against[p])]
    if len(common) < 2:
        return TTest(math.nan, len(common))
    a = np.array([values[p] for p in common])
    b = np.array([against[p] for p in common])
    with warnings.catch_warnings():  # identical samples: scipy warns and returns NaN, which we keep
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(a, b).pvalue)
    return TTest(p, len(common))


def ttests(per_patient: PerPatient, against: str, metrics: Sequence[str]) -> dict[str, dict[str, TTest]]:
    """method -> metric -> paired t-test against ``against``, for every method but ``against`` itself."""
    return {
        method: {m: paired_ttest(values.get(m, {}), per_patient[against].get(m, {})) for m in metrics}
        for method, values in per_patient.items()
        if method != against
    }


def _has_values(per_patient: PerPatient, key: str) -> bool:
    return any(math.isfinite(v) for values in per_patient.values() for v in values.get(key, {}).values())


def comparison_markdown(
    per_patient: PerPatient, against: str, metrics: Sequence[MetricSpec] = TABLE_METRICS, notes: Sequence[str] = ()
) -> str:
    """The Table-I-style markdown: mean ± std per metric, ``*`` where the paired t-test gives p < 0.05.

    Metrics with no finite value for any method are left out (e.g. gamma without pymedphys).
    """
    if against not in per_patient:
        raise ValueError(f"against={against!r} is not one of the methods {list(per_patient)}")
    shown = [m for m in metrics if _has_values(per_patient, m.key)]
    tests = ttests(per_patient, against, [m.key for m in shown])
    arrows = ["↑" if m.higher_is_better else "↓" for m in shown]
    lines = [
        "| Method | " + " | ".join(f"{m.label} {a}" for m, a in zip(shown, arrows)) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for method, values in per_patient.items():
        cells = []
        for m in shown:
            mean, std, n = mean_std(values.get(m.key, {}))
            star = "*" if method in tests and tests[method][m.key].significant else ""
            cells.append("n/a" if n == 0 else f"{mean:.3f} ± {std:.3f}{star}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample std over the patients scored."]
    if tests:
        lines[-1] += (f" \\* p < {SIGNIFICANCE} in a two-sided paired t-test (scipy.stats.ttest_rel over "
                      f"patients) against **{against}**.")
        lines += ["", f"Paired t-test p-values against {against} (pairs):", "",
                  "| Method | " + " | ".join(m.label for m in shown) + " |", "|---|" + "---:|" * len(shown)]
        for method, row in tests.items():
            cells = [f"{row[m.key].p_value:.3g} ({row[m.key].n_pairs})" for m in shown]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
