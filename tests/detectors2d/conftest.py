"""Tiny synthetic multi-view samples: faint Gaussian blobs on structured noise, with boxes."""

from __future__ import annotations

import math

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.geometry import Rig


def blob_sample(
    views: int = 2,
    size: int = 64,
    blobs: int = 2,
    seed: int = 0,
    contrast: float = 0.6,
    radius_px: float = 4.0,
    scale: float = 1.0,
    offset: float = 0.0,
) -> MultiViewSample:
    """``views`` views of ``size`` px: smooth background + stripes + noise + ``blobs`` bright
    Gaussian blobs (σ = radius / 2) whose boxes are centre ± radius px."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images, boxes = [], []
    for _ in range(views):
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        bg = 0.5 + 0.3 * torch.sin(2 * math.pi * yy / (size / 3) + phase) * (xx / size)
        bg = bg + 0.05 * torch.randn(size, size, generator=g)
        ctr = 2 * radius_px + torch.rand(blobs, 2, generator=g) * (size - 4 * radius_px)
        for cx, cy in ctr.tolist():
            bg = bg + contrast * torch.exp(
                -((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius_px / 2) ** 2)
            )
        images.append(bg)
        boxes.append(torch.cat([ctr - radius_px, ctr + radius_px], dim=1))
    rig = Rig.seed(size).subset(range(views))
    return MultiViewSample(
        images=(scale * torch.stack(images)[:, None] + offset).float(),
        rig=rig,
        boxes3d=torch.zeros(blobs, 6),
        boxes2d=torch.stack(boxes),
        visible2d=torch.ones(views, blobs, dtype=torch.bool),
        labels=torch.zeros(blobs, dtype=torch.long),
        case_id=f"synthetic{seed}",
    )


@pytest.fixture
def blob_dataset() -> list[MultiViewSample]:
    return [blob_sample(seed=s) for s in range(2)]
