"""Render a dataset: phantom (or a user's CT as a host) → calibrated multi-view X-ray cases on disk.

Each case ``i`` gets its own seed :func:`case_seed` ``(seed, i)``, so a case is the same whatever
the number of workers, shards or interruptions. Cases are written atomically
(:func:`mvxray.datasets.format.write_case`); a re-run skips complete cases and removes the
leftovers of interrupted writes, so ``kill -9`` at any time loses at most the cases in flight.
``--workers`` renders cases in parallel processes; ``--shard i/n`` renders only the cases with
``index % n == i`` (several machines or jobs into one folder). ``dataset.json`` is merged under a
file lock after every case: it lists every complete case and the train/val/test split, a seeded
function of (seed, number of cases) by case.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import (
    CASE_FILE,
    DATASET_FILE,
    clean_temporary,
    is_complete,
    read_rig,
    split_cases,
    write_case,
    write_dataset,
)
from mvxray.geometry import Rig, box3d_corners, project_points
from mvxray.geometry.rig import SEED_DETECTOR_MM, SEED_SDD_MM, SEED_SID_MM

PRESETS = ("seed", "circular")


@dataclass(frozen=True)
class GenerateConfig:
    """What to render.

    Attributes:
        out: dataset folder.
        phantom: ``"chest"``, ``"casting"`` or a path to a CT (NIfTI file or DICOM folder) used as
            the host for inserted nodules.
        cases: number of cases N (indices 0..N−1).
        views: number of views (``preset="seed"`` has 10).
        size: detector size, px (square).
        preset: ``"seed"`` (seed 000's rig, :meth:`Rig.seed`) or ``"circular"`` (V views over 360°
            with the seed's distances and, unless ``detector_mm`` is set, field of view).
        detector_mm: detector width, mm, of the circular preset (the seed's is 800 mm; a small
            industrial part wants a smaller field of view, e.g. 240 mm = 120 mm at the isocentre).
        seed: dataset seed.
        workers: parallel processes.
        shard: ``(i, n)``: render only indices with ``index % n == i``.
        backend: renderer (:data:`mvxray.datasets.render.BACKENDS`).
        n_samples: samples per ray (nanodrr); default from the volume.
        voxel_mm: phantom voxel size, mm (None: the phantom's default; for a CT of your own,
            its own grid). A CT of your own is then resampled to it (isotropic, anti-aliased)
            before nodules are inserted: the shipped detector was trained mostly on a 1.5 mm
            grid and finds far fewer nodules in renders of a finer one (docs/detectors.md, "A CT
            of your own").
        fractions: train / val / test fractions of the cases.
        preview: write 16-bit PNG previews.
        device: render device (``"cpu"``, ``"cuda"``).
        rig: instead of a preset, the rig of a JSON file (:func:`~mvxray.datasets.format.read_rig`:
            what :meth:`Rig.to_json` writes, or a ``case.json`` / case folder of a dataset in
            mvxray's format — e.g. your registered X-rays), its poses taken in the phantom's CT
            frame (mm; its origin is the volume's centre, docs/conventions.md). ``views``
            and ``size`` then come from it (``size``: its width); ``preset`` and ``detector_mm``
            must be left at their defaults.
    """

    out: Path
    phantom: str = "chest"
    cases: int = 10
    views: int = 10
    size: int = 256
    preset: str = "seed"
    detector_mm: float | None = None
    seed: int = 0
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    backend: str = "nanodrr"
    n_samples: int | None = None
    voxel_mm: float | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    preview: bool = True
    device: str | None = None
    phantom_options: dict[str, Any] = field(default_factory=dict)
    rig: str | Path | None = None

    def __post_init__(self) -> None:
        if self.rig is not None:
            self._take_rig_file()
        if self.cases < 1:
            raise ValueError(f"cases: expected >= 1, found {self.cases}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {PRESETS}, found {self.preset!r}")
        if self.preset == "seed" and self.detector_mm is not None:
            raise ValueError(
                "detector_mm: the seed preset has an 800 mm detector (use preset 'circular')"
            )
        if self.detector_mm is not None and self.detector_mm <= 0:
            raise ValueError(f"detector_mm: expected > 0, found {self.detector_mm}")
        if self.preset == "seed" and self.views != 10 and self.rig is None:
            raise ValueError(
                f"views: the seed preset has 10 views, found {self.views} (use preset 'circular')"
            )
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard: expected i/n with 0 <= i < n, found {i}/{n}")
        if self.voxel_mm is not None and self.voxel_mm <= 0:
            raise ValueError(f"voxel_mm: expected > 0 mm, found {self.voxel_mm}")
        if self.workers < 1:
            raise ValueError(f"workers: expected >= 1, found {self.workers}")
        if self.size < 8:
            raise ValueError(f"size: expected >= 8 px, found {self.size}")

    def _take_rig_file(self) -> None:
        """Check ``rig`` (it replaces the preset) and record its views and size."""
        if self.preset != "seed" or self.detector_mm is not None:
            raise ValueError(
                f"rig: the rig file {self.rig} replaces preset and detector_mm; found preset "
                f"{self.preset!r}, detector_mm {self.detector_mm} (leave them out)"
            )
        object.__setattr__(self, "rig", str(self.rig))  # a Path too; the plan stays JSON
        rig = read_rig(self.rig)
        for name, given, default, actual in (
            ("views", self.views, 10, rig.num_views),
            ("size", self.size, 256, rig.width),
        ):
            if given not in (default, actual):
                raise ValueError(
                    f"{name}: {given} given, but the rig file {self.rig} has {actual} (leave it out)"
                )
            object.__setattr__(self, name, actual)  # frozen: recorded once, from the file


def case_name(index: int) -> str:
    """Folder name of case ``index``.

    Example:
        >>> case_name(7)
        'case_00007'
    """
    return f"case_{index:05d}"


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset seeded ``seed`` (independent streams per case).

    Example:
        >>> case_seed(0, 1) == case_seed(0, 1) != case_seed(1, 1)
        True
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_rig(config: GenerateConfig) -> Rig:
    """The rig of every case: the rig file, :meth:`Rig.seed`, or a circular rig with the seed's
    geometry."""
    if config.rig is not None:
        return read_rig(config.rig)
    if config.preset == "seed":
        return Rig.seed(config.size)
    return Rig.circular(
        config.views,
        SEED_SID_MM,
        SEED_SDD_MM,
        config.size,
        config.size,
        (config.detector_mm or SEED_DETECTOR_MM) / config.size,
    )


@functools.lru_cache(maxsize=1)
def _host(path: str, voxel_mm: float | None = None):
    """A user's CT as a host: HU below air (scanner padding) clamped to air, optionally resampled."""
    from mvxray.datasets.ct import AIR_HU, load_ct, resample

    volume = load_ct(path)
    volume.data.clamp_(min=AIR_HU)  # e.g. -2048 outside the reconstruction circle
    return volume if voxel_mm is None else resample(volume, voxel_mm)


def make_phantom(config: GenerateConfig, seed: int):
    """The :class:`~mvxray.datasets.phantoms.PhantomCase` of one case."""
    from mvxray.datasets.phantoms import PHANTOMS, insert_nodules

    kw = dict(config.phantom_options)
    if config.phantom in PHANTOMS:
        if config.voxel_mm is not None:
            kw["voxel_mm"] = config.voxel_mm
        return PHANTOMS[config.phantom](seed, **kw)
    path = Path(config.phantom)
    if not path.exists():
        raise FileNotFoundError(
            f"phantom: {config.phantom!r} is neither one of {sorted(PHANTOMS)} nor an existing "
            f"CT file or DICOM folder"
        )
    case = insert_nodules(_host(str(path), config.voxel_mm), seed, **kw)
    case.meta = {**case.meta, "phantom": "ct", "host": str(path), "seed": seed}
    return case


def volume_box(volume) -> torch.Tensor:
    """``(6,)`` CT mm box enclosing the volume's voxels (their outer faces, not centres).

    Example:
        >>> from mvxray.datasets.base import Volume
        >>> from mvxray.geometry import T_ct_from_voxel
        >>> volume_box(Volume(torch.zeros(4, 6, 8), T_ct_from_voxel((4, 6, 8), (1.0, 2.0, 0.5)))).tolist()
        [-2.0, -6.0, -2.0, 2.0, 6.0, 2.0]
    """
    from mvxray.geometry import voxel_to_ct

    n = torch.tensor(volume.data.shape, dtype=torch.float64)
    corners = (
        torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=torch.float64) * n
        - 0.5
    )
    pts = voxel_to_ct(corners, volume.T_ct_from_voxel.to(torch.float64))
    return torch.cat([pts.amin(0), pts.amax(0)])


def check_rig_sees(rig: Rig, box: torch.Tensor) -> None:
    """Refuse a rig that cannot image the volume ``box`` (``(6,)`` CT mm): a view with the
    volume's centre behind its source, or whose image the volume misses — typically poses in
    another frame or unit than the CT's mm.

    Raises:
        ValueError: naming the view, where the volume is, and the image size.
    """
    K, T = rig.K.double(), rig.T_cam_from_ct.double()
    centre = (box[:3] + box[3:]).double()[None] / 2
    _, depth = project_points(centre, K, T)
    uv, z = project_points(box3d_corners(box.double()[None])[0], K, T)  # (V, 8, 2), (V, 8)
    where = f"the volume (CT box {[round(x, 1) for x in box.tolist()]} mm)"
    for v in range(rig.num_views):
        if depth[v, 0] <= 0:
            raise ValueError(
                f"rig view {v}: {where} is behind the source (centre depth "
                f"{float(depth[v, 0]):.1f} mm); are T_cam_from_ct in this CT frame, in mm?"
            )
        if bool((z[v] <= 0).any()):
            continue  # the source is inside the box (air around the object): it sees the volume
        lo, hi = uv[v].amin(0), uv[v].amax(0)
        if hi[0] <= 0 or lo[0] >= rig.width or hi[1] <= 0 or lo[1] >= rig.height:
            raise ValueError(
                f"rig view {v}: {where} projects to x {float(lo[0]):.0f}..{float(hi[0]):.0f}, "
                f"y {float(lo[1]):.0f}..{float(hi[1]):.0f} px, outside the {rig.width}x"
                f"{rig.height} px image; are K and T_cam_from_ct in this CT frame, in mm?"
            )


def render_one(config: GenerateConfig, index: int) -> str:
    """Render and write case ``index`` (skipped if complete); returns its folder name."""
    from mvxray.datasets.phantoms import CLASSES
    from mvxray.datasets.render import render_case

    name = case_name(index)
    out = Path(config.out) / name
    if is_complete(out):
        return name
    seed = case_seed(config.seed, index)
    case = make_phantom(config, seed)
    rig = make_rig(config)
    check_rig_sees(rig, volume_box(case.volume))
    rendered = render_case(
        case.volume,
        rig,
        case.boxes3d,
        config.backend,
        device=config.device,
        n_samples=config.n_samples,
    )
    provenance = {
        **case.meta,
        "case_index": index,
        "case_seed": seed,
        "dataset_seed": config.seed,
        "rig_preset": "file" if config.rig else config.preset,
        **({"rig_file": str(config.rig)} if config.rig else {}),
        "backend": config.backend,
        "size_px": config.size,
        "volume_box_ct_mm": volume_box(case.volume).tolist(),
        "intensity": "line integral of mu (1/mm) = mu_water * max(0, 1 + HU/1000), mu_water 0.0192",
    }
    sample = MultiViewSample(
        images=rendered.images,
        rig=rig,
        boxes3d=case.boxes3d,
        boxes2d=rendered.boxes2d,
        visible2d=rendered.visible2d,
        labels=case.labels,
        case_id=name,
        meta=provenance,
    )
    write_case(
        out, sample, classes=CLASSES, boxes2d_mask=rendered.boxes2d_mask, preview=config.preview
    )
    return name


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".dataset.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_index(config: GenerateConfig) -> Path:
    """Merge ``dataset.json``: every complete case folder, splits from (seed, N), the plan."""
    root = Path(config.out)
    with _locked(root):
        present = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and is_complete(p)
        )
        planned = [case_name(i) for i in range(config.cases)]
        extra = sorted(set(present) - set(planned))
        splits = split_cases(planned, config.fractions, config.seed)
        if extra:  # cases of an earlier, larger run keep a split of their own plan
            old = root / DATASET_FILE
            prev = json.loads(old.read_text()).get("splits", {}) if old.is_file() else {}
            for k, v in prev.items():
                splits.setdefault(k, []).extend(c for c in v if c in extra)
        plan = {
            k: v
            for k, v in asdict(config).items()
            if k not in ("out", "workers", "shard", "device")
        }
        classes = ["nodule", "pore", "crack"]
        if present:
            first = json.loads((root / present[0] / CASE_FILE).read_text())
            classes = first.get("classes", classes)
        return write_dataset(root, present, splits, classes, {"plan": plan})


def generate(
    config: GenerateConfig, progress: bool = True, on_case: Callable[[str], None] | None = None
) -> list[str]:
    """Render the cases of ``config`` that are not on disk yet; returns the names rendered now.

    Args:
        config: what to render.
        progress: show a progress bar (rich).
        on_case: called with each finished case name.
    """
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    clean_temporary(root)
    i, n = config.shard
    todo = [k for k in range(config.cases) if k % n == i and not is_complete(root / case_name(k))]
    done: list[str] = []

    def finished(name: str) -> None:
        done.append(name)
        update_index(config)
        if on_case is not None:
            on_case(name)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"rendering {config.phantom}", total=len(todo))
        if config.workers == 1 or len(todo) <= 1:
            for k in todo:
                finished(render_one(config, k))
                bar.advance(task)
        else:
            import multiprocessing as mp

            threads = max(1, (os.cpu_count() or 1) // config.workers)
            # fork is cheap (no re-import of torch per worker) and safe for CPU rendering;
            # CUDA cannot be forked, so GPU runs spawn fresh interpreters.
            cuda = config.device is not None and str(config.device).startswith("cuda")
            method = "fork" if "fork" in mp.get_all_start_methods() and not cuda else "spawn"
            with ProcessPoolExecutor(
                config.workers, mp.get_context(method), _worker_init, (threads,)
            ) as pool:
                pending = {pool.submit(render_one, config, k) for k in todo}
                while pending:
                    ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in ready:
                        finished(fut.result())
                        bar.advance(task)
    update_index(config)
    return done
