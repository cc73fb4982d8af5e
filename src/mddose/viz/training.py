"""The training curve: loss per logged step (log scale) and the validation dose score beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mddose.atomic import atomic_path  # noqa: E402


def plot_history(state: dict[str, Any], path: str | Path, title: str = "MD-Dose training",
                 loss_label: str = "diffusion loss (MSE)") -> None:
    """Write ``loss.png`` atomically from a trainer state's ``history`` and ``validation`` lists."""
    hist, val = state.get("history", []), state.get("validation", [])
    if not hist and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if hist:
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], color="tab:blue", lw=1.2, label="training loss")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label, color="tab:blue")
    ax.grid(alpha=0.3)
    if val:
        ax2 = ax.twinx()
        ax2.plot([v["step"] for v in val], [v["dose_score"] for v in val], "o-", color="tab:red",
                 label="validation dose score")
        ax2.set_ylabel("validation dose score (Gy)", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
