"""Judging doses: OpenKBP's scores exactly, the MD-Dose paper's metrics, clinical extras, method comparison.

Modules: :mod:`~mddose.evaluate.dvh` (D_x, V_x, DVH curves), :mod:`~mddose.evaluate.challenge` (challenge
scores), :mod:`~mddose.evaluate.paper` (HI, eq. 8 and 9), :mod:`~mddose.evaluate.clinical` (per-ROI table,
gamma), :mod:`~mddose.evaluate.score` (one patient), :mod:`~mddose.evaluate.compare` (t-tests, markdown
table), :mod:`~mddose.evaluate.folders` (folders -> ``summary.json`` and friends).
"""

from mddose.evaluate.clinical import GammaResult, clinical_metrics, gamma_pass_rate
from mddose.evaluate.compare import comparison_markdown, paired_ttest
from mddose.evaluate.dvh import d_percent, dvh_curve, v_dose
from mddose.evaluate.challenge import dose_score, dvh_differences, dvh_metrics, dvh_score
from mddose.evaluate.paper import homogeneity_index, paper_dose_score, paper_dvh_score
from mddose.evaluate.folders import evaluate
from mddose.evaluate.score import PatientResult, dose_metrics, score_patient

__all__ = [
    "GammaResult", "PatientResult", "clinical_metrics", "comparison_markdown", "d_percent", "dose_metrics",
    "dose_score", "dvh_curve", "dvh_differences", "dvh_metrics", "dvh_score", "evaluate", "gamma_pass_rate",
    "homogeneity_index", "paired_ttest", "paper_dose_score", "paper_dvh_score", "score_patient", "v_dose",
]
