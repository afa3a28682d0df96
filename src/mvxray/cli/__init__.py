"""The ``mvxray`` command line. Each sub-command lives in its own module under ``mvxray.cli``
and exposes ``register(subparsers)``; heavy imports happen inside the command, so ``--help``
stays fast."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

#: Sub-command modules, in the order ``mvxray --help`` lists them.
COMMANDS = (
    "info",
    "demo",
    "render",
    "train2d",
    "detect",
    "train3d",
    "lift",
    "register",
    "bench",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter without its two kinds of noise: ``(default: None)``, and a
    second default after a help that states its own (``--out``'s "default: in the cache")."""

    # argparse's public hook for this is the formatter class; the per-option decision is its
    # _get_help_string, which ArgumentDefaultsHelpFormatter itself overrides the same way.
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class CLIError(Exception):
    """A user-facing error: printed as one line (no traceback unless ``--debug``)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="mvxray",
        description="Find and localize small 3D indications from several calibrated X-ray views.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        modname = f"mvxray.cli.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mvxray`` console script."""
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; errors become one line on stderr unless ``--debug``."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mvxray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"mvxray {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
