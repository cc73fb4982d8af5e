"""Map clinical ROI names ("PTV_70", "Cord", "Parotid L") to the model's ROI names.

A ROI-name map is a JSON or YAML object ``{clinical name: model name}``; a model name of ``null`` ignores
that ROI (it is then not listed as unmapped), and the model name ``BODY`` marks the external outline (used
for the possible-dose mask). A target may state its prescription: ``{"PTV-1": {"roi": "PTV70",
"prescription_gy": 60}}`` (see :mod:`mddose.data.prescriptions`). The map wins; names it does not mention are
tried against built-in rules:

* the same name up to case and punctuation ("spinal cord" → SpinalCord, "PTV 70" → PTV70);
* common TG-263 names (Parotid_L → LeftParotid, Bone_Mandible → Mandible, Esophagus, Brainstem...);
* ``PTV`` + a dose that is the prescription of one of the model's targets ("PTV_70Gy" → PTV70);
* ``PTV`` + another dose ("PTV_60", "PTV 54Gy"): the model's targets by rank (the highest dose to the highest
  target), the dose in the name stated as that target's prescription;
* RTROIInterpretedType EXTERNAL, or a name like "Body"/"External"/"Skin", marks the body.

Several clinical ROIs mapped to one model ROI are united. Names that map to nothing are returned, logged
and written to the import's sidecar.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from mddose.data.patient import RoiConfig, prescription_from_name
from mddose.data.prescriptions import check_prescriptions
from mddose.errors import MddoseError

log = logging.getLogger(__name__)

BODY = "BODY"

_SYNONYMS: dict[str, str] = {  # normalised clinical name → OpenKBP name
    "cord": "SpinalCord",
    "spinalcord": "SpinalCord",
    "brainstem": "Brainstem",
    "parotidl": "LeftParotid",
    "parotidr": "RightParotid",
    "lparotid": "LeftParotid",
    "rparotid": "RightParotid",
    "parotidleft": "LeftParotid",
    "parotidright": "RightParotid",
    "esophagus": "Esophagus",
    "oesophagus": "Esophagus",
    "larynx": "Larynx",
    "mandible": "Mandible",
    "bonemandible": "Mandible",
}
_BODY_NAMES = {"body", "external", "skin", "outline", "bodycontour", "externalcontour"}
_PTV = re.compile(r"^ptv(\d+(?:p\d+)?)(?:gy)?$")


def normalise(name: str) -> str:
    """Lower case, letters and digits only ('.' between digits kept as 'p': 'PTV_59.4' → 'ptv59p4')."""
    name = re.sub(r"(?<=\d)\.(?=\d)", "p", name.strip().lower())
    return re.sub(r"[^a-z0-9]", "", name)


def load_roi_map(path: str | Path) -> dict[str, str | None]:
    """Read a ROI-name map (``.json``, ``.yaml`` or ``.yml``): clinical name → model name or null."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MddoseError(f"cannot read ROI map ({e.strerror})", path) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MddoseError("reading a YAML ROI map needs PyYAML (pip install pyyaml); or use JSON", path) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MddoseError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MddoseError(f"not valid JSON ({e.msg} at line {e.lineno})", path) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise MddoseError("a ROI map must be an object {clinical name: model name}", path)
    for key, value in data.items():
        stated = isinstance(value, dict) and set(value) == {"roi", "prescription_gy"}
        if value is not None and not isinstance(value, str) and not stated:
            raise MddoseError(f"ROI map entry '{key}': model name must be a string, null or "
                              '{"roi": TARGET, "prescription_gy": GY}', path)
    return dict(data)


def split_roi_map(roi_map: dict[str, Any], rois: RoiConfig,
                  path: str | Path | None = None) -> tuple[dict[str, str | None], dict[str, float]]:
    """A loaded ROI map as (clinical name → model name or None, model target → stated prescription in Gy)."""
    names: dict[str, str | None] = {}
    stated: dict[str, float] = {}
    for key, value in roi_map.items():
        if isinstance(value, dict):
            names[key] = value["roi"]
            if value["roi"] not in rois.targets:
                raise MddoseError(f"ROI map entry '{key}': a prescription is stated for targets only "
                                  f"({', '.join(rois.targets)}), not '{value['roi']}'", path)
            stated |= check_prescriptions({value["roi"]: value["prescription_gy"]}, rois, path)
        else:
            names[key] = value
    return names, stated


