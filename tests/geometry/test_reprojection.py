"""Reprojection IoU of 3D boxes / point sets, and frustum boxes / overlap between views."""

from __future__ import annotations

import pytest
import torch
from geometry_strategies import rigs
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.geometry import (
    Rig,
    ShapeError,
    box3d_corners,
    box3d_from_center_size,
    frustum_boxes,
    frustum_overlap,
    lift_pixels,
    project_boxes3d,
    project_point_sets,
    project_points,
    reprojection_iou,
    reprojection_iou_points,
)

F64 = torch.float64


def _boxes3d(g: torch.Generator, n: int, spread: float = 120.0) -> torch.Tensor:
    c = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * spread
    return box3d_from_center_size(c, 2 + torch.rand(n, 3, generator=g, dtype=F64) * 20)


def test_reprojection_iou_is_one_on_own_projections_and_matches_a_loop() -> None:
    rig = Rig.seed(size=256)
    g = torch.Generator().manual_seed(1)
    b3 = _boxes3d(g, 7)
    b2, _ = project_boxes3d(b3[:4], rig.K, rig.T_cam_from_ct, 256, 256)  # (V, 4, 4)
    iou = reprojection_iou(b3, b2, rig.K, rig.T_cam_from_ct, 256, 256)
    assert iou.shape == (10, 7, 4)
    assert torch.allclose(iou[:, :4].diagonal(dim1=1, dim2=2), torch.ones(10, 4, dtype=F64))
    assert (iou >= 0).all() and (iou <= 1).all()
    for n in range(7):
        for v in (0, 5):
            p, _ = project_boxes3d(
                b3[n : n + 1], rig.K[v : v + 1], rig.T_cam_from_ct[v : v + 1], 256, 256
            )
            from torchvision.ops import box_iou

            assert torch.allclose(iou[v, n], box_iou(p[0], b2[v])[0])


def test_reprojection_iou_empty_lists() -> None:
    rig = Rig.seed(size=64)
    assert reprojection_iou(
        torch.zeros(0, 6, dtype=F64), torch.zeros(10, 3, 4, dtype=F64), rig.K, rig.T_cam_from_ct
    ).shape == (10, 0, 3)
    b3 = torch.tensor([[-5.0, -5, -5, 5, 5, 5]], dtype=F64)
    assert reprojection_iou(
        b3, torch.zeros(10, 0, 4, dtype=F64), rig.K, rig.T_cam_from_ct
    ).shape == (10, 1, 0)


def test_box_behind_a_source_scores_zero_there() -> None:
    rig = Rig.seed(size=64)
    # around view 0's source (0, -300, 0): straddles its source plane, in front of the others
    b3 = torch.tensor([[-5.0, -305, -5, 5, -295, 5]], dtype=F64)
    b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct)  # unclipped, (V, 1, 4)
    assert vis.tolist() == [[False]] + [[True]] * 9
    iou = reprojection_iou(b3, b2, rig.K, rig.T_cam_from_ct)
    assert float(iou[0, 0, 0]) == 0.0
    assert torch.allclose(iou[1:], torch.ones(9, 1, 1, dtype=F64))


def test_point_set_version_matches_box_corners() -> None:
    rig = Rig.seed(size=128)
    g = torch.Generator().manual_seed(2)
    b3 = _boxes3d(g, 5)
    b2, _ = project_boxes3d(_boxes3d(g, 3), rig.K, rig.T_cam_from_ct, 128, 128)
    a = reprojection_iou(b3, b2, rig.K, rig.T_cam_from_ct, 128, 128)
    b = reprojection_iou_points(box3d_corners(b3), b2, rig.K, rig.T_cam_from_ct, 128, 128)
    assert torch.allclose(a, b)
    boxes, vis = project_point_sets(box3d_corners(b3), rig.K, rig.T_cam_from_ct)
    assert boxes.shape == (10, 5, 4) and vis.all()
    with pytest.raises(ValueError, match="P = 0"):
        project_point_sets(torch.zeros(2, 0, 3, dtype=F64), rig.K, rig.T_cam_from_ct)
    with pytest.raises(ShapeError, match="boxes2d"):
        reprojection_iou(b3, b2[0], rig.K, rig.T_cam_from_ct)


