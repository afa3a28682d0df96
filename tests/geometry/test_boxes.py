"""3D and 2D boxes: corners, centre/size, IoU, projection of 3D boxes."""

from __future__ import annotations

import pytest
import torch
from geometry_strategies import rigs
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from mvxray.geometry import (
    Rig,
    ShapeError,
    box3d_center_size,
    box3d_corners,
    box3d_from_center_size,
    box3d_volume,
    box_iou_2d,
    box_iou_3d,
    project_boxes3d,
    project_points,
)

F64 = torch.float64


def _boxes2d(g: torch.Generator, *shape: int) -> torch.Tensor:
    lo = torch.rand(*shape, 2, generator=g, dtype=F64) * 100
    return torch.cat([lo, lo + 1 + torch.rand(*shape, 2, generator=g, dtype=F64) * 50], -1)


def _boxes3d(g: torch.Generator, n: int, spread: float = 100.0) -> torch.Tensor:
    c = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * spread
    s = 1 + torch.rand(n, 3, generator=g, dtype=F64) * 30
    return box3d_from_center_size(c, s)


def test_corners_centre_size_volume() -> None:
    b = torch.tensor([[0.0, -1.0, 2.0, 4.0, 1.0, 8.0]])
    corners = box3d_corners(b)
    assert corners.shape == (1, 8, 3)
    assert corners[0, 0].tolist() == [0.0, -1.0, 2.0] and corners[0, 7].tolist() == [4.0, 1.0, 8.0]
    assert corners[0, 1].tolist() == [4.0, -1.0, 2.0]  # bit 0 → x max
    c, s = box3d_center_size(b)
    assert c.tolist() == [[2.0, 0.0, 5.0]] and s.tolist() == [[4.0, 2.0, 6.0]]
    assert torch.equal(box3d_from_center_size(c, s), b)
    assert box3d_volume(b).tolist() == [48.0]
    assert box3d_volume(torch.tensor([[1.0, 1, 1, 0, 2, 2]])).tolist() == [0.0]  # inverted: empty


def test_iou_3d_hand_values() -> None:
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    b = torch.tensor([[1.0, 1, 1, 3, 3, 3], [0.0, 0, 0, 2, 2, 2], [5.0, 5, 5, 6, 6, 6]])
    # overlap 1 mm³, union 8 + 8 - 1 = 15
    assert box_iou_3d(a, b)[0].tolist() == pytest.approx([1 / 15, 1.0, 0.0])


def test_iou_empty_lists() -> None:
    assert box_iou_3d(torch.zeros(0, 6), torch.zeros(4, 6)).shape == (0, 4)
    assert box_iou_2d(torch.zeros(3, 4), torch.zeros(0, 4)).shape == (3, 0)
    assert box_iou_2d(torch.zeros(5, 0, 4), torch.zeros(5, 7, 4)).shape == (5, 0, 7)
    assert box_iou_2d(torch.zeros(0, 2, 4), torch.zeros(0, 3, 4)).shape == (0, 2, 3)


@pytest.mark.parametrize(("n", "m"), [(3, 4), (70, 80)])  # both the broadcast and the looped path
def test_batched_iou_2d_matches_torchvision(n: int, m: int) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = _boxes2d(g, 3, n), _boxes2d(g, 3, m)
    out = box_iou_2d(a, b)
    for i in range(3):
        assert torch.allclose(out[i], box_iou(a[i], b[i]))
    # broadcasting one box list against a batch of lists
    assert torch.allclose(box_iou_2d(a[0], b)[2], box_iou(a[0], b[2]))


def test_inference_iou_path_matches_differentiable_path() -> None:
    """The in-place (no-grad) kernel for large box sets equals the autograd path, also on
    empty and touching boxes."""
    g = torch.Generator().manual_seed(1)
    a, b = _boxes2d(g, 4, 90), _boxes2d(g, 4, 60)
    a[0, :5, 2:] = a[0, :5, :2]  # zero-area boxes
    b[1, :3] = 0.0  # zero-area boxes at the origin (IoU with another empty box must be 0)
    a[2, 0] = b[2, 0]  # identical boxes
    fast = box_iou_2d(a, b)
    slow = box_iou_2d(a.clone().requires_grad_(), b).detach()
    assert torch.allclose(fast, slow, atol=0, rtol=1e-12)
    assert fast[2, 0, 0] == 1.0 and (fast[0, :5] == 0).all() and (fast[1, :, :3] == 0).all()


