"""Figures: the view grid, the 3D rig picture and the .ply scene are written and non-trivial."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, project_boxes3d
from mvxray.lifting.base import Lifted3D
from mvxray.viz import plot_rig_3d, plot_views, write_ply_scene


@pytest.fixture
def sample() -> MultiViewSample:
    rig = Rig.circular(4, 300.0, 600.0, 48, 64, 8.0)
    boxes3d = torch.tensor(
        [[-10.0, -10, -10, 10, 10, 10], [20, 0, 5, 30, 12, 15]], dtype=torch.float64
    )
    b2d, vis = project_boxes3d(boxes3d, rig.K, rig.T_cam_from_ct, rig.height, rig.width)
    images = torch.rand(4, 1, 48, 64)
    return MultiViewSample(images, rig, boxes3d, b2d, vis, torch.zeros(2, dtype=torch.long), "c0")


def test_plot_views_draws_all_box_kinds(sample: MultiViewSample, tmp_path) -> None:
    dets = [
        Detections2D(sample.boxes2d[v].float(), torch.ones(2), torch.zeros(2, dtype=torch.long))
        for v in range(4)
    ]
    lifted = Lifted3D(sample.boxes3d + 25.0, torch.ones(2), torch.ones(2, 4, dtype=torch.bool))
    out = plot_views(sample, dets, lifted, tmp_path / "views.png")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape[0] > 100 and img.shape[1] > 300
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    green = (img[..., 1] > 120) & (img[..., 0] < 100) & (img[..., 2] < 100)
    assert red.sum() > 50 and green.sum() > 50


def test_plot_rig_and_ply(sample: MultiViewSample, tmp_path) -> None:
    ct = torch.tensor([[-100.0, -100, -100, 100, 100, 100]])
    png = plot_rig_3d(sample.rig, tmp_path / "rig.png", ct, sample.boxes3d, sample.boxes3d + 1)
    assert png.stat().st_size > 10_000
    ply = write_ply_scene(sample.rig, tmp_path / "scene.ply", ct, sample.boxes3d, None)
    text = ply.read_bytes()
    assert text.startswith(b"ply")
    # 4 views x 5 points + 3 boxes x 8 corners
    assert b"element vertex 44" in text
    # 4 x 8 rig edges + 3 boxes x 12 edges
    assert b"element edge 68" in text
