"""``mvxray demo``: render multi-view X-rays from a real CT, detect in 2D, lift to 3D, report mm."""

from __future__ import annotations

import argparse
from pathlib import Path

from mvxray.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="render, detect, lift and report the 3D error in mm on the embedded data",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--phantom", default="chest", choices=["chest", "casting"], help="embedded data")
    p.add_argument("--cases", type=int, default=3, help="held-out cases to render and evaluate")
    p.add_argument("--size", type=int, default=256, help="detector size, px (seed rig, 10 views)")
    p.add_argument("--seed", type=int, default=9001, help="seed of the demo cases")
    p.add_argument(
        "--detector", default=None, help="detector name or checkpoint (default: shipped)"
    )
    p.add_argument("--lifter", default="voting", help="lifter name")
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="minimum 3D box score (default: the lifter's operating point, "
        "mvxray.demo.OPERATING_POINTS: voting 0.1, triangulation 0.2)",
    )
    p.add_argument("--data", type=Path, default=None, help="use this dataset instead of rendering")
    p.add_argument("--out", type=Path, default=None, help="write summary.json and figures here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvxray.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            phantom=args.phantom,
            cases=args.cases,
            size=args.size,
            seed=args.seed,
            detector=args.detector,
            lifter=args.lifter,
            **({} if args.score_threshold is None else {"score_threshold": args.score_threshold}),
            data=args.data,
            out=args.out,
            progress=not args.no_progress,
        )
    )
    return 0
