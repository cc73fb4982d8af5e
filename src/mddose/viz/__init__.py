"""Figures: dose washes over CT, the paper's Fig. 3 comparison and Fig. 4 DVHs (PNG, headless)."""

from mddose.viz.figures import comparison_figure, default_slice, dose_wash_figure, dvh_figure, save_png

__all__ = ["comparison_figure", "default_slice", "dose_wash_figure", "dvh_figure", "save_png"]
