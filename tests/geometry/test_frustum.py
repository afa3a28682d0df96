"""Frustum (2.5D) encoding: depth bins, lifting pixels and RoIs, RoI normalization, sin/cos."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import rigs
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.geometry import (
    Rig,
    ShapeError,
    depth_bin_edges,
    depth_bins,
    frustum_coords,
    lift_pixels,
    lift_rois,
    normalize_to_roi,
    points_depth,
    project_points,
    roi_points,
    sincos_encoding,
)

F64 = torch.float64


def test_depth_bins_hand_values() -> None:
    assert depth_bin_edges(100.0, 500.0, 4).tolist() == [100.0, 200.0, 300.0, 400.0, 500.0]
    assert depth_bins(100.0, 500.0, 4).tolist() == [150.0, 250.0, 350.0, 450.0]
    # LID, D = 4: edges at near + 400·k(k+1)/20 = 100, 140, 220, 340, 500; centres (k+1)²·20
    assert depth_bin_edges(100.0, 500.0, 4, "lid", F64).tolist() == [
        100.0,
        140.0,
        220.0,
        340.0,
        500.0,
    ]
    assert depth_bins(100.0, 500.0, 4, "lid", F64).tolist() == [120.0, 180.0, 280.0, 420.0]


@pytest.mark.parametrize("D", [1, 2, 7, 64])
def test_lid_bin_widths_increase_linearly(D: int) -> None:
    e = depth_bin_edges(0.0, 1.0, D, "lid", F64)
    w = e[1:] - e[:-1]
    assert torch.allclose(w, 2 * torch.arange(1, D + 1, dtype=F64) / (D * (D + 1)))
    assert float(e[0]) == 0.0 and float(e[-1]) == pytest.approx(1.0)


def test_depth_bins_refusals() -> None:
    with pytest.raises(ValueError, match="mode: expected one of"):
        depth_bins(1.0, 2.0, 3, "log")
    with pytest.raises(ValueError, match="num_bins: expected >= 1, found 0"):
        depth_bins(1.0, 2.0, 0)
    with pytest.raises(ValueError, match="near < far"):
        depth_bins(5.0, 2.0, 3)


@settings(max_examples=25, deadline=None)
@given(rig=rigs(), seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["uniform", "lid"]))
def test_lifted_points_project_back_at_their_depth(rig: Rig, seed: int, mode: str) -> None:
    g = torch.Generator().manual_seed(seed)
    V, N, D = rig.num_views, 5, 6
    uv = torch.rand(V, N, 2, generator=g, dtype=F64) * torch.tensor(
        [rig.width, rig.height], dtype=F64
    )
    depths = depth_bins(50.0, 900.0, D, mode, F64)
    pts = lift_pixels(uv, depths, rig.K, rig.T_cam_from_ct)
    assert pts.shape == (V, N, D, 3)
    # view v's points, projected by view v (batch = views)
    uv2, z2 = project_points(pts.flatten(1, 2), rig.K[:, None], rig.T_cam_from_ct[:, None])
    assert (uv2[:, 0].unflatten(1, (N, D)) - uv[:, :, None]).abs().max() < 1e-4
    assert torch.allclose(z2[:, 0].unflatten(1, (N, D)), depths.expand(V, N, D))
    assert torch.allclose(
        points_depth(pts.flatten(1, 2), rig.T_cam_from_ct[:, None])[:, 0],
        depths.repeat(N).expand(V, -1),
    )


def test_lift_pixels_per_pixel_depths_and_batch() -> None:
    rig = Rig.seed(size=32)
    uv = torch.rand(2, 10, 3, 2, dtype=F64) * 32
    depths = 200 + 200 * torch.rand(2, 10, 3, 4, dtype=F64)
    pts = lift_pixels(uv, depths, rig.K.expand(2, 10, 3, 3), rig.T_cam_from_ct)
    assert pts.shape == (2, 10, 3, 4, 3)
    ref = lift_pixels(
        uv[1, 4, 2:3].unsqueeze(0),
        depths[1, 4, 2:3].unsqueeze(0),
        rig.K[4:5],
        rig.T_cam_from_ct[4:5],
    )
    assert torch.allclose(pts[1, 4, 2], ref[0, 0])
    with pytest.raises(ShapeError, match="depths"):
        lift_pixels(uv[0], depths[0, :, :2], rig.K, rig.T_cam_from_ct)
    with pytest.raises(ShapeError, match="uv"):
        lift_pixels(torch.zeros(10, 3, 3, dtype=F64), depths[0, 0, 0], rig.K, rig.T_cam_from_ct)


def test_roi_points_and_lift_rois() -> None:
    boxes = torch.tensor([[[10.0, 20.0, 14.0, 28.0]]], dtype=F64)  # (V=1, M=1, 4)
    pts = roi_points(boxes, (2, 2))
    # cell centres at x1 + (j + 0.5)·4/2 = 11, 13 and y1 + (i + 0.5)·8/2 = 22, 26, row-major
    assert pts[0, 0].tolist() == [[11.0, 22.0], [13.0, 22.0], [11.0, 26.0], [13.0, 26.0]]
    assert roi_points(boxes)[0, 0].tolist() == [[12.0, 24.0]]
    rig = Rig.seed(size=64).subset([2])
    depths = torch.tensor([250.0, 300.0], dtype=F64)
    lifted = lift_rois(boxes, depths, rig.K, rig.T_cam_from_ct, grid=(2, 2))
    assert lifted.shape == (1, 1, 4, 2, 3)
    centre = lift_rois(boxes, depths, rig.K, rig.T_cam_from_ct)
    assert torch.allclose(
        centre[0, 0, 0],
        lift_pixels(torch.tensor([[[12.0, 24.0]]], dtype=F64), depths, rig.K, rig.T_cam_from_ct)[
            0, 0
        ],
    )
    assert lift_rois(torch.zeros(1, 0, 4, dtype=F64), depths, rig.K, rig.T_cam_from_ct).shape == (
        1,
        0,
        1,
        2,
        3,
    )
    with pytest.raises(ValueError, match="grid"):
        roi_points(boxes, (0, 2))


def test_normalize_to_roi() -> None:
    roi = torch.tensor([-10.0, 0.0, 100.0, 10.0, 20.0, 140.0])
    pts = torch.tensor(
        [[-10.0, 0.0, 100.0], [10.0, 20.0, 140.0], [0.0, 5.0, 130.0], [20.0, 5.0, 90.0]]
    )
    c, inside = normalize_to_roi(pts, roi)
    assert c.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 0.75], [1.5, 0.25, -0.25]]
    assert inside.tolist() == [True, True, True, False]
    c, _ = normalize_to_roi(pts, roi, clamp=True)
    assert c[3].tolist() == [1.0, 0.25, 0.0]
    with pytest.raises(ValueError, match="max > min"):
        normalize_to_roi(pts, torch.tensor([0.0, 0, 0, 1, 0, 1]))
    with pytest.raises(ShapeError, match=r"roi_ct: expected shape \(\*, 6\), found \(4,\)"):
        normalize_to_roi(pts, torch.zeros(4))


def test_sincos_encoding_formulas() -> None:
    x = torch.tensor([[0.3, 0.7]], dtype=F64)
    enc = sincos_encoding(x, num_feats=4, temperature=100.0)
    # per coordinate: ω₀ = 2π, ω₁ = 2π / 100^(2/4) = 2π / 10; pairs (sin, cos)
    w0, w1 = 2 * math.pi, 2 * math.pi / 10
    expected = []
    for v in (0.3, 0.7):
        expected += [math.sin(w0 * v), math.cos(w0 * v), math.sin(w1 * v), math.cos(w1 * v)]
    assert enc[0].tolist() == pytest.approx(expected)
    nerf = sincos_encoding(x, num_feats=6, freqs="nerf", include_input=True)
    assert nerf.shape == (1, 2 + 12)
    assert nerf[0, :2].tolist() == pytest.approx([0.3, 0.7])
    assert nerf[0, 2 + 4].item() == pytest.approx(math.sin(4 * math.pi * 0.3))  # k = 2: ω = 4π
    assert sincos_encoding(torch.rand(2, 5, 7, 3), num_feats=64).shape == (2, 5, 7, 192)
    with pytest.raises(ValueError, match="even"):
        sincos_encoding(x, num_feats=5)
    with pytest.raises(ValueError, match="freqs"):
        sincos_encoding(x, freqs="fourier")


def test_frustum_coords_inside_mask() -> None:
    rig = Rig.seed(size=64)
    roi = torch.tensor([-50.0, -50, -50, 50, 50, 50], dtype=F64)
    uv = torch.full((10, 1, 2), 32.0, dtype=F64)  # principal rays through the isocentre
    c, inside = frustum_coords(uv, rig.K, rig.T_cam_from_ct, roi, 200.0, 400.0, 4, "uniform")
    # depths 225, 275, 325, 375: only 275 and 325 are within 50 mm of the isocentre (SID 300)
    assert inside[0, 0].tolist() == [False, True, True, False]
    assert torch.allclose(c[:, 0, 1:3].mean(-2), torch.full((10, 3), 0.5, dtype=F64))


def test_gradcheck_frustum_lifting() -> None:
    rig = Rig.circular(2, 300.0, 600.0, 40, 50, 2.0)
    uv = (torch.rand(2, 3, 2, dtype=F64) * 40).requires_grad_()
    depths = torch.tensor([150.0, 250.0, 400.0], dtype=F64, requires_grad=True)
    T = rig.T_cam_from_ct.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, d, t: lift_pixels(x, d, rig.K, t), (uv, depths, T))
    boxes = torch.tensor(
        [[[5.0, 6.0, 15.0, 20.0]], [[30.0, 2.0, 33.0, 9.0]]], dtype=F64, requires_grad=True
    )
    assert torch.autograd.gradcheck(
        lambda b: lift_rois(b, depths.detach(), rig.K, rig.T_cam_from_ct, (2, 3)), (boxes,)
    )
    roi = torch.tensor([-100.0, -100, -100, 100, 100, 100], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda x: sincos_encoding(
            normalize_to_roi(lift_pixels(x, depths.detach(), rig.K, rig.T_cam_from_ct), roi)[0], 8
        ),
        (uv,),
    )
