"""2D detection quality benchmark: ``python -m mvxray.benchmarks.detect2d``.

On the embedded ``chest`` phantom (256 px, the seed's 10-view rig, nodules 6–20 mm), train each
detector within a wall-time budget (``--minutes``) or a number of optimizer steps (``--iters``:
as many on every CPU) on the train cases, then report on held-out cases: 2D AP@0.5 and recall at
0.5 / 1 / 2 / 4 false positives per image (FROC points), training and inference time. Prints a
table and, last, one JSON line.

``--data DIR [DIR ...]`` runs on datasets in mvxray's format instead: the ``train`` splits of all
train, their ``test`` splits are scored — or every case of ``--test DIR``, an independent set.
``--procs N`` trains each learned detector data-parallel on N processes (as ``torchrun`` does),
the ``--threads`` split among them; each process trains on its own batch, so a step sees N times
as many crops. ``--option NAME.KEY=VALUE`` (repeatable) changes one option of detector ``NAME``'s
preset: a field of its config class (``heatmap.widths=[16,32,64,128,256]``) or of
:class:`~mvxray.detectors2d.train.TrainConfig` (``heatmap.crops_per_view=1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mvxray.benchmarks.metrics2d import FPPI_POINTS, DetectionEvaluator
from mvxray.cli import HelpFormatter
from mvxray.cli.lift import parse_options
from mvxray.detectors2d.base import predict_sample

#: Detector options used by the benchmark (and the shipped demo detector): CPU-sized models
#: with stride-4 features and small anchors for 4–15 px indications.
BENCH_DETECTORS: dict[str, dict[str, Any]] = {
    # Views upsampled 2x: a 5-15 px nodule covers 4x the stride-4 cells. 29 min on one core, 30
    # test cases, recall at 1 FP/image alone / made multi-view: YOLO 0.15 / 0.43 -> 0.19 / 0.53,
    # Faster R-CNN 0.10 / 0.35 -> 0.11 / 0.49.
    # YOLO also learns the heatmap's per-pixel centres as an auxiliary loss: 29 min on one core
    # of an AVX2-only CPU, recall at 1 FP/image alone / made multi-view 0.11 / 0.29 -> 0.16 / 0.45;
    # on both of its cores (--procs 2) 0.17 / 0.55 -> 0.19 / 0.55, 0.60 with the head's heatmap
    # as the vote's evidence.
    "yolo": {"model": "yolov8n-p2.yaml", "input_scale": 2.0, "aux_heat_weight": 1.0},
    "faster_rcnn": {
        "input_scale": 2.0,
        "backbone": "resnet18_fpn",
        "strides": (4, 8, 16, 32),
        "anchor_scales": (1.0, 2.0, 4.0),
        "box_batch_size_per_image": 128,
        "representation_size": 256,
        "roi_sampling_ratio": 1,
    },
    # Half the shipped detector's widths: a step costs half, and within 29 minutes on 2 cores
    # that learns more (made multi-view 0.76 against 0.62 on a slow CPU, 0.86-0.89 on a faster one).
    "heatmap": {"widths": (8, 16, 32, 64, 128)},
    "log_blob": {},
    "oracle": {},
}
#: Training options per detector (crops, several per prepared view, and bf16 where the CPU runs
#: it natively make a CPU step cheap; see docs/detectors.md and benchmarks.train_step). The
#: shipped detector's own recipe is ``train_demo.DEMO_RECIPE``.
_CHEAP_STEP = {"crops_per_view": 4, "precision": "auto"}
BENCH_TRAINING: dict[str, dict[str, Any]] = {
    # 16 crops per step instead of 8: fewer but better steps; three runs of 29 min on 2 cores made
    # multi-view 0.80-0.82 against 0.76 (and 32 crops 0.75; docs/detector-benchmarks.md).
    "yolo": {"batch_size": 16, "crop_px": 128, "lr": 2e-3, "warmup_iters": 100, **_CHEAP_STEP},
    "heatmap": {"batch_size": 8, "crop_px": 128, "lr": 2e-3, "warmup_iters": 100, **_CHEAP_STEP},
    "faster_rcnn": {
        "batch_size": 4,
        "crop_px": 128,
        "lr": 2e-4,
        "warmup_iters": 100,
        **_CHEAP_STEP,
    },
}


def evaluate_detector(
    detector: Any, dataset: Any, per_view: bool = False
) -> tuple[dict[str, Any], float]:
    """2D metrics of ``detector`` on every view of ``dataset`` and the inference seconds per view.

    Args:
        detector: any :class:`~mvxray.detectors2d.base.Detector2D`.
        dataset: iterable of :class:`~mvxray.datasets.base.MultiViewSample`.
        per_view: also report metrics per view index.

    Returns:
        ``(metrics, seconds_per_view)``; metrics as :meth:`DetectionEvaluator.compute`.
    """
    ev = DetectionEvaluator()
    seconds, views = 0.0, 0
    for sample in dataset:
        t = time.perf_counter()
        dets = predict_sample(detector, sample)
        seconds += time.perf_counter() - t
        views += len(dets)
        ev.add_sample(dets, sample.boxes2d, sample.visible2d)
    return ev.compute(per_view=per_view), seconds / max(views, 1)


def render_phantom_dataset(
    root: str | Path,
    cases: int,
    size: int = 256,
    phantom: str = "chest",
    test_fraction: float = 0.25,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Render ``cases`` phantom cases with the seed's rig into an mvxray dataset at ``root``.

    Cases already on disk are kept (a rerun only renders what is missing); the last
    ``test_fraction`` of the seeds form the ``test`` split, the rest ``train``.
    """
    from tqdm.auto import tqdm

    from mvxray.datasets.base import MultiViewSample
    from mvxray.datasets.format import is_complete, write_case, write_dataset
    from mvxray.datasets.phantoms import PHANTOMS
    from mvxray.datasets.render import render_case
    from mvxray.geometry import Rig

    root = Path(root)
    rig = Rig.seed(size)
    names = [f"{phantom}_{seed + i:04d}" for i in range(cases)]
    for i, name in enumerate(tqdm(names, desc=f"render {phantom}", disable=not progress)):
        if is_complete(root / name):
            continue
        case = PHANTOMS[phantom](seed + i)
        rendered = render_case(case.volume, rig, case.boxes3d)
        sample = MultiViewSample(
            images=rendered.images,
            rig=rig,
            boxes3d=case.boxes3d.float(),
            boxes2d=rendered.boxes2d,
            visible2d=rendered.visible2d,
            labels=case.labels,
            case_id=name,
            meta=case.meta,
        )
        write_case(
            root / name, sample, boxes2d_mask=rendered.boxes2d_mask, preview=False, overwrite=True
        )
    n_test = max(1, round(test_fraction * cases)) if cases > 1 else 0
    splits = {"train": names[: cases - n_test], "test": names[cases - n_test :]}
    write_dataset(root, names, splits, meta={"phantom": phantom, "size": size, "rig": "seed"})
    return root


