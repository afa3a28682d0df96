"""Figures for people: the views with 2D/3D boxes, the rig in 3D, and a ``.ply`` scene.

Matplotlib (Agg) for PNGs; open3d, imported lazily, for the ``.ply`` scene.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import box3d_corners, project_boxes3d, unproject_points
from mvxray.geometry.rig import Rig
from mvxray.lifting.base import Lifted3D

# Edges of a box as pairs of corner indices (corner c has bits x=c&1, y=c&2, z=c&4).
_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
_COLORS = {"truth": "#2ca02c", "detected": "#ffbf00", "lifted": "#d62728"}


def _rect(ax: Any, box: torch.Tensor, color: str, lw: float, ls: str = "-") -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=lw, ls=ls))


def plot_views(
    sample: MultiViewSample,
    detections: list[Detections2D] | None,
    lifted: Lifted3D | None,
    path: str | Path,
    score_threshold: float = 0.3,
) -> Path:
    """Save a grid of all views with ground-truth (green), detected (yellow, dashed) and
    re-projected lifted 3D boxes (red).

    Args:
        sample: the case (images ``(V, C, H, W)``, rig, ground truth).
        detections: per-view 2D detections, or ``None``.
        lifted: lifted 3D boxes, or ``None``.
        path: PNG to write.
        score_threshold: detections below this score are not drawn.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    V = sample.num_views
    cols = min(5, V)
    rows = math.ceil(V / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    rig = sample.rig
    reproj = reproj_vis = None
    if lifted is not None and len(lifted):
        reproj, reproj_vis = project_boxes3d(
            lifted.boxes3d.to(rig.K.dtype), rig.K, rig.T_cam_from_ct, rig.height, rig.width
        )
    for v in range(rows * cols):
        ax = axes[v // cols][v % cols]
        ax.axis("off")
        if v >= V:
            continue
        img = sample.images[v, 0].detach().cpu().float().numpy()
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(
            img,
            cmap="gray",
            vmin=lo,
            vmax=hi if hi > lo else lo + 1,
            extent=(0, rig.width, rig.height, 0),
        )
        for m in range(sample.boxes2d.shape[1]):
            if bool(sample.visible2d[v, m]):
                _rect(ax, sample.boxes2d[v, m], _COLORS["truth"], 1.5)
        if detections is not None:
            d = detections[v]
            for b, s in zip(d.boxes, d.scores):
                if float(s) >= score_threshold:
                    _rect(ax, b, _COLORS["detected"], 1.0, "--")
        if reproj is not None and reproj_vis is not None:
            for b, ok in zip(reproj[v], reproj_vis[v]):
                if bool(ok):
                    _rect(ax, b, _COLORS["lifted"], 1.0)
        ax.set_title(f"view {v}", fontsize=9)
    fig.suptitle(
        "green: truth   yellow: 2D detections   red: lifted 3D boxes re-projected", fontsize=10
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _detector_corners(rig: Rig) -> torch.Tensor:
    """``(V, 4, 3)`` CT mm corners of each detector (the image plane at depth SDD)."""
    H, W = rig.height, rig.width
    uv = torch.tensor([[0.0, 0.0], [W, 0.0], [W, H], [0.0, H]], dtype=rig.K.dtype)
    uv = uv.expand(rig.num_views, 4, 2)
    depth = rig.sdd_mm[:, None].expand(rig.num_views, 4)
    return unproject_points(uv, depth, rig.K, rig.T_cam_from_ct)


def plot_rig_3d(
    rig: Rig,
    path: str | Path,
    ct_box: torch.Tensor | None = None,
    truth: torch.Tensor | None = None,
    found: torch.Tensor | None = None,
) -> Path:
    """Save a 3D picture of the sources, detectors, the CT outline and the boxes (CT mm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7, 7))
    ax = fig.add_subplot(projection="3d")
    src = rig.source_ct.detach().cpu().numpy()
    det = _detector_corners(rig).detach().cpu().numpy()
    ax.scatter(src[:, 0], src[:, 1], src[:, 2], c="k", s=12, label="sources")
    for v in range(rig.num_views):
        quad = np.vstack([det[v], det[v][:1]])
        ax.plot(quad[:, 0], quad[:, 1], quad[:, 2], c="#1f77b4", lw=0.8)
        centre = det[v].mean(0)
        ax.plot(*zip(src[v], centre), c="#999999", lw=0.5)
        ax.text(*src[v], str(v), fontsize=7)

    def draw(boxes: torch.Tensor | None, color: str, label: str) -> None:
        if boxes is None or boxes.numel() == 0:
            return
        corners = box3d_corners(boxes.detach().cpu().double().reshape(-1, 6)).numpy()
        for i, c in enumerate(corners):
            for a, b in _BOX_EDGES:
                ax.plot(
                    *zip(c[a], c[b]),
                    c=color,
                    lw=1.0,
                    label=label if (i == 0 and a == 0 and b == 1) else None,
                )

    draw(ct_box, "#7f7f7f", "CT volume")
    draw(truth, _COLORS["truth"], "truth")
    draw(found, _COLORS["lifted"], "found")
    ax.set_xlabel("X (mm, left)")
    ax.set_ylabel("Y (mm, posterior)")
    ax.set_zlabel("Z (mm, head)")
    ax.legend(loc="upper left", fontsize=8)
    lim = float(np.abs(np.vstack([src, det.reshape(-1, 3)])).max())
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_zlim(-lim, lim)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _import_open3d() -> Any:
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - depends on the system
        raise ImportError(
            "writing a .ply scene needs open3d; it failed to import "
            f"({exc}). On Debian/Ubuntu install its system library: apt-get install libusb-1.0-0"
        ) from exc
    return o3d


def write_ply_scene(
    rig: Rig,
    path: str | Path,
    ct_box: torch.Tensor | None = None,
    truth: torch.Tensor | None = None,
    found: torch.Tensor | None = None,
) -> Path:
    """Write the rig, CT outline and boxes as a coloured line set ``.ply`` (open3d), CT mm."""
    o3d = _import_open3d()
    points: list[np.ndarray] = []
    lines: list[tuple[int, int]] = []
    colors: list[tuple[float, float, float]] = []

    def add(
        pts: np.ndarray, edges: list[tuple[int, int]], color: tuple[float, float, float]
    ) -> None:
        base = sum(len(p) for p in points)
        points.append(pts)
        lines.extend((base + a, base + b) for a, b in edges)
        colors.extend([color] * len(edges))

    src = rig.source_ct.detach().cpu().numpy()
    det = _detector_corners(rig).detach().cpu().numpy()
    for v in range(rig.num_views):
        add(
            np.vstack([src[v : v + 1], det[v]]),
            [(1, 2), (2, 3), (3, 4), (4, 1), (0, 1), (0, 2), (0, 3), (0, 4)],
            (0.1, 0.4, 0.8),
        )
    for boxes, color in (
        (ct_box, (0.5, 0.5, 0.5)),
        (truth, (0.1, 0.7, 0.1)),
        (found, (0.85, 0.1, 0.1)),
    ):
        if boxes is None or boxes.numel() == 0:
            continue
        for c in box3d_corners(boxes.detach().cpu().double().reshape(-1, 6)).numpy():
            add(c, _BOX_EDGES, color)
    ls = o3d.geometry.LineSet()
    ls.points = o3d.utility.Vector3dVector(np.vstack(points))
    ls.lines = o3d.utility.Vector2iVector(np.asarray(lines, dtype=np.int32))
    ls.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_line_set(str(out), ls):
        raise OSError(f"open3d could not write {out}")
    return out
