"""Training-step cost of the 2D detectors: ``python -m mvxray.benchmarks.train_step``.

For each detector with the benchmark's options (``BENCH_DETECTORS`` / ``BENCH_TRAINING`` of
:mod:`mvxray.benchmarks.detect2d`), measured in one run on the same 256-px views: seconds per
optimizer step of :func:`~mvxray.detectors2d.train.fit_detector` for the reference (one crop per
prepared view, float32, torchvision's RoIAlign sampling) and for the faster settings — several crops per prepared view
(``crops_per_view``), bfloat16 autocast (``precision="auto"``: bf16 only where the CPU or GPU
runs it natively) and, for Faster R-CNN, one RoIAlign sample per bin (``roi_sampling_ratio=1``)
— each as a speed-up over the reference. Prints a table, then one last line of JSON.

Step cost does not depend on what the views show (crops and sampled RoIs have fixed sizes), so
the views are noise with a few boxes each: no rendering needed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from mvxray.cli import HelpFormatter
from mvxray.datasets.base import MultiViewSample
from mvxray.geometry import Rig

#: (label, detector options, training options) per detector, the reference first: the
#: benchmark presets with one crop per view, float32 and torchvision's RoIAlign sampling.
VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("reference (1 crop per view, fp32)", {}, {"crops_per_view": 1, "precision": "fp32"}),
    ("4 crops per view", {}, {"crops_per_view": 4, "precision": "fp32"}),
    ("4 crops per view, precision auto", {}, {"crops_per_view": 4, "precision": "auto"}),
]
FASTER_RCNN_VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (label, {"roi_sampling_ratio": 2}, train) for label, _, train in VARIANTS
] + [
    (
        "4 crops per view, precision auto, roi_sampling_ratio 1",
        {"roi_sampling_ratio": 1},
        {"crops_per_view": 4, "precision": "auto"},
    )
]


def noise_cases(cases: int, size: int, seed: int = 0) -> list[MultiViewSample]:
    """``cases`` samples of the seed rig at ``size`` px: uniform noise, 3 boxes of 6–14 px per view."""
    g = torch.Generator().manual_seed(seed)
    rig = Rig.seed(size)
    V, out = rig.num_views, []
    for i in range(cases):
        corner = 16 + torch.rand(V, 3, 2, generator=g) * (size - 48)
        wh = 6 + torch.rand(V, 3, 2, generator=g) * 8
        out.append(
            MultiViewSample(
                images=torch.rand(V, 1, size, size, generator=g),
                rig=rig,
                boxes3d=torch.zeros(3, 6),
                boxes2d=torch.cat([corner, corner + wh], -1),
                visible2d=torch.ones(V, 3, dtype=torch.bool),
                labels=torch.zeros(3, dtype=torch.long),
                case_id=f"noise_{i}",
            )
        )
    return out


def step_seconds(
    name: str, det_options: dict[str, Any], train_options: dict[str, Any], data: list, steps: int
) -> float:
    """Seconds per step of ``steps`` training steps (after two warm-up steps)."""
    from mvxray import detectors2d
    from mvxray.benchmarks.detect2d import BENCH_DETECTORS, BENCH_TRAINING

    det = detectors2d.build(name, **(BENCH_DETECTORS[name] | det_options))
    options = BENCH_TRAINING[name] | train_options | {"progress": False, "seed": 0}
    det.fit(data, max_iters=2, **options)  # warm-up: first steps pay allocation and caches
    fit = det.fit(data, max_iters=steps, **options)
    return fit["seconds"] / fit["iterations"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mvxray.benchmarks.train_step",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--detectors", default="yolo,faster_rcnn,heatmap", help="comma-separated")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--size", type=int, default=256, help="view size, px")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = noise_cases(2, args.size)
    rows = []
    for name in [d for d in args.detectors.split(",") if d]:
        variants = FASTER_RCNN_VARIANTS if name == "faster_rcnn" else VARIANTS
        reference = None
        for label, det_options, train_options in variants:
            s = step_seconds(name, det_options, train_options, data, args.steps)
            reference = reference or s
            rows.append(
                {"detector": name, "variant": label, "s_per_step": s, "speedup": reference / s}
            )
            print(f"| {name} | {label} | {s:.3f} | {reference / s:.2f}x |", flush=True)
    print(json.dumps({"benchmark": "train_step", "threads": args.threads, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
