"""``mvxray train-3d``: train a learned lifter (mv2d, rayemb, voting_fpr) on a dataset's training split."""

from __future__ import annotations

import argparse
from pathlib import Path

from mvxray.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-3d",
        help="train a learned 2D→3D lifter on frozen 2D detections (or the oracle)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    p.add_argument(
        "--detector", default="oracle", help="saved 2D detector file, or 'oracle' / 'log_blob'"
    )
    p.add_argument("--lifter", default="mv2d", help="trainable lifter: mv2d, rayemb or voting_fpr")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, model)")
    p.add_argument("--split", default="train", help="training split")
    p.add_argument("--val-split", default="val", help="validation split ('' for none)")
    p.add_argument("--epochs", type=int, default=24, help="passes over the training cases")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=2, help="cases per step")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: the lifter's; mv2d 2e-4 as the seed)",
    )
    p.add_argument(
        "--joint",
        action="store_true",
        help="train the 2D detector (a torch detector: file or name) with the lifter, "
        "L = L2d + 0.1·L3d; writes OUT/detector.pt too (share its backbone: --opt encoder=detector)",
    )
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument(
        "--detector-opt", action="append", metavar="KEY=VALUE", help="option of a named detector"
    )
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="lifter config option")
    p.add_argument(
        "--train-opt", action="append", metavar="KEY=VALUE", help="other training option"
    )
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mvxray import lifting
    from mvxray.cli.lift import parse_options, resolve_detector
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.distributed import init_from_env, shutdown
    from mvxray.io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lifter not in lifting.TRAINABLE:
        raise KeyError(
            f"--lifter {args.lifter!r}: not trainable; expected one of {sorted(lifting.TRAINABLE)}"
        )
    opts = parse_options(args.opt)
    if args.device and args.lifter == "mv2d":  # mv2d places its network (and joint detector)
        opts["device"] = args.device
    lifter = lifting.build(args.lifter, **opts)
    detector = resolve_detector(args.detector, parse_options(args.detector_opt))
    if args.device and args.lifter != "mv2d":  # the others: move what has weights
        for part in (detector, lifter):
            module = getattr(part, "model", None)
            if isinstance(module, torch.nn.Module):
                module.to(args.device)
    train = MultiViewDataset(args.data, args.split)
    val = None
    if args.val_split:
        try:
            val = MultiViewDataset(args.data, args.val_split)
        except KeyError:
            val = None
    if args.lifter == "mv2d":
        kwargs = {
            "detector": detector,
            "joint": args.joint,
            "out_dir": args.out,
            "resume": not args.no_resume,
            "progress": not args.no_progress,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "detector"}
    elif args.lifter == "voting_fpr":  # learns from the detector's output on the cases
        kwargs = {"detector": detector, "progress": not args.no_progress}
    elif args.joint:
        raise ValueError(f"--joint: only mv2d trains with a 2D detector, not {args.lifter!r}")
    else:  # rayemb trains its embedding from the views alone (no detector, no epochs)
        kwargs = {} if args.lr is None else {"lr": args.lr}
    metrics = lifter.fit(train, val, **kwargs, **parse_options(args.train_opt))  # type: ignore[attr-defined]
    info = init_from_env(args.device)  # under torchrun only rank 0 writes
    if info.is_main:
        lifter.save(args.out / f"{args.lifter}.pt")  # type: ignore[attr-defined]
        if args.joint:
            detector.save(args.out / "detector.pt")
        atomic_write_json(args.out / "train_metrics.json", metrics)
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(f"trained {args.lifter} on {len(train)} case(s) → {args.out}: {shown}")
    shutdown(info)
    return 0
