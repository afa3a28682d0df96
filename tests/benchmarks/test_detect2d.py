"""The 2D detection quality script on a tiny dataset (oracle, plain and made multi-view)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvxray.benchmarks.detect2d import main


def test_detect2d_script_scores_plain_and_multiview_rows(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", str(two_case_dataset), "--detectors", "oracle", "--multiview"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["detector"]: r for r in doc["results"]}
    assert set(rows) == {"oracle", "oracle+multiview"}
    assert rows["oracle"]["recall@1fp"] == 1.0
    # The projected 3D boxes of the exact 2D boxes are the 2D boxes again.
    assert rows["oracle+multiview"]["recall@1fp"] == 1.0
    assert rows["oracle+multiview"]["ap50"] > 0.95
