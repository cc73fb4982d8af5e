"""Model configs: presets, the ablation rows, JSON round trips and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.errors import MddoseError
from mddose.models import PRESETS, ModelConfig, ablation_configs, build_model, count_parameters, preset


def test_paper_preset_follows_the_published_layout() -> None:
    cfg = preset("paper")
    assert (cfg.image_size, cfg.stem_channels) == (128, 24)
    assert cfg.enc_widths == (48, 96, 192, 384) and cfg.enc_depths == (4, 6, 6, 8)
    assert cfg.dec_widths == (192, 96, 48, 48) and cfg.dec_depths == (6, 6, 4, 4)
    assert (cfg.d_state, cfg.d_conv, cfg.expand, cfg.drop_path) == (16, 4, 2, 0.1)
    assert (cfg.time_embed_dim, cfg.fourier_scale) == (96, 30.0)
    assert (cfg.in_channels, cfg.cond_channels, cfg.out_channels) == (1, 9, 1)


@pytest.mark.parametrize(("kind", "expected"), [("s6", 30_076_704), ("ssd", 28_504_224)])
def test_paper_parameter_count(kind: str, expected: int) -> None:
    """Pinned, so architecture changes are deliberate (the paper reports 30.47 M; see docs/bench)."""
    assert count_parameters(build_model(preset("paper", ssm_kind=kind))) == expected


def test_ablation_rows() -> None:
    rows = ablation_configs(preset("tiny"))
    assert sorted(rows) == sorted(
        ["table3-conv", "table3-swin", "table3-mamba", "table4-none", "table4-conv", "table4-swin", "table4-mamba"]
    )
    assert {r.denoiser_block for k, r in rows.items() if k.startswith("table4")} == {"mamba"}
    assert {r.encoder_block for k, r in rows.items() if k.startswith("table3")} == {"mamba"}
    assert rows["table4-none"].encoder_block == "none"
    assert rows["table3-swin"].name == "tiny-table3-swin"


@pytest.mark.parametrize("name", PRESETS)
def test_json_round_trip(tmp_path: Path, name: str) -> None:
    for cfg in (preset(name), *ablation_configs(preset(name)).values()):
        path = tmp_path / f"{cfg.name}.json"
        cfg.save(path)
        assert ModelConfig.load(path) == cfg


def test_bad_config_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    data = preset("tiny").to_dict()
    path.write_text('{"name": "x", "not_a_field": 1}')
    with pytest.raises(MddoseError, match="model.json: unknown model config keys"):
        ModelConfig.load(path)
    path.write_text(json.dumps(data | {"enc_widths": [16, 32]}))
    with pytest.raises(MddoseError, match="model.json: .*same length"):
        ModelConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(MddoseError, match="model.json"):
        ModelConfig.load(path)
    with pytest.raises(MddoseError, match="not found"):
        ModelConfig.load(tmp_path / "missing.json")


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        preset("tiny", image_size=120)
    with pytest.raises(ValueError, match="denoiser_block"):
        preset("tiny", denoiser_block="lstm")
    with pytest.raises(ValueError, match="ssd_head_dim"):
        preset("tiny", ssd_head_dim=48)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