def map_roi_names(
    names: list[tuple[str, str]],
    rois: RoiConfig,
    roi_map: dict[str, str | None] | None = None,
    map_path: str | Path | None = None,
) -> tuple[dict[str, list[str]], list[str]]:
    """Map ``(clinical name, RTROIInterpretedType)`` pairs to model names.

    Returns:
        ``(mapping, unmapped)``: model name (or :data:`BODY`) → clinical names in input order, and the
        clinical names that map to nothing.
    """
    roi_map = roi_map or {}
    for key, value in roi_map.items():
        if value is not None and value != BODY and value not in rois.all:
            allowed = ", ".join(rois.all)
            raise MddoseError(f"ROI map entry '{key}': '{value}' is not a model ROI ({allowed}, {BODY})", map_path)
    exact = dict(roi_map)
    folded = {k.strip().lower(): v for k, v in roi_map.items()}
    by_norm = {normalise(r): r for r in rois.all}
    targets = {rois.prescription(t): t for t in rois.targets}
    mapping: dict[str, list[str]] = {}
    unmapped: list[str] = []
    used_keys = set()
    for name, kind in names:
        if name in exact or name.strip().lower() in folded:
            key = name if name in exact else next(k for k in roi_map if k.strip().lower() == name.strip().lower())
            used_keys.add(key)
            target = roi_map[key]
            if target is not None:
                mapping.setdefault(target, []).append(name)
            continue
        target = _default(name, kind, rois, by_norm, targets)
        if target is None:
            unmapped.append(name)
        else:
            mapping.setdefault(target, []).append(name)
    for key in roi_map:
        if key not in used_keys:
            log.warning("ROI map entry '%s' matches no ROI of the structure set", key)
    for model, clinical in mapping.items():
        if len(clinical) > 1:
            log.info("ROI %s is the union of %s", model, ", ".join(clinical))
    return mapping, unmapped


def _default(
    name: str, kind: str, rois: RoiConfig, by_norm: dict[str, str], targets: dict[float, str]
) -> str | None:
    norm = normalise(name)
    if norm in by_norm:
        return by_norm[norm]
    if norm in _SYNONYMS and _SYNONYMS[norm] in rois.all:
        return _SYNONYMS[norm]
    match = _PTV.match(norm)
    if match:
        dose = prescription_from_name("PTV" + match.group(1))
        if dose in targets:
            return targets[dose]
    if kind.upper() == "EXTERNAL" or norm in _BODY_NAMES:
        return BODY
    return None


#: a dose in a target's name below this is an index ("PTV-1", "PTV2"), not a prescription
MIN_NAMED_DOSE_GY = 20.0


def assign_dosed_targets(mapping: dict[str, list[str]], unmapped: list[str],
                         rois: RoiConfig) -> tuple[dict[str, list[str]], list[str], dict[str, float]]:
    """Unmapped targets whose name carries a dose the model was not trained on ("PTV_60") go to the model's free
    targets by rank, highest dose first; returns the new mapping, what stays unmapped and the stated doses."""
    named = [(n, d) for n in unmapped if _PTV.match(normalise(n))
             and (d := prescription_from_name("PTV" + _PTV.match(normalise(n)).group(1))) is not None
             and d >= MIN_NAMED_DOSE_GY]
    free = sorted((t for t in rois.targets if t not in mapping), key=rois.prescription, reverse=True)
    mapping, stated = {k: list(v) for k, v in mapping.items()}, {}
    for (name, dose), target in zip(sorted(named, key=lambda nd: -nd[1]), free):
        mapping[target] = [name]
        stated[target] = dose
        log.info("target %s (%g Gy) is the model's %s, its prescription stated as %g Gy", name, dose, target, dose)
    taken = {n for names in mapping.values() for n in names}
    return mapping, [n for n in unmapped if n not in taken], check_prescriptions(stated, rois)


def target_fix(unmapped: list[str], rois: RoiConfig) -> str:
    """How to give a patient without a mapped target one: the ROI-map line for its likeliest target."""
    likely = next((n for k in ("ptv", "ctv", "gtv", "target") for n in unmapped if k in n.lower()), None)
    if likely is None:
        return f"map the plan's target to one of {', '.join(rois.targets)} with --roi-map"
    return f'add the line "{likely}": {{"roi": "{rois.targets[-1]}", "prescription_gy": GY}} to a --roi-map file'
