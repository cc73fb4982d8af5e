"""Clinical ROI names → model ROI names: map file, built-in rules, unmapped names, bad maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.data.patient import RoiConfig
from mddose.errors import MddoseError
from mddose.io.roi_map import BODY, load_roi_map, map_roi_names


def test_built_in_rules() -> None:
    names = [("PTV_70", "PTV"), ("ptv 56 Gy", "PTV"), ("PTV_70_eval", "PTV"), ("Spinal Cord", "ORGAN"),
             ("Parotid_L", "ORGAN"), ("Parotid_R", "ORGAN"), ("Bone_Mandible", "ORGAN"), ("BrainStem", "ORGAN"),
             ("External", "EXTERNAL"), ("Couch", "SUPPORT")]
    mapping, unmapped = map_roi_names(names, RoiConfig())
    assert mapping == {"PTV70": ["PTV_70"], "PTV56": ["ptv 56 Gy"], "SpinalCord": ["Spinal Cord"],
                       "LeftParotid": ["Parotid_L"], "RightParotid": ["Parotid_R"], "Mandible": ["Bone_Mandible"],
                       "Brainstem": ["BrainStem"], BODY: ["External"]}
    assert unmapped == ["PTV_70_eval", "Couch"]


def test_map_overrides_and_unites(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Cord": "SpinalCord", "PRV cord": "SpinalCord", "PTV_70": None, "Absent": "Larynx"}))
    mapping, unmapped = map_roi_names([("cord", ""), ("PRV cord", ""), ("PTV_70", "PTV")], RoiConfig(),
                                      load_roi_map(path), path)
    assert mapping == {"SpinalCord": ["cord", "PRV cord"]} and unmapped == []


def test_yaml_map(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "map.yaml"
    path.write_text("Parotid L: LeftParotid\nBody: BODY\nJunk: null\n")
    assert load_roi_map(path) == {"Parotid L": "LeftParotid", "Body": BODY, "Junk": None}


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be an object"), ('{"Cord": 3}', "must be a string")],
)
def test_bad_map_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.json"
    path.write_text(text)
    with pytest.raises(MddoseError, match=message):
        load_roi_map(path)


def test_map_to_unknown_model_roi_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MddoseError, match="'Cochlea' is not a model ROI"):
        map_roi_names([("Cochlea_L", "")], RoiConfig(), {"Cochlea_L": "Cochlea"}, tmp_path / "map.json")
