"""The ablation runner behind ``mvxray bench``: detectors × lifters × views × size × augmentation.

Each cell trains what it needs (cached by a hash of its config, and of the weights of a given
detector, under ``out/models``), evaluates on the held-out split and appends one JSON line to
``out/results.jsonl``. A rerun skips finished cells, so a killed run loses at most the cell in
progress. ``results.md`` and the plots are rebuilt from ``results.jsonl`` after every cell
(:mod:`mvxray.benchmarks.report`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import predict_sample
from mvxray.paths import assets_dir, cache_dir

#: Detectors that need no training (``demo`` is the detector shipped for the demo).
FIXED_DETECTORS = ("oracle", "log_blob", "demo")


@dataclass(frozen=True)
class GridConfig:
    """An ablation grid.

    Attributes:
        detectors: detector names (``mvxray.detectors2d.DETECTORS``), ``demo`` (shipped), or paths
            to trained detector checkpoints.
        lifters: lifter names (``mvxray.lifting.LIFTERS``).
        views: numbers of views; a cell with ``v`` views uses ``v`` views evenly spread over the
            dataset's views.
        sizes: image sizes, px (embedded data is rendered at each; ``--data`` fixes the size).
        augment: training with X-ray augmentation on / off (trainable models only).
        phantom: embedded phantom rendered when no dataset is given.
        cases: cases rendered for the embedded data (split 75 % train / 25 % test by case).
        seed: dataset seed (default 1000: the shipped demo detector trained on seed 0's cases).
        train_minutes: wall-time budget of each trained model, minutes.
        detector_options: per detector name, config options.
        lifter_options: per lifter name, config options.
    """

    detectors: tuple[str, ...] = ("oracle", "log_blob", "demo")
    lifters: tuple[str, ...] = ("triangulation",)
    views: tuple[int, ...] = (2, 3, 5, 10)
    sizes: tuple[int, ...] = (256,)
    augment: tuple[bool, ...] = (False,)
    phantom: str = "chest"
    cases: int = 24
    seed: int = 1000
    train_minutes: float = 5.0
    detector_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    lifter_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("detectors", "lifters", "views", "sizes", "augment"):
            if not getattr(self, name):
                raise ValueError(f"grid: {name} is empty")
        if min(self.views) < 2:
            raise ValueError(f"grid: lifting needs >= 2 views, found views {list(self.views)}")

    def cells(self) -> Iterator[dict[str, Any]]:
        """The grid's cells, in a stable order."""
        for det, lift, size, aug, v in product(
            self.detectors, self.lifters, self.sizes, self.augment, self.views
        ):
            yield {"detector": det, "lifter": lift, "size": size, "augment": aug, "views": v}


#: Ready grids. ``small`` finishes on 2 CPU cores in well under 30 minutes (see README).
GRIDS: dict[str, GridConfig] = {
    # log_blob is left out: its ~100 detections per view make triangulation slow and find nothing
    # (its 2D numbers are in `python -m mvxray.benchmarks.detect2d`).
    "small": GridConfig(
        detectors=("oracle", "demo"),
        lifters=("triangulation", "voting", "mv2d", "rayemb"),
        views=(2, 3, 5, 10),
        cases=24,
        train_minutes=3.0,
        detector_options={"oracle": {"jitter_px": 1.0, "miss_rate": 0.1, "fp_per_image": 1.0}},
    ),
}


def load_grid(spec: str | Path) -> GridConfig:
    """A grid by name (:data:`GRIDS`) or from a TOML file whose keys are :class:`GridConfig` fields."""
    if str(spec) in GRIDS:
        return GRIDS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"grid {spec!r}: neither a ready grid {sorted(GRIDS)} nor a TOML file"
        )
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(GridConfig)}
    unknown = set(doc) - known
    if unknown:
        raise ValueError(
            f"{path}: unknown grid key(s) {sorted(unknown)}; expected some of {sorted(known)}"
        )
    return GridConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _detector_file(name: str) -> Path | None:
    """The weights file behind a detector spec (``demo`` or a path), else None."""
    if name == "demo":
        from mvxray.detectors2d.train_demo import DEMO_DETECTOR

        return assets_dir() / DEMO_DETECTOR
    path = Path(name)
    return path if path.is_file() else None


