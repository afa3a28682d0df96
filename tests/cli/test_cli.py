"""The console entry point: help, info and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mvxray.cli import COMMANDS, build_parser, main, run_command


def test_help_lists_every_available_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert name in out


def test_info_prints_versions_device_and_cache(
    capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MVXRAY_CACHE", str(tmp_path / "cache"))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("mvxray", "torch", "kornia", "diffdrr", "device", "cache"):
        assert key in out
    assert str(tmp_path / "cache") in out
    assert (tmp_path / "cache").is_dir()


def test_console_script_runs_as_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mvxray.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: mvxray" in proc.stdout


def test_errors_are_one_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["info"])

    def boom(_: object) -> int:
        raise FileNotFoundError("case.json not found in /nowhere")

    args.func = boom
    assert run_command(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mvxray info: error: case.json not found in /nowhere"]


def test_debug_shows_the_traceback() -> None:
    args = build_parser().parse_args(["--debug", "info"])

    def boom(_: object) -> int:
        raise FileNotFoundError("missing")

    args.func = boom
    with pytest.raises(FileNotFoundError, match="missing"):
        run_command(args)


def test_command_list_is_unique() -> None:
    assert len(set(COMMANDS)) == len(COMMANDS)
