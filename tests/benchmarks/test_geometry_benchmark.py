"""The geometry benchmark runs end to end on tiny sizes and ends with one parseable JSON line."""

from __future__ import annotations

import json

import pytest

from mvxray.benchmarks.geometry import main


def test_benchmark_main_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--points", "500", "--loop-points", "5", "--boxes", "12", "--dets", "3"]
    assert main([*argv, "--loop-boxes", "4", "--repeats", "1", "--views", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out[-1])
    for key in ("speedup_vs_kornia", "speedup_vs_loop", "iou_speedup_vs_loop"):
        assert isinstance(record[key], float) and record[key] > 0
    assert record["points"] == 500 and record["views"] == 3 and record["threads"] == 1
    # the three implementations agree on the same inputs
    assert record["max_abs_diff_vs_kornia_px"] < 1e-2
    assert record["max_abs_diff_iou_vs_loop"] < 1e-6
    assert any("kornia" in line for line in out[:-1])  # the table came first