def _frustum_samples(
    g: torch.Generator, box: torch.Tensor, near: float, far: float, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixels of ``box`` and depths in [near, far]; the first 8 are the frustum's vertices."""
    f = torch.rand(n, 2, generator=g, dtype=F64)
    f[:8] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=F64).repeat(2, 1)
    uv = box[:2] + f * (box[2:] - box[:2])
    d = near + (far - near) * torch.rand(n, generator=g, dtype=F64)
    d[:4], d[4:8] = near, far
    return uv, d


@settings(max_examples=30, deadline=None)
@given(
    rig=rigs(min_views=2, max_views=3), seed=st.integers(0, 2**31 - 1), far=st.floats(300.0, 2500.0)
)
def test_frustum_box_contains_the_frustum_seen_in_b(rig: Rig, seed: int, far: float) -> None:
    g = torch.Generator().manual_seed(seed)
    lo = (
        torch.rand(2, generator=g, dtype=F64)
        * torch.tensor([rig.width, rig.height], dtype=F64)
        * 0.8
    )
    box = torch.cat([lo, lo + 1 + 20 * torch.rand(2, generator=g, dtype=F64)])
    near = 0.2 * far
    fb, ok = frustum_boxes(
        box[None], rig.K[0], rig.T_cam_from_ct[0], rig.K[1], rig.T_cam_from_ct[1], near, far
    )
    uv, d = _frustum_samples(g, box, near, far, 400)
    X = lift_pixels(uv[None], d[None, :, None], rig.K[:1], rig.T_cam_from_ct[:1])[0, :, 0]  # (n, 3)
    uvb, zb = project_points(X, rig.K[1:2], rig.T_cam_from_ct[1:2])
    front = zb[0] >= 1.0
    assert bool(ok[0]) == bool(front.any())
    if front.any():
        p = uvb[0][front]
        tol = 1e-6 * (1 + fb.abs().max())
        assert (p >= fb[0, :2] - tol).all() and (p <= fb[0, 2:] + tol).all()
    if front.all():  # no clipping: the box is exactly that of the 8 projected frustum corners
        quad = torch.stack([box[[0, 1]], box[[2, 1]], box[[2, 3]], box[[0, 3]]])
        X8 = lift_pixels(
            quad.repeat(2, 1)[None],
            torch.tensor([near] * 4 + [far] * 4, dtype=F64)[None, :, None],
            rig.K[:1],
            rig.T_cam_from_ct[:1],
        )[0, :, 0]
        corners, _ = project_points(X8, rig.K[1:2], rig.T_cam_from_ct[1:2])
        assert torch.allclose(
            fb[0], torch.cat([corners[0].amin(0), corners[0].amax(0)]), rtol=1e-9, atol=1e-6
        )


