"""``mddose bench networks`` writes a complete JSON (tiny sizes here; real numbers come from the CLI run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.bench import loglog_slope
from mddose.bench_networks import VARIANTS, bench_networks


def test_loglog_slope() -> None:
    assert loglog_slope([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert loglog_slope([1, 2, 4], [1, 4, 16]) == pytest.approx(2.0)
    assert loglog_slope([1], [1]) is None


def test_bench_networks_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "networks.json"
    result = bench_networks(out, sizes=(16, 32), repeats=1, device="cpu", preset_name="tiny", paper=False, scans=False)
    on_disk = json.loads(out.read_text())
    assert on_disk["block_types"].keys() == result["block_types"].keys() == VARIANTS.keys()
    for entry in on_disk["block_types"].values():
        assert entry["parameters"] > 0
        assert [r["size"] for r in entry["sizes"]] == [16, 32]
        assert all(r["forward_s_per_image"] > 0 and r["forward_backward_s_per_image"] > 0 for r in entry["sizes"])
        assert isinstance(entry["slope_forward"], float) and isinstance(entry["slope_forward_backward"], float)
    assert on_disk["machine"]["device"] == "cpu"
