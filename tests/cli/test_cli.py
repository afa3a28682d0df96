"""The console entry point: help, info and one-line errors."""

from __future__ import annotations

import importlib
import re
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


#: Sub-command name -> its parser.
_SUBPARSERS = next(a for a in build_parser()._actions if a.dest == "command").choices
_BENCHMARKS = ("detect2d", "geometry", "lift3d", "registration", "render", "train_step")
_SCRIPTS = [*(f"mvxray.benchmarks.{m}" for m in _BENCHMARKS), "mvxray.detectors2d.train_demo"]


def _assert_defaults_once(main_fn, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main_fn([*argv, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "usage:" in text
    assert "(default: None)" not in text
    # an option whose help says its default gets no second, generated one
    assert not re.search(r"default:[^()]*\) \(default:", text), text


@pytest.mark.parametrize("command", sorted(_SUBPARSERS))  # type: ignore[arg-type]
def test_command_help_states_each_default_once(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _assert_defaults_once(main, [command], capsys)


def test_every_command_option_has_help() -> None:
    missing = [
        f"{name} {a.option_strings[0]}"
        for name, parser in _SUBPARSERS.items()  # type: ignore[union-attr]
        for a in parser._actions
        if a.option_strings and not a.help
    ]
    assert missing == []


@pytest.mark.parametrize("module", _SCRIPTS)
def test_script_help_states_each_default_once(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _assert_defaults_once(importlib.import_module(module).main, [], capsys)


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
