"""``mddose bench networks`` writes a complete JSON (tiny sizes here; real numbers come from the CLI run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.bench.networks import VARIANTS, bench_networks
from mddose.bench.timing import loglog_slope


def test_loglog_slope() -> None:
    assert loglog_slope([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert loglog_slope([1, 2, 4], [1, 4, 16]) == pytest.approx(2.0)
    assert loglog_slope([1], [1]) is None


def test_bench_networks_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "networks.json"
    result = bench_networks(out, sizes=(16, 32), repeats=1, device="cpu", preset_name="tiny", paper=False, scans=False,
                            layouts=False)
    on_disk = json.loads(out.read_text())
    assert on_disk["block_types"].keys() == result["block_types"].keys() == VARIANTS.keys()
    for entry in on_disk["block_types"].values():
        assert entry["parameters"] > 0
        assert [r["size"] for r in entry["sizes"]] == [16, 32]
        assert all(r["forward_s_per_image"] > 0 and r["forward_backward_s_per_image"] > 0 for r in entry["sizes"])
        assert isinstance(entry["slope_forward"], float) and isinstance(entry["slope_forward_backward"], float)
    assert on_disk["machine"]["device"] == "cpu"


def test_layout_timings_have_ratios_and_a_stage_split() -> None:
    import torch

    from mddose.bench.networks import time_layouts
    from mddose.device import bf16_pays

    result = time_layouts("tiny", torch.device("cpu"), 1, torch.Generator().manual_seed(0), batch=1, size=32)
    rows = result["layouts"]
    assert list(rows) == ["mamba", "hybrid", "conv"]
    assert rows["conv"]["ratio_to_conv_float32"] == pytest.approx(1.0)
    native = bf16_pays(torch.device("cpu"))
    assert result["precisions"] == (["float32", "bf16"] if native else ["float32"])  # emulated bf16 is not timed
    for precision in result["precisions"]:
        assert all(r[f"train_step_s_{precision}"] > 0 and r[f"ratio_to_conv_{precision}"] > 0 for r in rows.values())
    blocks = {name: {s["block"] for s in r["stages"]} for name, r in rows.items()}
    assert blocks == {"mamba": {"MambaStack"}, "hybrid": {"MambaStack", "ConvStack"}, "conv": {"ConvStack"}}
    assert len(rows["hybrid"]["stages"]) == 12  # 4 down, 4 up, 4 structure-encoder stages


def test_layout_timings_on_the_cpu_kernel() -> None:
    import torch

    from mddose.bench.networks import time_layouts
    from mddose.models.ssm_kernel import kernel_build_problem

    if (problem := kernel_build_problem()) is not None:
        pytest.skip(f"the CPU scan kernel cannot be built here: {problem}")
    rows = time_layouts("tiny", torch.device("cpu"), 1, torch.Generator().manual_seed(0), batch=1, size=32,
                        cpu_kernel=True)["layouts"]
    assert list(rows) == ["mamba", "hybrid", "conv", "mamba+cpu_kernel", "hybrid+cpu_kernel"]
    assert rows["mamba+cpu_kernel"]["config"]["scan_backend"] == "cpu_kernel"
    assert all(r["ratio_to_conv_float32"] > 0 for r in rows.values())
