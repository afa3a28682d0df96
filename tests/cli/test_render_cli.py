"""``mvxray render`` end to end on a tiny casting phantom."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvxray.cli import main
from mvxray.datasets.format import read_dataset


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


def test_render_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    out = capsys.readouterr().out
    for flag in ("--phantom", "--cases", "--views", "--size", "--preset", "--seed", "--workers",
                 "--shard", "--backend"):  # fmt: skip
        assert flag in out
