"""Speed of the geometry core: ``python -m mvxray.benchmarks.geometry``.

Measured in one run on the same inputs (seed-000 rig, float32):

* projecting ``--points`` CT points through all views with :func:`mvxray.geometry.project_points`,
  with kornia's ``PinholeCamera.project`` (points expanded to ``(V, N, 3)``, the camera batched
  over views — kornia's natural batching), and with a per-point Python loop over a subset,
  scaled to ``--points``;
* the reprojection-IoU matrix of ``--boxes`` 3D boxes against ``--dets`` 2D boxes in every view
  (:func:`mvxray.geometry.reprojection_iou`) against a per-box loop over a subset, scaled (each
  iteration scores one box in all views at once: ``iou_speedup_vs_loop``), and a per-box,
  per-view double loop (``iou_speedup_vs_box_view_loop``).

Timing: warm-up, then the best of ``--repeats``. With ``--threads 1`` (default) the clock is
this process's CPU time, which a busy shared machine barely disturbs; with more threads (or
``--wall``) it is wall time. Prints a table, then one last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mvxray.cli import HelpFormatter


def _best_time(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Best of ``repeats`` timings (s) after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return max(best, 1e-9)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mvxray.benchmarks.geometry",
        description="Projection and reprojection-IoU speed of mvxray.geometry vs kornia and loops.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--points", type=int, default=1_000_000, help="points to project")
    p.add_argument("--views", type=int, default=10, help="views of the seed-like rig")
    p.add_argument("--loop-points", type=int, default=2_000, help="points in the per-point loop")
    p.add_argument("--boxes", type=int, default=1_000, help="3D boxes for the IoU matrix")
    p.add_argument("--dets", type=int, default=100, help="2D boxes per view for the IoU matrix")
    p.add_argument("--loop-boxes", type=int, default=200, help="boxes in the per-box loop")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (best is kept)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--wall", action="store_true", help="wall-clock time even with one thread")
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the JSON record (also printed by :func:`main`)."""
    from kornia.geometry.camera import PinholeCamera

    from mvxray.geometry import Rig, project_boxes3d, project_points, reprojection_iou

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 and not args.wall else time.perf_counter
    g = torch.Generator().manual_seed(args.seed)
    size = 1024
    rig = Rig.circular(
        args.views, 300.0, 600.0, size, size, 800.0 / size, arc_deg=360.0, dtype=torch.float64
    ).to(dtype=torch.float32)
    K, T = rig.K, rig.T_cam_from_ct
    V, N = args.views, args.points
    points = (torch.rand(N, 3, generator=g) - 0.5) * 200.0  # a 200 mm cube about the isocentre

    # --- projection ---------------------------------------------------------------------
    intr = torch.eye(4).repeat(V, 1, 1)
    intr[:, :3, :3] = K
    cam = PinholeCamera(
        intr, T.clone(), torch.full((V,), float(size)), torch.full((V,), float(size))
    )
    ours_uv, _ = project_points(points, K, T)
    kornia_uv = cam.project(points.expand(V, N, 3))
    max_diff = float((ours_uv - kornia_uv).abs().max()) if N else 0.0
    t_ours = _best_time(lambda: project_points(points, K, T), args.repeats, clock)
    t_kornia = _best_time(lambda: cam.project(points.expand(V, N, 3)), args.repeats, clock)
    n_loop = max(1, min(args.loop_points, N))
    sub = points[:n_loop]

    def per_point_loop() -> None:
        for i in range(n_loop):
            project_points(sub[i : i + 1], K, T)

    t_loop = _best_time(per_point_loop, max(1, args.repeats // 2), clock) * (N / n_loop)

    # --- reprojection IoU ---------------------------------------------------------------
    B, M = args.boxes, args.dets
    centres = (torch.rand(B, 3, generator=g) - 0.5) * 160.0
    sizes = 5.0 + 25.0 * torch.rand(B, 3, generator=g)
    boxes3d = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
    det_src = torch.cat([centres[:M] - sizes[:M] / 2, centres[:M] + sizes[:M] / 2], -1)
    boxes2d, _ = project_boxes3d(det_src, K, T, size, size)  # (V, M, 4) "detections"
    boxes2d = boxes2d + 4.0 * torch.randn(boxes2d.shape, generator=g)
    iou = reprojection_iou(boxes3d, boxes2d, K, T, size, size)
    n_box = max(1, min(args.loop_boxes, B))

    def per_box_loop() -> torch.Tensor:
        return torch.cat(
            [reprojection_iou(boxes3d[i : i + 1], boxes2d, K, T, size, size) for i in range(n_box)],
            dim=1,
        )

    n_bv = max(1, min(args.loop_boxes // 4, B))

    def per_box_per_view_loop() -> None:
        for i in range(n_bv):
            for v in range(V):
                reprojection_iou(
                    boxes3d[i : i + 1], boxes2d[v : v + 1], K[v : v + 1], T[v : v + 1], size, size
                )

    iou_diff = float((per_box_loop() - iou[:, :n_box]).abs().max()) if B and M else 0.0
    t_iou = _best_time(
        lambda: reprojection_iou(boxes3d, boxes2d, K, T, size, size), args.repeats, clock
    )
    t_iou_loop = _best_time(per_box_loop, max(1, args.repeats // 2), clock) * (B / n_box)
    t_iou_bv_loop = _best_time(per_box_per_view_loop, 1, clock) * (B / n_bv)

    return {
        "points": N,
        "views": V,
        "boxes": B,
        "dets_per_view": M,
        "threads": args.threads,
        "clock": "cpu" if clock is time.process_time else "wall",
        "t_mvxray_s": t_ours,
        "t_kornia_s": t_kornia,
        "t_loop_scaled_s": t_loop,
        "t_iou_s": t_iou,
        "t_iou_loop_scaled_s": t_iou_loop,
        "t_iou_box_view_loop_scaled_s": t_iou_bv_loop,
        "max_abs_diff_vs_kornia_px": max_diff,
        "max_abs_diff_iou_vs_loop": iou_diff,
        "speedup_vs_kornia": t_kornia / t_ours,
        "speedup_vs_loop": t_loop / t_ours,
        "iou_speedup_vs_loop": t_iou_loop / t_iou,
        "iou_speedup_vs_box_view_loop": t_iou_bv_loop / t_iou,
    }


def _print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"mvxray.geometry speed ({r['threads']} thread(s), {r['clock']} time, best of N)"
    )
    for col in ("task", "method", "time (ms)", "speed-up of mvxray"):
        table.add_column(col, justify="right" if col != "task" and col != "method" else "left")
    proj = f"project {r['points']:,} pts x {r['views']} views"
    table.add_row(proj, "mvxray project_points", f"{1e3 * r['t_mvxray_s']:.1f}", "1.0x")
    table.add_row(
        proj,
        "kornia PinholeCamera.project",
        f"{1e3 * r['t_kornia_s']:.1f}",
        f"{r['speedup_vs_kornia']:.1f}x",
    )
    table.add_row(
        proj,
        "per-point loop (scaled)",
        f"{1e3 * r['t_loop_scaled_s']:.1f}",
        f"{r['speedup_vs_loop']:.0f}x",
    )
    iou = f"IoU {r['boxes']:,} boxes x {r['views']} views x {r['dets_per_view']} dets"
    table.add_row(iou, "mvxray reprojection_iou", f"{1e3 * r['t_iou_s']:.1f}", "1.0x")
    table.add_row(
        iou,
        "per-box loop, views batched (scaled)",
        f"{1e3 * r['t_iou_loop_scaled_s']:.1f}",
        f"{r['iou_speedup_vs_loop']:.0f}x",
    )
    table.add_row(
        iou,
        "per-box, per-view loop (scaled)",
        f"{1e3 * r['t_iou_box_view_loop_scaled_s']:.1f}",
        f"{r['iou_speedup_vs_box_view_loop']:.0f}x",
    )
    Console().print(table)
    Console().print(
        f"max |mvxray - kornia| = {r['max_abs_diff_vs_kornia_px']:.2e} px; "
        f"max |IoU - loop IoU| = {r['max_abs_diff_iou_vs_loop']:.2e}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run, print the table and the final JSON line."""
    args = _parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        result = run(args)
    finally:
        torch.set_num_threads(threads)  # callers (e.g. a test session) keep their setting
    _print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