def chest_dataset(cases: int, size: int, progress: bool = True) -> Path:
    """The benchmarks' chest dataset in the cache (rendered once by :func:`render_phantom_dataset`)."""
    from mvxray.paths import cache_dir

    root = cache_dir() / "datasets" / f"chest_{size}px_{cases}cases"
    return render_phantom_dataset(root, cases, size, progress=progress)


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["detector", "ap50", *[f"recall@{f:g}fp" for f in FPPI_POINTS], "train_s", "infer_s"]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [
            r[c] if isinstance(r[c], str) else f"{r[c]:.3f}" if c != "train_s" else f"{r[c]:.0f}"
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_options(options: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``{"NAME.KEY": value}`` → per detector ``(config options, training options)``.

    A key goes to the detector when it is a field of ``NAME``'s config class, to training when it
    is one of :class:`~mvxray.detectors2d.train.TrainConfig`, to both when it is both
    (``batch_size``: views per forward pass at inference, crops per step in training).

    Raises:
        ValueError: no ``NAME.`` prefix, a detector the benchmark does not train, or a key of
            neither class (the two classes' fields are listed).
    """
    from mvxray.detectors2d import DETECTORS
    from mvxray.detectors2d.train import TrainConfig

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for item, value in options.items():
        name, _, key = item.partition(".")
        if not key or name not in BENCH_TRAINING:
            raise ValueError(
                f"option {item!r}: expected NAME.KEY with NAME one of {sorted(BENCH_TRAINING)}"
            )
        det_fields = {f.name for f in dataclasses.fields(DETECTORS[name].config_class)}
        det_opts, train_opts = out.setdefault(name, ({}, {}))
        if key in det_fields:
            det_opts[key] = value
        if key in train_fields:
            train_opts[key] = value
        if key not in det_fields | train_fields:
            raise ValueError(
                f"option {item!r}: {key!r} is neither a {name} config field "
                f"{sorted(det_fields)} nor a training option {sorted(train_fields)}"
            )
    return out


def _train(
    name: str,
    train: list[Any],
    out: Path,
    budget: dict[str, Any],
    seed: int,
    progress: bool,
    options: tuple[dict[str, Any], dict[str, Any]],
) -> tuple[Any, dict[str, float]]:
    """Train the benchmark's ``name`` detector on ``train`` within ``budget`` (:func:`_budget`):
    (detector, fit); ``options``: (config, training) options replacing the preset's."""
    from mvxray import detectors2d

    det = detectors2d.build(name, **(BENCH_DETECTORS[name] | options[0]))
    settings = budget | {"seed": seed, "progress": progress}
    fit = det.fit(train, out=out / name, **(settings | BENCH_TRAINING[name] | options[1]))
    return det, fit


def _train_process(
    name: str,
    datasets: list[Path],
    out: Path,
    budget: dict[str, Any],
    seed: int,
    progress: bool,
    threads: int,
    options: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """One process of a data-parallel :func:`_train`; rank 0 writes ``fit.json`` by the model."""
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.distributed import init_from_env
    from mvxray.io import atomic_write_text

    torch.set_num_threads(threads)
    train = [s for d in datasets for s in MultiViewDataset(d, "train")]
    _, fit = _train(name, train, out, budget, seed, progress, options)
    if init_from_env().is_main:
        atomic_write_text(out / name / "fit.json", json.dumps(fit))


def _budget(minutes: float | None, iters: int | None) -> dict[str, Any]:
    """TrainConfig's budget: stop at whichever of ``minutes`` and ``iters`` (None: unbounded)
    runs out first; the cosine anneals over that one."""
    if minutes is None and iters is None:
        raise ValueError("a training budget: expected minutes or iters, found neither")
    return {"max_minutes": minutes, "max_iters": 10**9 if iters is None else iters}


def run(
    detectors: Sequence[str],
    data: Path | Sequence[Path],
    minutes: float | None,
    out: Path,
    seed: int = 0,
    progress: bool = True,
    multiview: bool = False,
    test: Path | None = None,
    rescore: bool = False,
    processes: int = 1,
    options: dict[str, Any] | None = None,
    iters: int | None = None,
) -> list[dict[str, Any]]:
    """Train (within ``minutes`` or ``iters`` optimizer steps each, whichever runs out first;
    None: that one unbounded) and evaluate ``detectors``; rows of results.

    The ``train`` splits of ``data`` (one dataset or several) train; the ``test`` splits are
    scored, or every case of ``test`` when given. ``demo`` is the shipped detector (not trained
    again). With ``multiview``, every detector also gets a ``<name>+multiview`` row
    (:class:`~mvxray.detectors2d.multiview.MultiViewDetector`); with ``rescore``, a
    ``<name>+multiview+fpr`` row, its vote re-scored by a classifier fitted on the train split
    (:func:`~mvxray.detectors2d.multiview.rescoring_lifter`; ``train_s`` is that fit's time).
    With ``processes`` > 1 the learned detectors train data-parallel on that many processes
    (:func:`mvxray.distributed.spawn`), this process's threads split among them. ``options``
    (``{"NAME.KEY": value}``, :func:`split_options`) change the presets of the trained detectors.
    """
    from mvxray import detectors2d, distributed
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.detectors2d.multiview import MultiViewDetector, rescoring_lifter

    datasets = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    per_detector = split_options(options or {})
    budget = _budget(minutes, iters)

    # Loaded on first use: a data-parallel run's processes load their own copy.
    @functools.cache
    def train_list() -> list[Any]:
        return [s for d in datasets for s in MultiViewDataset(d, "train")]

    tests = (
        [MultiViewDataset(test, "all")] if test else [MultiViewDataset(d, "test") for d in datasets]
    )
    test_list = [s for t in tests for s in t]
    rows = []
    for name in detectors:
        t = time.monotonic()
        opts = per_detector.get(name, ({}, {}))
        if name == "demo":
            det, fit = detectors2d.load_demo_detector(), {}
        elif name in BENCH_TRAINING and processes > 1:
            threads = max(1, torch.get_num_threads() // processes)
            args = (name, datasets, out, budget, seed, progress, threads, opts)
            distributed.spawn(_train_process, processes, *args)
            det = detectors2d.load(out / name / "model.pt")
            fit = json.loads((out / name / "fit.json").read_text())
        elif name in BENCH_TRAINING:
            det, fit = _train(name, train_list(), out, budget, seed, progress, opts)
        else:
            det = detectors2d.build(name, **BENCH_DETECTORS.get(name, {}))
            fit = det.fit(train_list())
            det.save(out / name / "model.pt")
        variants = [(name, det, fit, time.monotonic() - t)]
        if multiview:
            variants.append((f"{name}+multiview", MultiViewDetector(det), {}, 0.0))
        if rescore:
            t = time.monotonic()
            mv = MultiViewDetector(det, rescoring_lifter())
            fit = mv.fit_lifter(train_list(), progress=progress)
            variants.append((f"{name}+multiview+fpr", mv, fit, time.monotonic() - t))
        for label, variant, fit, train_s in variants:
            metrics, infer_s = evaluate_detector(variant, test_list)
            rows.append(
                {
                    "detector": label,
                    **{k: v for k, v in metrics.items() if k != "per_view"},
                    "train_s": train_s,
                    "infer_s": infer_s,
                    "fit": fit,
                }
            )
            print(f"{label}: {json.dumps(rows[-1])}", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mvxray.benchmarks.detect2d",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="mvxray datasets: their train splits train (default: render the chest phantom)",
    )
    parser.add_argument(
        "--test", type=Path, help="score every case of this dataset (default: the test splits)"
    )
    parser.add_argument(
        "--cases", type=int, default=24, help="phantom cases to render (train + test)"
    )
    parser.add_argument("--size", type=int, default=256, help="view size, px")
    parser.add_argument(
        "--detectors",
        default="yolo,faster_rcnn,heatmap,log_blob",
        help="comma-separated names; 'demo' is the shipped detector (not retrained)",
    )
    parser.add_argument(
        "--multiview",
        action="store_true",
        help="also score each detector made consistent across the views (voting lifter)",
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="also score each made multi-view with its vote re-scored by a classifier fitted "
        "on the train split (voting_fpr)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes", type=float, help="wall-time training budget per detector (default: 30)"
    )
    budget.add_argument(
        "--iters",
        type=int,
        help="training budget per detector in optimizer steps instead: as many on every CPU",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--procs",
        type=int,
        default=1,
        help="train each learned detector data-parallel on this many processes (as torchrun), "
        "--threads split among them",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: in the cache)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="change a trained detector's preset: a config field (heatmap.widths=[8,16,32]) or "
        "a training option (yolo.crops_per_view=1); JSON values; repeatable",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.procs < 1:
        parser.error(f"--procs must be >= 1, found {args.procs}")
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, found {args.iters}")
    if args.iters is None and args.minutes is None:
        args.minutes = 30.0
    try:
        options = parse_options(args.option)
        split_options(options)
    except ValueError as e:
        parser.error(str(e))

    from mvxray.paths import cache_dir

    torch.set_num_threads(args.threads)
    data = args.data or [chest_dataset(args.cases, args.size, progress=not args.no_progress)]
    out = args.out or cache_dir() / "bench" / "detect2d"
    rows = run(
        [d for d in args.detectors.split(",") if d],
        data,
        args.minutes,
        out,
        args.seed,
        not args.no_progress,
        args.multiview,
        args.test,
        args.rescore,
        args.procs,
        options,
        args.iters,
    )
    print(_table(rows))
    summary = {
        "benchmark": "detect2d",
        "data": [str(d) for d in data],
        "test": str(args.test) if args.test else "test splits",
        "minutes": args.minutes,
        "iters": args.iters,
        "threads": args.threads,
        "procs": args.procs,
        "options": options,
        "results": [{k: v for k, v in r.items() if k != "fit"} for r in rows],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
