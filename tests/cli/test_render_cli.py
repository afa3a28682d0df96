"""``mvxray render`` end to end on a tiny casting phantom."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mvxray.cli import main
from mvxray.datasets.format import read_case, read_dataset
from mvxray.geometry import Rig


def test_render_cli_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["render", "--out", str(tmp_path), "--phantom", "casting", "--cases", "2",
            "--views", "3", "--preset", "circular", "--size", "24", "--voxel-mm", "2.5",
            "--quiet", "--no-preview"]  # fmt: skip
    assert main(argv) == 0
    assert "rendered 2 case(s)" in capsys.readouterr().out
    index = read_dataset(tmp_path)
    assert index.cases == ["case_00000", "case_00001"]
    assert not list((tmp_path / "case_00000").glob("*.png"))
    assert main(argv) == 0
    assert "rendered 0 case(s)" in capsys.readouterr().out


def test_render_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--out", str(tmp_path), "--views", "4"]) == 1
    assert "seed preset has 10 views" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["render", "--out", str(tmp_path), "--shard", "3/2"])
    assert "expected i/n" in capsys.readouterr().err


def test_render_cli_rig_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig.circular(5, 300.0, 600.0, 24, 24, 5.0, start_deg=18.0, arc_deg=180.0)
    (tmp_path / "rig.json").write_text(rig.to_json())
    argv = ["render", "--out", str(tmp_path / "ds"), "--phantom", "casting", "--cases", "1",
            "--rig", str(tmp_path / "rig.json"), "--voxel-mm", "2.5", "--quiet", "--no-preview"]  # fmt: skip
    assert main(argv) == 0
    s = read_case(tmp_path / "ds" / "case_00000")
    assert s.images.shape == (5, 1, 24, 24)
    torch.testing.assert_close(s.rig.T_cam_from_ct, rig.T_cam_from_ct)
    assert main([*argv, "--views", "6"]) == 1
    assert "views: 6 given, but the rig file" in capsys.readouterr().err
    assert main([*argv, "--preset", "circular"]) == 1
    assert "replaces preset and detector_mm" in capsys.readouterr().err


def test_render_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    out = capsys.readouterr().out
    for flag in ("--phantom", "--cases", "--views", "--size", "--preset", "--seed", "--workers",
                 "--shard", "--backend", "--rig"):  # fmt: skip
        assert flag in out
