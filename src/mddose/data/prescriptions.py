"""Stated prescriptions: a clinic's dose levels on a model that was trained on other ones.

A model knows the prescriptions of its targets from their names (OpenKBP: PTV70, PTV63, PTV56). A clinic
prescribes 60, 66, 50 Gy and so on. Its targets are mapped to the model's levels by rank (the highest
prescription to the model's highest target, and so on down), and each target's prescription in Gy is stated:

- in the patient folder, as ``prescriptions.json`` ``{"PTV70": 60.0}`` (model target → stated Gy), which
  ``import-dicom`` writes from the ROI map or from a target name that carries a dose ("PTV_60");
- on the command line of ``predict`` and ``qa`` as ``--prescription PTV70=60`` (wins over the file).

**How a stated prescription is used: scale to and from the trained levels.** The network predicts the patient as
if its targets had the trained prescriptions, and the dose is multiplied by the highest target's stated /
trained prescription (60 / 70 for a 60 Gy plan on PTV70). A plan whose levels all scale by the same ratio
(66 / 59.4 / 52.8 Gy on 70 / 63 / 56) is predicted as the trained plan scaled; levels whose ratios differ keep the
trained spacing between levels (the highest target's ratio is applied to all), which :func:`dose_scale` reports.
"""

from __future__ import annotations

import math
from pathlib import Path

from mddose.atomic import read_json_object, write_json
from mddose.data.patient import RoiConfig
from mddose.errors import MddoseError

FILE = "prescriptions.json"
#: A stated prescription this far from the trained level (as a ratio) is refused: no longer the same plan class
MAX_RATIO = 2.0


def check_prescriptions(stated: dict[str, float], rois: RoiConfig,
                        source: str | Path | None = None) -> dict[str, float]:
    """``stated`` with float values, every key a model target and every value a dose within the allowed ratio."""
    out = {}
    for target, gy in stated.items():
        if target not in rois.targets:
            raise MddoseError(f"prescription for '{target}': not a model target ({', '.join(rois.targets)})", source)
        if isinstance(gy, bool) or not isinstance(gy, int | float) or not math.isfinite(gy) or gy <= 0:
            raise MddoseError(f"prescription for '{target}' must be a positive dose in Gy, not {gy!r}", source)
        ratio = gy / rois.prescription(target)
        if not 1 / MAX_RATIO <= ratio <= MAX_RATIO:
            raise MddoseError(f"prescription {gy:g} Gy for '{target}' is more than {MAX_RATIO:g}× from the model's "
                              f"trained {rois.prescription(target):g} Gy", source)
        out[target] = float(gy)
    return out


def read_prescriptions(folder: Path, rois: RoiConfig) -> dict[str, float]:
    """A patient folder's stated prescriptions (empty when it has no ``prescriptions.json``)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return {}
    data = read_json_object(path, "stated prescriptions", '{"PTV70": 60.0}')
    return check_prescriptions(data, rois, path)


def write_prescriptions(folder: Path, stated: dict[str, float]) -> None:
    if stated:
        write_json(Path(folder) / FILE, stated)


def parse_prescription_options(options: list[str] | None) -> dict[str, float]:
    """``["PTV70=60", "PTV56=50.4"]`` → ``{"PTV70": 60.0, "PTV56": 50.4}`` (one line naming a bad option); the
    commands check the targets and doses against their model (:func:`check_prescriptions`)."""
    stated: dict[str, float] = {}
    for option in options or []:
        target, sep, value = option.partition("=")
        try:
            gy = float(value.strip().lower().removesuffix("gy"))
        except ValueError:
            gy = None
        if not sep or gy is None:
            raise MddoseError(f"--prescription {option!r}: expected TARGET=GY, e.g. PTV70=60")
        stated[target.strip()] = gy
    return stated


def dose_scale(present: dict[str, float], stated: dict[str, float]) -> tuple[float, str | None]:
    """The factor from the trained levels to the stated ones, and a note when the stated levels are not one
    scaling of the trained ones. ``present``: the patient's targets with their trained prescriptions."""
    if not present or not stated:
        return 1.0, None
    top = max(present, key=present.get)
    scale = stated.get(top, present[top]) / present[top]
    off = [t for t in present if t in stated and abs(stated[t] / present[t] - scale) > 0.02]
    note = None
    if off:
        note = (f"stated prescriptions of {', '.join(off)} are not the trained levels scaled by {scale:.3f} (that "
                f"of {top}): the prediction keeps the trained spacing between levels")
    return scale, note
