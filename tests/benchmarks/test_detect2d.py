"""The 2D detection quality script on a tiny dataset (oracle, plain and made multi-view)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvxray.benchmarks.detect2d import main
from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import write_case, write_dataset
from mvxray.geometry import Rig, box3d_from_center_size, project_boxes3d


def test_detect2d_script_scores_plain_and_multiview_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig.circular(5, 300.0, 600.0, 64, 64, 4.0)
    names = ["a", "b"]
    for i, n in enumerate(names):
        c = torch.tensor([[10.0 * i, -5.0, 3.0], [-20.0, 15.0, -8.0]], dtype=torch.float64)
        b3 = box3d_from_center_size(c, torch.full((2, 3), 9.0, dtype=torch.float64))
        b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, 64, 64)
        s = MultiViewSample(torch.rand(5, 1, 64, 64), rig, b3, b2, vis, torch.zeros(2).long(), n)
        write_case(tmp_path / "data" / n, s, preview=False)
    write_dataset(tmp_path / "data", names, {"train": ["a"], "test": ["b"]})
    argv = ["--data", str(tmp_path / "data"), "--detectors", "oracle", "--multiview"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["detector"]: r for r in doc["results"]}
    assert set(rows) == {"oracle", "oracle+multiview"}
    assert rows["oracle"]["recall@1fp"] == 1.0
    # The projected 3D boxes of the exact 2D boxes are the 2D boxes again.
    assert rows["oracle+multiview"]["recall@1fp"] == 1.0
    assert rows["oracle+multiview"]["ap50"] > 0.95
