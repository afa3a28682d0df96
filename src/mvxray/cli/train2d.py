"""``mvxray train-2d``: train a 2D detector on an mvxray dataset."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mvxray.cli import HelpFormatter
from mvxray.cli.lift import parse_options


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value (``strides=[4,8,16]``), else the string: an argparse type,
    so a malformed option is a usage error."""
    try:
        ((key, value),) = parse_options([text]).items()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return key, value


#: ``train-2d`` options that, when given, replace the benchmark preset's TrainConfig fields
_TRAIN_OPTIONS = {
    "lr": "lr",
    "batch": "batch_size",
    "warmup": "warmup_iters",
    "crops_per_view": "crops_per_view",
    "precision": "precision",
    "blur_px": "blur_px",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-2d",
        help="train a 2D detector (faster_rcnn, yolo, heatmap; log_blob calibrates) on a dataset",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    p.add_argument(
        "--detector", default="yolo", help="faster_rcnn, yolo, heatmap, log_blob or oracle"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (model.pt, last.pt, metrics.json)"
    )
    p.add_argument("--epochs", type=int, default=12, help="passes over the training views")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--size", type=int, default=None, help="resize views to this square size, px")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images (views or crops) per step (default: the detector's benchmark value)",
    )
    p.add_argument(
        "--crop",
        type=int,
        default=128,
        help="train on random crops of this size, px (0: whole views)",
    )
    p.add_argument(
        "--crops-per-view",
        type=int,
        default=None,
        help="crops cut from each prepared view (a divisor of --batch; default: the "
        "detector's benchmark value, or the largest divisor of --batch below it; 1 with --crop 0)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default=None,
        help="bf16: bfloat16 autocast (CPUs with AMX / AVX-512-BF16, recent GPUs); auto: bf16 "
        "where the device runs it natively (default: the detector's benchmark value, else fp32)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: the detector's benchmark value)",
    )
    p.add_argument(
        "--blur-px",
        type=float,
        default=None,
        help="largest augmentation blur sigma, px (default: TrainConfig.blur_px; more for "
        "blurrier imaging chains)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up iterations (default: the detector's benchmark value)",
    )
    p.add_argument("--train-split", default="train", help="split to train on")
    p.add_argument(
        "--val-split", default="val", help="split to report metrics on (skipped if absent)"
    )
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="detector config option, e.g. backbone=resnet18_fpn (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--procs",
        type=int,
        default=1,
        help="train data-parallel on this many local processes (as torchrun --nproc-per-node; "
        "--threads split among them; each process trains on its own --batch)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mvxray import detectors2d
    from mvxray.benchmarks.detect2d import BENCH_DETECTORS, BENCH_TRAINING, evaluate_detector
    from mvxray.datasets.format import read_dataset
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.detectors2d.train import TrainConfig
    from mvxray.io import atomic_write_text

    if args.detector not in detectors2d.DETECTORS:
        raise ValueError(
            f"--detector: unknown {args.detector!r}; available: {sorted(detectors2d.DETECTORS)}"
        )
    if args.procs != 1:
        return _spawn(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    index = read_dataset(args.data)
    train = list(MultiViewDataset(args.data, args.train_split))
    if not train:
        raise ValueError(f"--data: split {args.train_split!r} of {args.data} is empty")
    options = {**BENCH_DETECTORS.get(args.detector, {}), **dict(args.option)}
    if args.size:  # an explicit size replaces the preset's upsampling
        options.pop("input_scale", None)
        options["input_size"] = args.size
    det = detectors2d.build(args.detector, **options)
    if hasattr(det, "training_loss"):  # the torch detectors share one training loop
        tr = dict(BENCH_TRAINING.get(args.detector, {}))  # given options replace the preset's
        tr.update(
            epochs=args.epochs,
            max_iters=args.iters,
            max_minutes=args.minutes,
            crop_px=args.crop or None,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
        for arg, key in _TRAIN_OPTIONS.items():
            if getattr(args, arg) is not None:
                tr[key] = getattr(args, arg)
        if args.crops_per_view is None:  # the preset's, fitted to the batch and --crop
            batch = tr.get("batch_size", TrainConfig.batch_size)
            tr["crops_per_view"] = math.gcd(batch, tr.get("crops_per_view", 1)) if args.crop else 1
        fit = det.fit(train, out=args.out, resume=args.resume, **tr)
    else:
        fit = det.fit(train)
        det.save(args.out / "model.pt")
    from mvxray.distributed import init_from_env, shutdown

    info = init_from_env(args.device)  # under torchrun, only rank 0 evaluates and writes
    if not info.is_main:
        shutdown(info)
        return 0
    report: dict[str, Any] = {"detector": args.detector, "data": str(args.data), "fit": fit}
    if index.splits.get(args.val_split):
        metrics, infer_s = evaluate_detector(det, MultiViewDataset(args.data, args.val_split))
        report[args.val_split] = {**metrics, "infer_s_per_view": infer_s}
    atomic_write_text(args.out / "metrics.json", json.dumps(report, indent=1))
    print(json.dumps(report))
    print(f"model: {args.out / 'model.pt'}")
    shutdown(info)
    return 0


def _spawn(args: argparse.Namespace) -> int:
    """``run`` on ``args.procs`` processes (:func:`mvxray.distributed.spawn`); rank 0 writes."""
    import os

    import torch

    from mvxray import detectors2d
    from mvxray.distributed import spawn

    # the detectors `run` trains in the shared loop (the same test, on the class)
    trainable = sorted(n for n, c in detectors2d.DETECTORS.items() if hasattr(c, "training_loss"))
    if args.procs < 1:
        raise ValueError(f"--procs: expected >= 1, found {args.procs}")
    if args.detector not in trainable:
        raise ValueError(f"--procs: only {', '.join(trainable)} train on several processes")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--procs: already running under torchrun; use one or the other")
    threads = max(1, (args.threads or torch.get_num_threads()) // args.procs)
    spawn(run, args.procs, argparse.Namespace(**{**vars(args), "procs": 1, "threads": threads}))
    return 0