def _file_digest(path: Path) -> str:
    """sha1 of a file (a retrained detector makes its cells new)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def _detector_weights(name: str) -> str | None:
    """Digest of the weights behind a detector spec, None for one the runner builds by name.

    Part of every key that depends on the detector (its cells, the lifters trained on its
    output), so retraining ``demo`` or overwriting a weights file retrains and re-scores them.
    """
    weights = _detector_file(name)
    return _file_digest(weights) if weights is not None else None


def view_subset(total: int, v: int) -> list[int]:
    """``v`` view indices spread evenly over ``total`` views.

    Example:
        >>> view_subset(10, 3), view_subset(10, 10)
        ([0, 3, 7], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    if not 1 <= v <= total:
        raise ValueError(f"views: expected 1..{total}, found {v}")
    return sorted({round(i * total / v) % total for i in range(v)})


@dataclass
class Runner:
    """Runs a grid into ``out`` (see module docstring)."""

    grid: GridConfig
    out: Path
    data: Path | None = None
    progress: bool = True
    _samples: dict[tuple[Path, str], list[MultiViewSample]] = field(default_factory=dict)
    _roots: dict[int, Path] = field(default_factory=dict)

    # ------------------------------------------------------------------ data
    def dataset(self, size: int) -> Path:
        """The dataset of a cell: ``--data`` as given, else the embedded phantom rendered (cached)."""
        if self.data is not None:
            return self.data
        if size in self._roots:  # checked and completed once per run, not once per cell
            return self._roots[size]
        from mvxray.datasets.generate import GenerateConfig, generate

        g = self.grid
        root = cache_dir() / "bench" / f"{g.phantom}-{size}px-{g.cases}cases-seed{g.seed}"
        generate(
            GenerateConfig(
                out=root,
                phantom=g.phantom,
                cases=g.cases,
                size=size,
                seed=g.seed,
                fractions=(0.75, 0.0, 0.25),
            ),
            progress=self.progress,
        )
        self._roots[size] = root
        return root

    def samples(self, root: Path, split: str) -> list[MultiViewSample]:
        """Cases of a split (read once per run). The test split falls back to val, then all."""
        from mvxray.datasets.format import read_case, read_dataset

        if (root, split) not in self._samples:
            index = read_dataset(root)
            names = index.splits.get(split, [])
            if split == "test" and not names:
                names = index.splits.get("val", []) or index.split("all")
            self._samples[(root, split)] = [read_case(root / n) for n in names]
        return self._samples[(root, split)]

    # ------------------------------------------------------------------ models
    def detector(self, cell: Mapping[str, Any], root: Path) -> tuple[Any, float]:
        """The cell's detector and its training seconds (0 when loaded or training-free)."""
        from mvxray import detectors2d

        name = cell["detector"]
        opts = dict(self.grid.detector_options.get(name, {}))
        if name == "demo":
            from mvxray.detectors2d.train_demo import load_demo_detector

            return load_demo_detector(), 0.0
        if name not in detectors2d.DETECTORS:
            return detectors2d.load(name), 0.0
        det = detectors2d.build(name, **opts)
        if name in FIXED_DETECTORS:
            return det, 0.0
        key = _hash(
            {
                "det": name,
                "opts": opts,
                "data": str(root),
                "aug": cell["augment"],
                "minutes": self.grid.train_minutes,
            }
        )
        path = self.out / "models" / f"det-{name}-{key}.pt"
        if path.is_file():
            return detectors2d.load(path), 0.0
        from mvxray.detectors2d.train import TrainConfig

        t0 = time.perf_counter()
        det.fit(
            self.samples(root, "train"),
            self.samples(root, "val"),
            config=TrainConfig(
                max_minutes=self.grid.train_minutes,
                augment=cell["augment"],
                progress=self.progress,
                epochs=1000,
            ),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        det.save(path)
        return det, time.perf_counter() - t0

    def lifter(self, cell: Mapping[str, Any], root: Path, detector: Any) -> tuple[Any, float]:
        """The cell's lifter and its training seconds."""
        from mvxray import lifting

        name = cell["lifter"]
        opts = dict(self.grid.lifter_options.get(name, {}))
        if name not in lifting.TRAINABLE:
            return lifting.build(name, **opts), 0.0
        # Trained once on all views per (detector, data, augmentation) and evaluated at every
        # view count: MV2D's queries come from per-view detections, so one model serves any V.
        key = _hash(
            {
                "lift": name,
                "opts": opts,
                "det": cell["detector"],
                "weights": _detector_weights(cell["detector"]),
                "data": str(root),
                "aug": cell["augment"],
                "minutes": self.grid.train_minutes,
            }
        )
        path = self.out / "models" / f"lift-{name}-{key}.pt"
        if path.is_file():
            return lifting.load(name, path), 0.0
        lifter = lifting.build(name, **opts)
        train = self.samples(root, "train")
        budget = self.grid.train_minutes
        t0 = time.perf_counter()
        if name == "mv2d":
            lifter.fit(
                train,
                None,
                detector=detector,
                progress=self.progress,
                max_minutes=budget,
                augment=cell["augment"],
            )
        elif name == "voting_fpr":  # seconds: an MLP on the detector's vote candidates
            lifter.fit(train, None, detector=detector, progress=self.progress)
        else:
            lifter.fit(train, None, max_minutes=budget, augment=cell["augment"])
        path.parent.mkdir(parents=True, exist_ok=True)
        lifter.save(path)
        return lifter, time.perf_counter() - t0

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, cell: Mapping[str, Any], root: Path, detector: Any, lifter: Any
    ) -> dict[str, Any]:
        """2D and 3D metrics of one cell on the held-out cases."""
        from mvxray.benchmarks.metrics2d import DetectionEvaluator
        from mvxray.benchmarks.metrics3d import evaluate_3d, per_nodule_table

        test = self.samples(root, "test")
        ev2d = DetectionEvaluator()
        preds, gts = [], []
        t0 = time.perf_counter()
        for sample in test:
            sub = sample.select_views(view_subset(sample.num_views, cell["views"]))
            with torch.no_grad():
                dets = predict_sample(detector, sub)
                lifted = lifter.lift(sub, dets)
            ev2d.add_sample(dets, sub.boxes2d, sub.visible2d)
            preds.append((lifted.boxes3d.double().cpu(), lifted.scores.double().cpu()))
            gts.append(sample.boxes3d.double())
        infer_s = time.perf_counter() - t0
        m2 = ev2d.compute()
        m3 = evaluate_3d(preds, gts)
        table = per_nodule_table(preds, gts)
        errors = [r["centre_error_mm"] for r in table if r["hit"]]
        from mvxray.benchmarks.metrics3d import froc

        curve = froc(preds, gts)
        return {
            "recall2d": m2["recall@1fp"],
            "recall2d_any": m2["recall"],
            "ap50_2d": m2["ap50"],
            "sensitivity_at_1fp": m3["sens@1FP"],
            "cpm": m3["CPM"],
            "median_center_error_mm": float(np.median(errors)) if errors else math.nan,
            "p95_center_error_mm": float(np.percentile(errors, 95)) if errors else math.nan,
            "mATE_mm": m3["mATE_mm"],
            "mASE": m3["mASE"],
            "mAP_dist": m3["mAP_dist"],
            "AP_iou@0.25": m3.get("AP_iou@0.25", math.nan),
            "n_cases": len(test),
            "n_gt": m3["n_gt"],
            "infer_s": infer_s,
            "center_errors_mm": errors,
            "froc_fps": curve["curve_fps"],
            "froc_sens": curve["curve_sens"],
        }

    # ------------------------------------------------------------------ the loop
    def cell_key(self, cell: Mapping[str, Any]) -> str:
        """Stable identity of a cell (config + data + options + the weights of a given detector)."""
        g = self.grid
        return _hash(
            {
                **cell,
                "data": str(self.data) if self.data else [g.phantom, g.cases, g.seed],
                "det_opts": g.detector_options.get(cell["detector"], {}),
                "lift_opts": g.lifter_options.get(cell["lifter"], {}),
                "minutes": g.train_minutes,
                "weights": _detector_weights(cell["detector"]),
            }
        )

    def done(self) -> set[str]:
        """Keys of the cells already in ``results.jsonl`` (a torn last line is ignored)."""
        return {r["key"] for r in read_results(self.out / "results.jsonl")}

    def run(self) -> list[dict[str, Any]]:
        """Run every cell not done yet; returns the rows added now."""
        from rich.console import Console

        from mvxray.benchmarks.report import write_report

        console = Console(width=max(120, Console().width))
        self.out.mkdir(parents=True, exist_ok=True)
        finished = self.done()
        cells = list(self.grid.cells())
        added: list[dict[str, Any]] = []
        for i, cell in enumerate(cells):
            key = self.cell_key(cell)
            label = " ".join(f"{k}={v}" for k, v in cell.items())
            if key in finished:
                console.print(f"[{i + 1}/{len(cells)}] {label}: done before, skipped")
                continue
            console.print(f"[{i + 1}/{len(cells)}] {label}")
            root = self.dataset(cell["size"])
            size = self.samples(root, "test")[0].rig.height
            detector, det_s = self.detector(cell, root)
            lifter, lift_s = self.lifter(cell, root, detector)
            row = {
                "key": key,
                **cell,
                "size": size,
                **self.evaluate(cell, root, detector, lifter),
                "train_s": det_s + lift_s,
                "data": str(root),
            }
            append_result(self.out / "results.jsonl", row)
            write_report(self.out)
            added.append(row)
            console.print(
                f"    2D recall@1FP {row['recall2d']:.2f}  3D sens@1FP {row['sensitivity_at_1fp']:.2f}  "
                f"CPM {row['cpm']:.2f}  median {row['median_center_error_mm']:.2f} mm  "
                f"p95 {row['p95_center_error_mm']:.2f} mm"
            )
        write_report(self.out)
        return added


def append_result(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of ``results.jsonl``; a line torn by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def override(grid: GridConfig, **flags: Any) -> GridConfig:
    """The grid with the CLI flags that were given (``None`` = keep)."""
    return replace(grid, **{k: v for k, v in flags.items() if v is not None})


__all__ = ["GRIDS", "GridConfig", "Runner", "load_grid", "override", "read_results", "view_subset"]
