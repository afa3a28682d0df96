"""3D lifting quality benchmark: ``python -m mvxray.benchmarks.lift3d``.

On the embedded ``chest`` phantom (the seed's 10-view rig, 256 px; the same cached dataset as
:mod:`mvxray.benchmarks.detect2d`, rendered by its :func:`render_phantom_dataset`), on the
held-out ``test`` cases:

* ``triangulation`` fed the oracle 2D boxes — the projected ground-truth 3D boxes (checks the
  geometric chain: should be ~0 mm), the tight boxes of the rendered nodule masks, and the
  projected boxes with 1 px of edge jitter (the physical limit, ~0.3–0.8 mm per px here);
* ``mv2d`` trained within a wall-time budget on the ``train`` cases' ground-truth 2D boxes
  (CPU-budget settings: lr 1e-3, no augmentation unless ``--mv2d-augment``), evaluated on the
  test cases' oracle boxes.

Reports the median centre error (mm, nearest prediction per nodule), sensitivity at 1 FP per
case, CPM, AP at 2 mm and 4 mm, mATE / mASE and the time per case; prints a table and, last,
one JSON line. ``--data DIR`` runs on any dataset in mvxray's format (splits ``train``/``test``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mvxray.benchmarks.metrics3d import evaluate_3d, per_nodule_table
from mvxray.cli import HelpFormatter
from mvxray.detectors2d.base import Detections2D

_COLS = (
    "median_centre_error_mm",
    "sens@1FP",
    "CPM",
    "AP_dist@2mm",
    "AP_dist@4mm",
    "mATE_mm",
    "mASE",
)


def _boxes_as_detections(boxes2d: torch.Tensor, visible: torch.Tensor) -> list[Detections2D]:
    return [
        Detections2D(
            boxes2d[v][visible[v]].float(),
            torch.ones(int(visible[v].sum())),
            torch.zeros(int(visible[v].sum()), dtype=torch.long),
        )
        for v in range(boxes2d.shape[0])
    ]


def oracle_sources() -> dict[str, Callable[[Any], list[Detections2D]]]:
    """Name → ``sample → detections`` for the oracle variants of the benchmark."""
    from mvxray.detectors2d.oracle import OracleDetector

    jitter = OracleDetector(jitter_px=1.0, seed=0)

    def mask(sample: Any) -> list[Detections2D]:
        boxes = sample.meta.get("boxes2d_mask")
        if boxes is None:
            raise KeyError(f"case {sample.case_id}: no boxes2d_mask in the dataset")
        return _boxes_as_detections(boxes, sample.visible2d)

    return {
        "oracle": lambda s: _boxes_as_detections(s.boxes2d, s.visible2d),
        "oracle_mask": mask,
        "oracle_jitter1px": jitter.predict_sample,
    }


def evaluate_lifter(
    lifter: Any, dataset: Any, detect: Callable[[Any], list[Detections2D]]
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Lift every case of ``dataset``: (metrics, per-nodule rows, seconds per case)."""
    preds, gts, ids = [], [], []
    seconds = 0.0
    for i in range(len(dataset)):
        sample = dataset[i]
        dets = detect(sample)
        t = time.perf_counter()
        preds.append(lifter.lift(sample, dets))
        seconds += time.perf_counter() - t
        gts.append(sample.boxes3d)
        ids.append(sample.case_id)
    return (
        evaluate_3d(preds, gts),
        per_nodule_table(preds, gts, ids),
        seconds / max(len(dataset), 1),
    )


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["lifter", "detections", *_COLS, "s_per_case", "train_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r[c] if isinstance(r[c], str) else f"{r[c]:.3f}" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(
    data: Path,
    lifters: Sequence[str],
    minutes: float,
    out: Path,
    progress: bool = True,
    mv2d_train: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark; returns one row per (lifter, detection source)."""
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.lifting import build

    train, test = MultiViewDataset(data, "train"), MultiViewDataset(data, "test")
    sources = oracle_sources()
    rows: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)

    def record(name: str, source: str, lifter: Any, train_s: float, extra: dict[str, Any]) -> None:
        metrics, table, per_case = evaluate_lifter(lifter, test, sources[source])
        row = {"lifter": name, "detections": source, **{c: metrics[c] for c in _COLS}}
        row.update(
            s_per_case=per_case, train_s=train_s, n_test=len(test), n_gt=metrics["n_gt"], **extra
        )
        rows.append(row)
        (out / f"per_nodule_{name}_{source}.json").write_text(json.dumps(table, indent=1))

    if "triangulation" in lifters:
        tri = build("triangulation")
        has_mask = len(test) > 0 and test[0].meta.get("boxes2d_mask") is not None
        for source in ("oracle", "oracle_mask", "oracle_jitter1px"):
            if source == "oracle_mask" and not has_mask:
                continue
            record("triangulation", source, tri, 0.0, {})
    if "mv2d" in lifters:
        mv2d = build("mv2d")
        t = time.time()
        fit = mv2d.fit(
            train,
            detector=None,
            out_dir=out / "mv2d",
            resume=False,
            progress=progress,
            **{"epochs": 1000, "max_minutes": minutes, **(mv2d_train or {})},
        )
        extra = {
            "steps": fit["steps"],
            "loss_first": fit["loss_first"],
            "loss_last": fit["loss"],
            "n_train": len(train),
            **(mv2d_train or {}),
        }
        record("mv2d", "oracle", mv2d, time.time() - t, extra)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mvxray.benchmarks.lift3d",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data", type=Path, help="an mvxray dataset (default: the chest phantom)")
    parser.add_argument("--cases", type=int, default=24, help="phantom cases (train + test)")
    parser.add_argument("--size", type=int, default=256, help="view size, px")
    parser.add_argument("--lifters", default="triangulation,mv2d", help="comma-separated names")
    parser.add_argument("--minutes", type=float, default=10.0, help="mv2d training budget")
    parser.add_argument("--mv2d-lr", type=float, default=1e-3, help="mv2d peak learning rate")
    parser.add_argument(
        "--mv2d-augment", action="store_true", help="mv2d with augmentation (slower to converge)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="output folder (default: in the cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from mvxray.benchmarks.detect2d import chest_dataset
    from mvxray.paths import cache_dir

    torch.set_num_threads(args.threads)
    data = args.data or chest_dataset(args.cases, args.size, progress=not args.no_progress)
    out = args.out or cache_dir() / "bench" / "lift3d"
    rows = run(
        Path(data),
        [x for x in args.lifters.split(",") if x],
        args.minutes,
        out,
        not args.no_progress,
        {"lr": args.mv2d_lr, "augment": args.mv2d_augment, "warmup_iters": 50},
    )
    print(_table(rows))
    print(
        json.dumps(
            {
                "benchmark": "lift3d",
                "data": str(data),
                "minutes": args.minutes,
                "threads": args.threads,
                "results": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
