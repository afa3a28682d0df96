"""The lifting quality script on a tiny dataset (triangulation only; mv2d is covered elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvxray.benchmarks.lift3d import main


def test_lift3d_script_prints_a_json_line(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "--data",
                str(two_case_dataset),
                "--lifters",
                "triangulation",
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    doc = json.loads(last)
    rows = {r["detections"]: r for r in doc["results"]}
    assert set(rows) == {"oracle", "oracle_jitter1px"}  # no mask boxes in this dataset
    assert rows["oracle"]["median_centre_error_mm"] < 0.05
    assert rows["oracle"]["sens@1FP"] == 1.0
    assert (tmp_path / "out" / "per_nodule_triangulation_oracle.json").exists()
