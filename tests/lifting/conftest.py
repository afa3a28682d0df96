"""Tiny synthetic multi-view scenes for the lifting tests."""

from __future__ import annotations

import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, box3d_from_center_size, project_boxes3d


def make_scene(
    rig: Rig, num_boxes: int, seed: int, spread_mm: float = 60.0, blobs: bool = False
) -> MultiViewSample:
    """Random boxes near the isocentre, exact projected 2D boxes; zero (or blob) images."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(num_boxes, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * spread_mm
    s = 5.0 + torch.rand(num_boxes, 3, generator=g, dtype=torch.float64) * 10.0
    b3 = box3d_from_center_size(c, s)
    b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, rig.height, rig.width)
    V, H, W = rig.num_views, rig.height, rig.width
    images = torch.zeros(V, 1, H, W)
    if blobs:
        yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        for v in range(V):
            for m in range(num_boxes):
                x1, y1, x2, y2 = b2[v, m].tolist()
                cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2
                images[v, 0] += torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return MultiViewSample(
        images,
        rig,
        b3.float(),
        b2.float(),
        vis,
        torch.zeros(num_boxes, dtype=torch.long),
        f"s{seed}",
    )


def oracle_detections(
    sample: MultiViewSample,
    jitter_px: float = 0.0,
    drop: float = 0.0,
    fp_per_view: int = 0,
    seed: int = 0,
) -> list[Detections2D]:
    """The sample's 2D boxes with edge jitter, dropped boxes and false positives."""
    g = torch.Generator().manual_seed(seed)
    H, W = sample.rig.height, sample.rig.width
    out = []
    for v in range(sample.num_views):
        b = sample.boxes2d[v][sample.visible2d[v]].double()
        b = b[torch.rand(len(b), generator=g) >= drop]
        b = b + torch.randn(b.shape, generator=g, dtype=torch.float64) * jitter_px
        sc = torch.ones(len(b))
        if fp_per_view:
            ctr = torch.rand(fp_per_view, 2, generator=g, dtype=torch.float64) * torch.tensor(
                [W, H]
            )
            half = 2 + 4 * torch.rand(fp_per_view, 1, generator=g, dtype=torch.float64)
            b = torch.cat([b, torch.cat([ctr - half, ctr + half], 1)])
            sc = torch.cat([sc, 0.5 * torch.rand(fp_per_view, generator=g)])
        out.append(Detections2D(b.float(), sc, torch.zeros(len(b), dtype=torch.long)))
    return out


class StoredDetector:
    """A "detector" that returns the detections stored for each case (by case id)."""

    name = "stored"

    def __init__(self, detections: dict[str, list[Detections2D]]) -> None:
        self.detections = detections

    def predict_sample(self, sample: MultiViewSample) -> list[Detections2D]:
        return self.detections[sample.case_id]
