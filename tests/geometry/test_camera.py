"""Pinhole X-ray cameras: projection, back-projection, unprojection, depth, visibility."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import points_near_isocentre, rigs
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.geometry import (
    Rig,
    ShapeError,
    backproject_pixels,
    intrinsics_from_detector,
    points_depth,
    project_points,
    projection_matrix,
    unproject_points,
    visible_mask,
)

F64 = torch.float64


def test_seed_rig_view0_and_view3_by_hand() -> None:
    """Point p = (10, 20, 30) mm in views 0 and 3 of ``Rig.seed()``, worked out on paper.

    Intrinsics: f = SDD / pitch = 600 / 0.78125 = 768 px, principal point (512, 512).

    View 0 (angle 0°): source s = (0, -300, 0) (anterior), looking at the origin:
      z_cam = (0, 1, 0), y_cam = -up = (0, 0, -1), x_cam = y × z = (1, 0, 0).
      p - s = (10, 320, 30) → camera (x, y, z) = (10, -30, 320).
      u = 768 · 10 / 320 + 512 = 536,  v = 768 · (-30) / 320 + 512 = 440.

    View 3 (θ = 3 · 36° = 108°): s = 300 · (sin θ, -cos θ, 0),
      z_cam = (-sin θ, cos θ, 0), y_cam = (0, 0, -1), x_cam = y × z = (cos θ, sin θ, 0).
      x = (p - s) · x_cam = 10 cos θ + 20 sin θ               (the 300 terms cancel)
      y = -30
      z = (p - s) · z_cam = 300 - 10 sin θ + 20 cos θ
      with sin 108° = 0.951057, cos 108° = -0.309017: x = 15.93096, z = 284.30909,
      u = 768 · 15.93096 / 284.30909 + 512 = 555.034,  v = 768 · (-30) / 284.30909 + 512 = 430.961.
    """
    rig = Rig.seed()
    uv, depth, vis = rig.project(torch.tensor([[10.0, 20.0, 30.0]], dtype=F64))
    assert uv[0, 0].tolist() == pytest.approx([536.0, 440.0], abs=1e-9)
    assert float(depth[0, 0]) == pytest.approx(320.0, abs=1e-9)
    th = math.radians(108.0)
    x, z = 10 * math.cos(th) + 20 * math.sin(th), 300 - 10 * math.sin(th) + 20 * math.cos(th)
    assert (x, z) == pytest.approx((15.93096, 284.30909), abs=1e-5)
    assert uv[3, 0].tolist() == pytest.approx([768 * x / z + 512, 768 * -30 / z + 512], abs=1e-9)
    assert uv[3, 0].tolist() == pytest.approx([555.034, 430.961], abs=1e-3)
    assert float(depth[3, 0]) == pytest.approx(z, abs=1e-9)
    assert bool(vis[0, 0]) and bool(vis[3, 0])


def test_pixel_centre_rule_principal_point() -> None:
    # The isocentre lies on every principal axis of the seed rig: it projects to (W/2, H/2),
    # the corner shared by pixels (511, 511) and (512, 512), i.e. the detector's centre.
    uv, _, _ = Rig.seed().project(torch.zeros(1, 3, dtype=F64))
    assert torch.allclose(uv, torch.full_like(uv, 512.0), atol=1e-9)
    uv, _, _ = Rig.seed(size=5).project(torch.zeros(1, 3, dtype=F64))
    assert torch.allclose(uv, torch.full_like(uv, 2.5), atol=1e-12)  # centre of pixel (2, 2)


def test_identity_pose_projection() -> None:
    K = intrinsics_from_detector(1000.0, 2.0, 100, 200)  # f = 500 px, c = (100, 50)
    uv, z = project_points(
        torch.tensor([[10.0, -20.0, 250.0]], dtype=F64), K[None], torch.eye(4, dtype=F64)[None]
    )
    assert uv[0, 0].tolist() == pytest.approx([500 * 10 / 250 + 100, 500 * -20 / 250 + 50])
    assert float(z[0, 0]) == 250.0


def test_projection_matrix_is_K_Rt() -> None:
    rig = Rig.seed(size=64)
    P = projection_matrix(rig.K, rig.T_cam_from_ct)
    assert P.shape == (10, 3, 4)
    assert torch.allclose(P, rig.K @ rig.T_cam_from_ct[:, :3, :])


@pytest.mark.parametrize("batch", [(), (1,), (3,), (2, 2)])
def test_project_points_batch_shapes(batch: tuple[int, ...]) -> None:
    rig = Rig.seed(size=64)
    K = rig.K.expand(*batch, 10, 3, 3)
    T = rig.T_cam_from_ct.expand(*batch, 10, 4, 4)
    pts = torch.rand(*batch, 7, 3, dtype=F64)
    uv, z = project_points(pts, K, T)
    assert uv.shape == (*batch, 10, 7, 2) and z.shape == (*batch, 10, 7)
    ref, _ = project_points(pts.reshape(-1, 7, 3)[0], rig.K, rig.T_cam_from_ct)
    assert torch.allclose(uv.reshape(-1, 10, 7, 2)[0], ref)


def test_project_points_empty_and_dtype_promotion() -> None:
    rig = Rig.seed(size=64)
    uv, z = project_points(torch.zeros(0, 3), rig.K, rig.T_cam_from_ct)
    assert uv.shape == (10, 0, 2) and z.shape == (10, 0)
    uv32, _ = project_points(torch.ones(2, 3), rig.K.float(), rig.T_cam_from_ct.float())
    assert uv32.dtype == torch.float32


def test_grad_and_inference_paths_agree() -> None:
    rig = Rig.seed(size=64)
    pts = torch.randn(50, 3, dtype=F64) * 40
    uv_fast, z_fast = project_points(pts, rig.K, rig.T_cam_from_ct)
    uv_grad, z_grad = project_points(pts.clone().requires_grad_(), rig.K, rig.T_cam_from_ct)
    assert torch.equal(z_fast, z_grad.detach())
    assert torch.allclose(uv_fast, uv_grad.detach(), rtol=1e-14, atol=1e-12)


def test_point_at_the_source_is_finite_and_invisible() -> None:
    rig = Rig.seed(size=64)
    src = rig.source_ct[:1].clone().requires_grad_()
    for p in (src, src.detach()):
        uv, z, vis = rig.project(p)
        assert torch.isfinite(uv).all()
        assert abs(float(z[0, 0].detach())) < 1e-9 and not bool(vis[0, 0])
    uv, _, _ = rig.project(src)
    uv.sum().backward()
    assert src.grad is not None and torch.isfinite(src.grad).all()


def test_visible_mask_front_and_image_bounds() -> None:
    uv = torch.tensor([[0.0, 0.0], [64.0, 32.0], [64.01, 1.0], [10.0, -0.01], [5.0, 5.0]])
    depth = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0])
    assert visible_mask(uv, depth, 32, 64).tolist() == [True, True, False, False, False]


def test_points_depth_matches_projection_depth() -> None:
    rig = Rig.seed(size=64)
    pts = torch.randn(9, 3, dtype=F64) * 50
    _, z = project_points(pts, rig.K, rig.T_cam_from_ct)
    assert torch.allclose(points_depth(pts, rig.T_cam_from_ct), z)


def test_backproject_principal_ray_hits_isocentre() -> None:
    rig = Rig.seed(size=64)
    o, d = backproject_pixels(torch.full((10, 1, 2), 32.0, dtype=F64), rig.K, rig.T_cam_from_ct)
    assert torch.allclose(o[:, 0], rig.source_ct)
    assert torch.allclose(o[:, 0] + 300.0 * d[:, 0], torch.zeros(10, 3, dtype=F64), atol=1e-9)
    assert torch.allclose(d.norm(dim=-1), torch.ones(10, 1, dtype=F64))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_project_backproject_round_trip(data: st.DataObject) -> None:
    rig = data.draw(rigs())
    pts = data.draw(points_near_isocentre(rig))
    uv, z, _ = rig.project(pts)
    # unproject at the camera depth gives the point back, and re-projects to the same pixel
    back = unproject_points(uv, z, rig.K, rig.T_cam_from_ct)  # (V, N, 3)
    assert torch.allclose(back, pts.expand_as(back), atol=1e-8)
    # any point along the back-projected ray re-projects to the pixel (< 1e-4 px)
    o, d = backproject_pixels(uv, rig.K, rig.T_cam_from_ct)
    s = data.draw(st.floats(50.0, 2000.0))
    along = o + s * d  # (V, N, 3): one point per view
    # batch = views: the points of view v are projected by view v only
    uv2, z2 = project_points(along, rig.K.unsqueeze(1), rig.T_cam_from_ct.unsqueeze(1))
    assert (uv2[:, 0] - uv).abs().max() < 1e-4
    assert (z2 > 0).all()


def test_project_unproject_pixel_round_trip_random_pixels() -> None:
    rig = Rig.circular(5, 400.0, 900.0, 300, 500, 1.1, offset_px=(7.0, -13.0))
    uv = torch.rand(5, 40, 2, dtype=F64) * torch.tensor([500.0, 300.0], dtype=F64)
    depth = 100.0 + 600.0 * torch.rand(5, 40, dtype=F64)
    pts = unproject_points(uv, depth, rig.K, rig.T_cam_from_ct)  # (V, N, 3)
    uv2, z2 = project_points(pts, rig.K.unsqueeze(1), rig.T_cam_from_ct.unsqueeze(1))
    assert (uv2[:, 0] - uv).abs().max() < 1e-4
    assert torch.allclose(z2[:, 0], depth)


def test_gradcheck_projection() -> None:
    rig = Rig.circular(3, 300.0, 600.0, 40, 50, 2.0, offset_px=(3.0, -2.0))
    pts = (torch.randn(4, 3, dtype=F64) * 30).requires_grad_()
    T = rig.T_cam_from_ct.clone().requires_grad_()
    f_c = torch.tensor([300.0, 290.0, 27.0, 18.0], dtype=F64, requires_grad=True)

    def fn(
        p: torch.Tensor, T_: torch.Tensor, fc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        K = torch.zeros(3, 3, dtype=F64)
        K = K.index_put((torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 2])), fc)
        K = K + torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=F64))
        return project_points(p, K.expand(3, 3, 3), T_)

    assert torch.autograd.gradcheck(fn, (pts, T, f_c))


def test_gradcheck_backprojection_and_unprojection() -> None:
    rig = Rig.circular(2, 300.0, 600.0, 40, 50, 2.0)
    uv = (torch.rand(2, 3, 2, dtype=F64) * 40).requires_grad_()
    depth = (200 + 100 * torch.rand(2, 3, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: backproject_pixels(x, rig.K, rig.T_cam_from_ct)[1], (uv,)
    )
    assert torch.autograd.gradcheck(
        lambda x, d: unproject_points(x, d, rig.K, rig.T_cam_from_ct), (uv, depth)
    )


def test_bad_inputs() -> None:
    rig = Rig.seed(size=64)
    with pytest.raises(ShapeError, match=r"points_ct: expected shape \(\*, N, 3\), found \(5, 2\)"):
        project_points(torch.zeros(5, 2, dtype=F64), rig.K, rig.T_cam_from_ct)
    with pytest.raises(
        ShapeError, match=r"T_cam_from_ct: expected shape \(\*, 4, 4\), found \(10, 3, 4\)"
    ):
        project_points(torch.zeros(5, 3, dtype=F64), rig.K, rig.T_cam_from_ct[:, :3])
    K = rig.K.clone()
    K[2, 1, 1] = 0.0
    with pytest.raises(ValueError, match="singular intrinsics"):
        project_points(torch.zeros(5, 3, dtype=F64), K, rig.T_cam_from_ct)
    K = rig.K.clone()
    K[0, 0, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        backproject_pixels(torch.zeros(10, 1, 2, dtype=F64), K, rig.T_cam_from_ct)
    with pytest.raises(ValueError, match="depth: 1 of 10 entries are NaN or Inf"):
        unproject_points(
            torch.zeros(10, 1, 2, dtype=F64),
            torch.full((10, 1), math.inf).index_fill(0, torch.arange(1, 10), 1.0),
            rig.K,
            rig.T_cam_from_ct,
        )
    with pytest.raises(ShapeError, match=r"depth: expected a shape broadcastable to \(10, 4\)"):
        unproject_points(
            torch.zeros(10, 4, 2, dtype=F64), torch.ones(10, 3, dtype=F64), rig.K, rig.T_cam_from_ct
        )
    with pytest.raises(ShapeError, match="uv"):
        backproject_pixels(torch.zeros(10, 4, 3, dtype=F64), rig.K, rig.T_cam_from_ct)


def test_intrinsics_from_detector_values_and_refusals() -> None:
    K = intrinsics_from_detector(600.0, 0.78125, 1024, 768, offset_px=(2.0, -3.0))
    assert K.tolist() == [[768.0, 0.0, 386.0], [0.0, 768.0, 509.0], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="must be positive"):
        intrinsics_from_detector(600.0, 0.0, 10, 10)
