"""``mvxray lift``: lift the 2D detections of every case of a dataset to 3D boxes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mvxray.cli import HelpFormatter
from mvxray.io import atomic_write_json


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` → dict; values are parsed as JSON when they can be (numbers, bools).

    Example:
        >>> parse_options(["gate_px=3", "selection=top", "augment=false"])
        {'gate_px': 3, 'selection': 'top', 'augment': False}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"option {item!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def resolve_detector(spec: str | Path, options: dict[str, Any], flag: str = "--detector") -> Any:
    """A detector from a saved file, ``demo`` (the shipped one), or built by name (``oracle``,
    ``log_blob``, or an untrained torch detector).

    Raises:
        FileNotFoundError: ``spec`` is neither a detector name nor an existing file.
    """
    from mvxray import detectors2d

    spec = str(spec)
    if spec == "demo" and not Path(spec).exists():
        return detectors2d.load_demo_detector()
    if spec in detectors2d.DETECTORS and not Path(spec).exists():
        return detectors2d.build(spec, **options)
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"{flag} {spec!r}: no such file, not 'demo' and not a detector name "
            f"({sorted(detectors2d.DETECTORS)})"
        )
    return detectors2d.load(spec)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lift",
        help="lift 2D detections of every case to 3D boxes (CT mm) with a named lifter",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    p.add_argument(
        "--detector",
        required=True,
        help="saved 2D detector file, 'demo' (the shipped one), or 'oracle' / 'log_blob'",
    )
    p.add_argument(
        "--lifter",
        default="triangulation",
        help="triangulation, voting, voting_fpr, mv2d or rayemb",
    )
    p.add_argument(
        "--model", type=Path, default=None, help="saved lifter (mv2d, rayemb, voting_fpr)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: one <case_id>.json per case"
    )
    p.add_argument("--split", default="test", help="split to run on (all, train, val, test)")
    p.add_argument(
        "--detector-opt", action="append", metavar="KEY=VALUE", help="option of a named detector"
    )
    p.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="lifter config option (untrained lifters)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from mvxray import lifting
    from mvxray.benchmarks.metrics3d import evaluate_3d
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.detectors2d import predict_sample

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lifter not in lifting.LIFTERS:
        raise KeyError(
            f"--lifter {args.lifter!r}: unknown; expected one of {sorted(lifting.LIFTERS)}"
        )
    if args.model is not None:
        lifter = lifting.load(args.lifter, args.model)
    elif args.lifter in lifting.TRAINABLE:
        raise ValueError(f"--lifter {args.lifter} needs --model (train one with mvxray train-3d)")
    else:
        lifter = lifting.build(args.lifter, **parse_options(args.opt))
    detector = resolve_detector(args.detector, parse_options(args.detector_opt))
    check = getattr(lifter, "check_detector", None)  # voting_fpr: fitted on this detector?
    if callable(check):
        check(detector)
    ds = MultiViewDataset(args.data, args.split)
    preds, gts = [], []
    for i in tqdm(range(len(ds)), desc=f"lift {args.lifter}", disable=args.no_progress):
        sample = ds[i]
        case_id = sample.case_id or ds.case_ids[i]
        out = lifter.lift(sample, predict_sample(detector, sample))
        preds.append(out)
        gts.append(sample.boxes3d)
        atomic_write_json(
            args.out / f"{ds.case_ids[i]}.json",
            {
                "format": "mvxray-lifted",
                "case_id": case_id,
                "lifter": args.lifter,
                "detector": str(args.detector),
                "boxes3d_ct_mm": out.boxes3d.detach().double().cpu().tolist(),
                "scores": out.scores.detach().double().cpu().tolist(),
                "support": out.support.detach().bool().cpu().tolist(),
            },
        )
    metrics = evaluate_3d(preds, gts)
    atomic_write_json(args.out / "metrics.json", metrics)
    print(
        f"{len(ds)} case(s), {sum(len(p) for p in preds)} box(es) → {args.out}; "
        f"median centre error {metrics['median_centre_error_mm']:.2f} mm, "
        f"sens@1FP {metrics['sens@1FP']:.2f}, CPM {metrics['CPM']:.2f}"
    )
    return 0
