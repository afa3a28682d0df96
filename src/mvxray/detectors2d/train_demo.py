"""Reproduce the demo detector shipped in ``mvxray/assets/``: ``python -m mvxray.detectors2d.train_demo``.

Renders chest-phantom cases with the seed's 10-view rig at 256 px (cached), trains a detector
(``--detector``, with the benchmark's settings: ``BENCH_DETECTORS`` / ``BENCH_TRAINING`` of
:mod:`mvxray.benchmarks.detect2d`, except where :data:`DEMO_RECIPE` records the shipped
detector's own) on the ``train`` split within a wall-time budget on the CPU, reports 2D metrics
on the held-out ``test`` split, and writes the detector (one file, config + weights) to
``mvxray/assets/demo_detector.pt`` and its metrics next to it.
``mvxray demo`` loads it with :func:`load_demo_detector`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mvxray.cli import HelpFormatter

#: File name of the shipped demo detector inside :func:`mvxray.paths.assets_dir`.
DEMO_DETECTOR = "demo_detector.pt"
#: Its metrics and provenance (held-out 2D recall / FP, training time, seeds).
DEMO_METRICS = "demo_detector.json"
#: What the shipped detector was trained with where it differs from the benchmark's preset
#: (detector config, training options): the full widths, one crop per view, float32.
DEMO_RECIPE: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "heatmap": (
        {"widths": (16, 32, 64, 128, 256)},
        {"crops_per_view": 1, "precision": "fp32"},
    ),
}


def load_demo_detector() -> Any:
    """The detector shipped with mvxray (trained by this module).

    Raises:
        FileNotFoundError: the asset is missing (run ``python -m mvxray.detectors2d.train_demo``).
    """
    from mvxray.detectors2d import load
    from mvxray.paths import assets_dir

    path = assets_dir() / DEMO_DETECTOR
    if not path.is_file():
        raise FileNotFoundError(
            f"demo detector not found at {path}; run: python -m mvxray.detectors2d.train_demo"
        )
    return load(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mvxray.detectors2d.train_demo",
        description="Train the demo detector shipped in mvxray/assets/.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--detector", default="heatmap", help="a torch detector: heatmap, yolo, ..."
    )
    parser.add_argument("--cases", type=int, default=24, help="chest cases (train + test)")
    parser.add_argument("--size", type=int, default=256, help="view size, px")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="datasets to use instead of rendering (train on their train splits, test on their "
        "test splits)",
    )
    parser.add_argument(
        "--init",
        help="fine-tune this saved detector ('demo': the shipped one) instead of a fresh one",
    )
    parser.add_argument("--lr", type=float, help="learning rate (default: the benchmark's)")
    parser.add_argument(
        "--blur-px", type=float, help="largest augmentation blur σ, px (default: the loop's)"
    )
    parser.add_argument("--out", type=Path, help="output file (default: the package's assets)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the last run of this detector (cache/train_demo/<detector>/last.pt)",
    )
    args = parser.parse_args(argv)

    import torch

    from mvxray import detectors2d
    from mvxray.benchmarks.detect2d import (
        BENCH_DETECTORS,
        BENCH_TRAINING,
        chest_dataset,
        evaluate_detector,
    )
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.io import atomic_write_text
    from mvxray.paths import assets_dir, cache_dir

    torch.set_num_threads(args.threads)
    data = args.data or [chest_dataset(args.cases, args.size)]
    out = args.out or assets_dir() / DEMO_DETECTOR
    name = args.detector
    if name not in BENCH_TRAINING:
        raise ValueError(
            f"--detector: expected a trainable detector {sorted(BENCH_TRAINING)}, found {name!r}"
        )
    demo_config, demo_training = DEMO_RECIPE.get(name, ({}, {}))
    config = BENCH_DETECTORS[name] | demo_config
    if args.init is None:
        det = detectors2d.build(name, **config)
    else:
        det = load_demo_detector() if args.init == "demo" else detectors2d.load(args.init)
        if det.name != name:
            raise ValueError(f"--init {args.init}: a {det.name} detector, not {name}")
    given = {"lr": args.lr, "blur_px": args.blur_px}
    training = (
        BENCH_TRAINING[name] | demo_training | {k: v for k, v in given.items() if v is not None}
    )
    splits = [MultiViewDataset(d, "train") for d in data]
    train = [ds[i] for ds in splits for i in range(len(ds))]
    fit = det.fit(
        train,
        out=cache_dir() / "train_demo" / name,
        max_minutes=args.minutes,
        max_iters=10**9,
        seed=args.seed,
        resume=args.resume,
        **training,
    )
    det.save(out)
    tests = [MultiViewDataset(d, "test") for d in data]
    metrics, infer_s = evaluate_detector(
        det, [t[i] for t in tests for i in range(len(t))], per_view=False
    )
    report = {
        "detector": name,
        "config": config if args.init is None else asdict(det.config),
        "training": {
            **training,
            "minutes": args.minutes,
            "threads": args.threads,
            "init": args.init,
        },
        "fit": fit,
        "data": [
            {"path": str(d), "train_cases": t.index.splits["train"], "test_cases": t.case_ids}
            for d, t in zip(data, tests)
        ],
        "test": {**metrics, "infer_s_per_view": infer_s},
        "command": "python -m mvxray.detectors2d.train_demo "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    atomic_write_text(out.with_name(DEMO_METRICS), json.dumps(report, indent=1))
    print(json.dumps(report["test"]))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