def test_frustum_crossing_b_source_plane_is_clipped() -> None:
    rig = Rig.circular(
        2, 300.0, 600.0, 64, 64, 10.0
    )  # views at 0° and 180°: b's source on a's axis at depth 600
    box = torch.tensor([[30.0, 30.0, 34.0, 34.0]], dtype=F64)
    args = (rig.K[0], rig.T_cam_from_ct[0], rig.K[1], rig.T_cam_from_ct[1])
    fb, ok = frustum_boxes(box, *args, 100.0, 900.0, 64, 64)
    # the frustum passes through b's source: seen from there it covers b's whole image
    assert bool(ok[0]) and fb[0].tolist() == [0.0, 0.0, 64.0, 64.0]
    fb, ok = frustum_boxes(box, *args, 100.0, 900.0)
    assert torch.isfinite(fb).all() and bool(ok[0])
    # entirely beyond b's source (behind it): nothing visible
    fb, ok = frustum_boxes(box, *args, 650.0, 900.0, 64, 64)
    assert not bool(ok[0]) and fb[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    # entirely in front: an opposite view sees the box mirrored about the centre column
    fb, ok = frustum_boxes(box, *args, 299.0, 301.0, 64, 64)
    assert bool(ok[0]) and fb[0].tolist() == pytest.approx([30.0, 30.0, 34.0, 34.0], abs=0.05)


def test_all_view_pairs_by_broadcasting() -> None:
    rig = Rig.seed(size=128)
    g = torch.Generator().manual_seed(3)
    b2, _ = project_boxes3d(_boxes3d(g, 4), rig.K, rig.T_cam_from_ct, 128, 128)  # (V, 4, 4)
    K, T = rig.K, rig.T_cam_from_ct
    fb, ok = frustum_boxes(b2[:, None], K[:, None], T[:, None], K[None], T[None], 150.0, 450.0)
    assert fb.shape == (10, 10, 4, 4) and ok.shape == (10, 10, 4)
    idx = torch.arange(10)
    assert torch.allclose(fb[idx, idx], b2, atol=1e-9)  # a view sees its own frustum as the box
    ov = frustum_overlap(
        b2[:, None], b2[None], K[:, None], T[:, None], K[None], T[None], 150.0, 450.0, 128, 128
    )
    assert ov.shape == (10, 10, 4, 4)
    # each 3D box's frustum from view a contains (most of) its projection in view b
    assert (ov.diagonal(dim1=-2, dim2=-1) > 0.99).all()


@settings(max_examples=25, deadline=None)
@given(rig=rigs(min_views=2, max_views=3), seed=st.integers(0, 2**31 - 1))
def test_frustum_overlap_of_a_correspondence(rig: Rig, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sid = float(rig.source_ct.norm(dim=-1).min())
    X = (torch.rand(1, 3, generator=g, dtype=F64) - 0.5) * 0.3 * sid
    uv, z, _ = rig.project(X)
    box_a = torch.cat([uv[0] - 3, uv[0] + 3], -1)  # (1, 4)
    box_b = torch.cat([uv[1] - 3, uv[1] + 3], -1)
    args = (
        rig.K[0],
        rig.T_cam_from_ct[0],
        rig.K[1],
        rig.T_cam_from_ct[1],
        0.5 * float(z[0, 0]),
        1.5 * float(z[0, 0]),
    )
    # a box just right of the frustum's extent in b (thousands of px wide at long focal lengths)
    x1 = float(frustum_boxes(box_a, *args)[0][0, 2]) + 1.0
    far_b = torch.tensor([[x1, box_b[0, 1], x1 + 6.0, box_b[0, 3]]], dtype=F64)
    boxes_b = torch.cat([box_b, far_b])
    iob = frustum_overlap(box_a, boxes_b, *args)
    iou = frustum_overlap(box_a, boxes_b, *args, metric="iou")
    assert iob.shape == (1, 2)
    assert float(iob[0, 0]) > 0 and float(iob[0, 1]) == 0.0
    assert (iou <= iob + 1e-12).all() and (iou >= 0).all() and (iob <= 1 + 1e-12).all()
    with pytest.raises(ValueError, match="metric"):
        frustum_overlap(box_a, boxes_b, *args, metric="giou")


def test_frustum_refusals_and_empty() -> None:
    rig = Rig.seed(size=64)
    args = (rig.K[0], rig.T_cam_from_ct[0], rig.K[1], rig.T_cam_from_ct[1])
    with pytest.raises(ValueError, match="near < far"):
        frustum_boxes(torch.zeros(1, 4, dtype=F64), *args, 300.0, 200.0)
    with pytest.raises(ShapeError, match="boxes_a"):
        frustum_boxes(torch.zeros(1, 3, dtype=F64), *args, 100.0, 200.0)
    fb, ok = frustum_boxes(torch.zeros(0, 4, dtype=F64), *args, 100.0, 200.0)
    assert fb.shape == (0, 4) and ok.shape == (0,)
    assert frustum_overlap(
        torch.zeros(0, 4, dtype=F64), torch.zeros(3, 4, dtype=F64), *args, 100.0, 200.0
    ).shape == (0, 3)