def test_project_boxes3d_equals_enclosing_box_of_projected_corners() -> None:
    rig = Rig.seed(size=512)
    g = torch.Generator().manual_seed(2)
    boxes = torch.stack([_boxes3d(g, 7), _boxes3d(g, 7)])  # leading batch dim (2, 7, 6)
    b2d, vis = project_boxes3d(boxes, rig.K, rig.T_cam_from_ct)  # (2, V, 7, 4)
    uv, _ = project_points(box3d_corners(boxes).flatten(-3, -2), rig.K, rig.T_cam_from_ct)
    uv = uv.unflatten(-2, (7, 8))  # (2, V, 7, 8, 2)
    expected = torch.cat([uv.amin(-2), uv.amax(-2)], -1)
    assert b2d.shape == (2, 10, 7, 4) and vis.all()
    assert torch.allclose(b2d, expected, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), m=st.integers(1, 6))
def test_iou_properties(seed: int, n: int, m: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = _boxes2d(g, n), _boxes2d(g, m)
    ab, ba = box_iou_2d(a, b), box_iou_2d(b, a)
    assert torch.allclose(ab, ba.T) and (ab >= 0).all() and (ab <= 1).all()
    assert torch.allclose(box_iou_2d(a, a).diagonal(), torch.ones(n, dtype=F64))
    a3, b3 = _boxes3d(g, n), _boxes3d(g, m)
    ab3 = box_iou_3d(a3, b3)
    assert torch.allclose(ab3, box_iou_3d(b3, a3).T) and (ab3 >= 0).all() and (ab3 <= 1).all()
    assert torch.allclose(box_iou_3d(a3, a3).diagonal(), torch.ones(n, dtype=F64))


@settings(max_examples=30, deadline=None)
@given(rig=rigs(), seed=st.integers(0, 2**31 - 1))
def test_projected_box_contains_projected_inner_points(rig: Rig, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sid = float(rig.source_ct.norm(dim=-1).min())
    boxes = _boxes3d(g, 3, spread=0.3 * sid)
    frac = torch.rand(3, 50, 3, generator=g, dtype=F64)
    inner = boxes[:, None, :3] + frac * (boxes[:, None, 3:] - boxes[:, None, :3])  # (3, 50, 3)
    b2d, vis = project_boxes3d(boxes, rig.K, rig.T_cam_from_ct)
    assert vis.all()
    uv, _ = project_points(inner.reshape(-1, 3), rig.K, rig.T_cam_from_ct)
    uv = uv.unflatten(-2, (3, 50))  # (V, 3, 50, 2)
    tol = 1e-9
    assert (uv[..., 0] >= b2d[..., None, 0] - tol).all() and (
        uv[..., 0] <= b2d[..., None, 2] + tol
    ).all()
    assert (uv[..., 1] >= b2d[..., None, 1] - tol).all() and (
        uv[..., 1] <= b2d[..., None, 3] + tol
    ).all()


def test_project_boxes3d_hand_value_and_clipping() -> None:
    rig = Rig.seed(size=1024)
    # a cube of ±10 mm at the isocentre in view 0 (source at -Y 300 mm, f = 768 px):
    # its nearest face (y = -10, camera z = 290) spans u = 512 ± 768·10/290.
    b2d, vis = project_boxes3d(
        torch.tensor([[-10.0, -10, -10, 10, 10, 10]], dtype=F64), rig.K, rig.T_cam_from_ct
    )
    half = 768 * 10 / 290
    assert b2d[0, 0].tolist() == pytest.approx([512 - half, 512 - half, 512 + half, 512 + half])
    assert bool(vis[0, 0])
    # a box reaching past the detector edge is clipped
    big = torch.tensor([[-400.0, -10, -10, 400, 10, 10]], dtype=F64)
    clipped, vis = project_boxes3d(big, rig.K[:1], rig.T_cam_from_ct[:1], 1024, 1024)
    assert clipped[0, 0, 0] == 0.0 and clipped[0, 0, 2] == 1024.0 and bool(vis[0, 0])
    # a box straddling the source is not visible in that view
    through = torch.tensor([[-5.0, -310, -5, 5, -290, 5]], dtype=F64)
    _, vis = project_boxes3d(through, rig.K, rig.T_cam_from_ct, 1024, 1024)
    assert not bool(vis[0, 0])


def test_box_shape_errors() -> None:
    with pytest.raises(ShapeError, match=r"boxes: expected shape \(\*, N, 6\), found \(2, 4\)"):
        box3d_corners(torch.zeros(2, 4))
    with pytest.raises(ShapeError, match=r"b: expected shape \(\*, N, 4\)"):
        box_iou_2d(torch.zeros(2, 4), torch.zeros(2, 6))
