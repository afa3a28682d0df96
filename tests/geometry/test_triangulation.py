"""Triangulation: weighted multi-view DLT, robust variant, degenerate cases, ray midpoints."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import points_near_isocentre, rigs
from hypothesis import given, settings
from hypothesis import strategies as st
from kornia.geometry.epipolar import triangulate_points

from mvxray.geometry import (
    Rig,
    ShapeError,
    closest_point_of_rays,
    projection_matrix,
    triangulate,
    triangulate_robust,
)

F64 = torch.float64


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_noiseless_triangulation_recovers_the_point(data: st.DataObject) -> None:
    rig = data.draw(rigs())
    X = data.draw(points_near_isocentre(rig))
    uv, _, _ = rig.project(X)
    res = triangulate(uv, rig.K, rig.T_cam_from_ct)
    scale = float(rig.source_ct.norm(dim=-1).max())
    assert ((res.points - X).norm(dim=-1) / scale).max() < 1e-6
    assert res.residuals_px.max() < 1e-6
    assert (res.num_views == rig.num_views).all()
    assert res.inliers.all() and ((res.condition > 0) & (res.condition <= 1)).all()
    # robust variant agrees on clean data
    rob = triangulate_robust(uv, rig.K, rig.T_cam_from_ct, threshold_px=1.0)
    assert ((rob.points - X).norm(dim=-1) / scale).max() < 1e-6


def test_matches_kornia_two_view_dlt_without_noise() -> None:
    rig = Rig.seed(size=256)
    X = torch.randn(12, 3, dtype=F64) * 40
    uv, _, _ = rig.project(X)
    P = projection_matrix(rig.K, rig.T_cam_from_ct)
    theirs = triangulate_points(P[0], P[4], uv[0], uv[4])
    ours = triangulate(uv[[0, 4]], rig.K[[0, 4]], rig.T_cam_from_ct[[0, 4]]).points
    assert torch.allclose(ours, theirs, atol=1e-8)


def test_noise_residuals_and_weights() -> None:
    rig = Rig.seed(size=512)
    X = torch.tensor([[10.0, -15.0, 25.0]], dtype=F64)
    uv, _, _ = rig.project(X)
    noisy = uv.clone()
    noisy[3, 0] += torch.tensor([6.0, -4.0], dtype=F64)  # one bad view
    plain = triangulate(noisy, rig.K, rig.T_cam_from_ct)
    down = triangulate(
        noisy,
        rig.K,
        rig.T_cam_from_ct,
        weights=torch.ones(10, 1, dtype=F64).index_fill(0, torch.tensor([3]), 0.01),
    )
    err = lambda r: float((r.points - X).norm())  # noqa: E731
    assert err(down) < err(plain) / 10
    assert float(plain.residuals_px[3, 0]) > 1.0  # the bad view shows in its residual
    # a view with zero weight or marked invalid is ignored, even with NaN pixels
    nan_uv = uv.clone()
    nan_uv[3, 0] = math.nan
    valid = torch.ones(10, 1, dtype=torch.bool)
    valid[3] = False
    res = triangulate(nan_uv, rig.K, rig.T_cam_from_ct, valid=valid)
    assert torch.allclose(res.points, X) and int(res.num_views[0]) == 9
    assert not bool(res.inliers[3, 0])


def test_robust_rejects_outlier_views() -> None:
    rig = Rig.seed(size=512)
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(30, 3, generator=g, dtype=F64) - 0.5) * 100
    uv, _, _ = rig.project(X)
    bad = uv.clone()
    bad[2] += 25.0  # view 2 wrong for every point
    bad[7, :10] -= 40.0  # view 7 wrong for a third of them
    res = triangulate_robust(bad, rig.K, rig.T_cam_from_ct, threshold_px=2.0)
    assert (res.points - X).norm(dim=-1).max() < 1e-6
    assert not res.inliers[2].any() and not res.inliers[7, :10].any() and res.inliers[7, 10:].all()
    plain = triangulate(bad, rig.K, rig.T_cam_from_ct)
    assert (plain.points - X).norm(dim=-1).min() > 1e-2


def test_single_view_is_degenerate_but_finite() -> None:
    rig = Rig.seed(size=64).subset([0])
    uv, _, _ = rig.project(torch.tensor([[1.0, 2.0, 3.0]], dtype=F64))
    for res in (
        triangulate(uv, rig.K, rig.T_cam_from_ct),
        triangulate_robust(uv, rig.K, rig.T_cam_from_ct),
    ):
        assert res.degenerate.tolist() == [True] and res.num_views.tolist() == [1]
        assert torch.isfinite(res.points).all()
    # two views, one of them invalid: also degenerate
    rig2 = Rig.seed(size=64).subset([0, 3])
    uv2, _, _ = rig2.project(torch.tensor([[1.0, 2.0, 3.0]], dtype=F64))
    res = triangulate(uv2, rig2.K, rig2.T_cam_from_ct, valid=torch.tensor([[True], [False]]))
    assert res.degenerate.tolist() == [True]


def test_opposite_views_conditioning() -> None:
    """Views at 0° and 180° (sources at (0, ∓300, 0)): their lines of sight through a point
    (x, 0, 0) meet at 2·atan(x / 300); on the common axis (x = 0) they coincide."""
    rig = Rig.circular(2, 300.0, 600.0, 256, 256, 2.0)
    X = torch.tensor([[10.0, 0.0, 0.0], [0.0, 50.0, 0.0], [60.0, 0.0, 0.0]], dtype=F64)
    uv, _, _ = rig.project(X)
    res = triangulate(uv, rig.K, rig.T_cam_from_ct, min_angle_deg=5.0)
    assert res.max_angle_deg[0].item() == pytest.approx(
        2 * math.degrees(math.atan(10 / 300)), abs=1e-6
    )
    assert res.max_angle_deg[1].item() == pytest.approx(0.0, abs=1e-5)
    assert res.degenerate.tolist() == [True, True, False]  # 3.8° and 0° below 5°, 22.6° above
    assert res.condition[0] < res.condition[2] and res.condition[1] < 1e-6
    assert torch.isfinite(res.points).all()


def test_identity_poses_are_degenerate() -> None:
    # Two cameras at the same place (identity poses): every pair of rays is the same line.
    K = torch.tensor([[500.0, 0, 50], [0, 500, 50], [0, 0, 1]], dtype=F64).expand(2, 3, 3)
    T = torch.eye(4, dtype=F64).expand(2, 4, 4)
    uv = torch.tensor([[[60.0, 40.0]], [[60.0, 40.0]]], dtype=F64)
    res = triangulate(uv, K, T)
    assert res.degenerate.tolist() == [True] and res.max_angle_deg.item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_batched_and_empty() -> None:
    rig = Rig.seed(size=128)
    X = torch.randn(2, 4, 3, dtype=F64) * 30
    uv = torch.stack([rig.project(x)[0] for x in X])  # (2, V, 4, 2)
    res = triangulate(uv, rig.K.expand(2, 10, 3, 3), rig.T_cam_from_ct.expand(2, 10, 4, 4))
    assert res.points.shape == (2, 4, 3) and res.residuals_px.shape == (2, 10, 4)
    assert torch.allclose(res.points, X)
    rob = triangulate_robust(uv, rig.K, rig.T_cam_from_ct)
    assert torch.allclose(rob.points, X)
    empty = triangulate(torch.zeros(10, 0, 2, dtype=F64), rig.K, rig.T_cam_from_ct)
    assert empty.points.shape == (0, 3) and empty.degenerate.shape == (0,)


def test_bad_inputs_name_the_argument() -> None:
    rig = Rig.seed(size=64)
    uv = torch.zeros(10, 3, 2, dtype=F64)
    with pytest.raises(ShapeError, match=r"uv: expected shape \(\*, N, N, 2\), found \(10, 3, 3\)"):
        triangulate(torch.zeros(10, 3, 3, dtype=F64), rig.K, rig.T_cam_from_ct)
    with pytest.raises(ShapeError, match=r"K: expected shape \(\*, 10, 3, 3\), found \(9, 3, 3\)"):
        triangulate(uv, rig.K[:9], rig.T_cam_from_ct)
    with pytest.raises(ShapeError, match=r"T_cam_from_ct: expected shape \(\*, 10, 4, 4\)"):
        triangulate(uv, rig.K, rig.T_cam_from_ct[:3])
    with pytest.raises(ShapeError, match=r"weights: expected shape \(10, 3\)"):
        triangulate(uv, rig.K, rig.T_cam_from_ct, weights=torch.ones(10, 4, dtype=F64))
    with pytest.raises(ShapeError, match=r"valid: expected shape \(10, 3\)"):
        triangulate_robust(uv, rig.K, rig.T_cam_from_ct, valid=torch.ones(3, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="weights: expected finite, non-negative"):
        triangulate(uv, rig.K, rig.T_cam_from_ct, weights=-torch.ones(10, 3, dtype=F64))
    nan = uv.clone()
    nan[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="uv: NaN or Inf in a used view"):
        triangulate(nan, rig.K, rig.T_cam_from_ct)
    K = rig.K.clone()
    K[0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="singular intrinsics"):
        triangulate(uv, K, rig.T_cam_from_ct)


def test_gradcheck_triangulation() -> None:
    rig = Rig.circular(3, 300.0, 600.0, 64, 64, 2.0, arc_deg=180.0)
    X = torch.tensor([[5.0, -3.0, 8.0], [-20.0, 10.0, 0.0]], dtype=F64)
    uv, _, _ = rig.project(X)
    uv = (uv + 0.3 * torch.randn_like(uv)).requires_grad_()
    w = (0.5 + torch.rand(3, 2, dtype=F64)).requires_grad_()
    T = rig.T_cam_from_ct.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, t: triangulate(a, rig.K, t, weights=b).points, (uv, w, T)
    )
    assert torch.autograd.gradcheck(
        lambda a: triangulate(a, rig.K, rig.T_cam_from_ct).residuals_px, (uv,)
    )


def test_closest_point_of_rays() -> None:
    # skew rays: x-axis and the line (t, ... ) through (0, 0, 2) along y: midpoint (0, 0, 1)
    o = torch.tensor([[0.0, 0, 0], [0, 0, 2]], dtype=F64)
    d = torch.tensor([[3.0, 0, 0], [0, 0.5, 0]], dtype=F64)
    p, dist = closest_point_of_rays(o, d)
    assert p.tolist() == pytest.approx([0.0, 0.0, 1.0]) and dist.tolist() == pytest.approx(
        [1.0, 1.0]
    )
    # weights pull the point towards the heavier ray
    p, dist = closest_point_of_rays(o, d, torch.tensor([3.0, 1.0], dtype=F64))
    assert p.tolist() == pytest.approx([0.0, 0.0, 0.5])
    # parallel rays: finite, on the mid-line
    par = closest_point_of_rays(
        torch.tensor([[0.0, 0, 0], [0, 2, 0]], dtype=F64),
        torch.tensor([[1.0, 0, 0], [1.0, 0, 0]], dtype=F64),
    )
    assert torch.isfinite(par[0]).all() and par[1].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    # the rays of a rig meet at the point they were cast through
    rig = Rig.seed(size=256)
    X = torch.tensor([4.0, -9.0, 13.0], dtype=F64)
    rays = X - rig.source_ct
    p, dist = closest_point_of_rays(rig.source_ct, rays)
    assert torch.allclose(p, X) and dist.max() < 1e-9
    ob = (torch.randn(2, 3, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: closest_point_of_rays(x, d)[0], (ob,))
    with pytest.raises(ShapeError, match="directions"):
        closest_point_of_rays(o, d[:, :2])
