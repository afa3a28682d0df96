"""``mvxray bench``: the ablation runner — detectors × lifters × views × size × augmentation."""

from __future__ import annotations

import argparse
from pathlib import Path

from mvxray.cli import HelpFormatter


def _csv(kind: type) -> object:
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if kind is bool:
            table = {"on": True, "off": False, "true": True, "false": False}
            bad = [t for t in items if t.lower() not in table]
            if bad:
                raise argparse.ArgumentTypeError(f"expected on/off values, found {bad}")
            return tuple(table[t.lower()] for t in items)
        return tuple(kind(t) for t in items)

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run an ablation grid and write results.jsonl, results.md and plots",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--grid", default="small", help="a ready grid name or a TOML file")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset in mvxray's format (else render the embedded phantom)",
    )
    p.add_argument(
        "--detectors",
        type=_csv(str),
        default=None,
        help="comma-separated detectors (names, 'demo' or checkpoint paths)",
    )
    p.add_argument("--lifters", type=_csv(str), default=None, help="comma-separated lifters")
    p.add_argument(
        "--views",
        type=_csv(int),
        default=None,
        help="comma-separated numbers of views, e.g. 2,3,5,10",
    )
    p.add_argument(
        "--size", dest="sizes", type=_csv(int), default=None, help="comma-separated image sizes, px"
    )
    p.add_argument("--augment", type=_csv(bool), default=None, help="on, off or on,off")
    p.add_argument("--cases", type=int, default=None, help="cases to render for the embedded data")
    p.add_argument(
        "--train-minutes", type=float, default=None, help="budget per trained model, minutes"
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvxray.benchmarks.ablation import Runner, load_grid, override

    grid = override(
        load_grid(args.grid),
        detectors=args.detectors,
        lifters=args.lifters,
        views=args.views,
        sizes=args.sizes,
        augment=args.augment,
        cases=args.cases,
        train_minutes=args.train_minutes,
    )
    Runner(grid, args.out, data=args.data, progress=not args.no_progress).run()
    print(f"wrote {args.out / 'results.jsonl'} and {args.out / 'results.md'}")
    return 0
