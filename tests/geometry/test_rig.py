"""The multi-view rig: presets, C-arm angles, JSON and kornia interop, refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from geometry_strategies import rigs
from hypothesis import given, settings

from mvxray.geometry import Rig, ShapeError, look_at, project_points
from mvxray.geometry.rig import angle_between_views_deg

F64 = torch.float64


def test_seed_preset_values() -> None:
    rig = Rig.seed()
    assert (rig.num_views, rig.height, rig.width) == (10, 1024, 1024)
    assert torch.allclose(rig.pixel_mm, torch.full((10,), 0.78125, dtype=F64))
    assert torch.allclose(rig.sdd_mm, torch.full((10,), 600.0, dtype=F64))
    assert torch.allclose(rig.source_ct.norm(dim=-1), torch.full((10,), 300.0, dtype=F64))
    assert rig.K[0].tolist() == [[768.0, 0.0, 512.0], [0.0, 768.0, 512.0], [0.0, 0.0, 1.0]]
    for i in range(1, 10):
        assert angle_between_views_deg(rig, 0, i) == pytest.approx(min(36 * i, 360 - 36 * i))
    # sources lie in the z = 0 plane, view 0 anterior (-Y), view 1 turned by +36° about +Z
    assert torch.allclose(rig.source_ct[:, 2], torch.zeros(10, dtype=F64), atol=1e-12)
    a = math.radians(36.0)
    assert rig.source_ct[1].tolist() == pytest.approx([300 * math.sin(a), -300 * math.cos(a), 0.0])
    small = Rig.seed(size=256)
    assert float(small.pixel_mm[0]) == 3.125 and small.height == 256


def test_circular_axis_and_start_angle() -> None:
    rig = Rig.circular(4, 500.0, 1000.0, 20, 30, 1.0, start_deg=90.0, arc_deg=180.0)
    # view i at 90° + 45°·i: source = 500 (sin, -cos, 0)
    for i, deg in enumerate([90.0, 135.0, 180.0, 225.0]):
        a = math.radians(deg)
        assert rig.source_ct[i].tolist() == pytest.approx(
            [500 * math.sin(a), -500 * math.cos(a), 0.0], abs=1e-9
        )
    about_y = Rig.circular(2, 300.0, 600.0, 8, 8, 1.0, axis=(0.0, 1.0, 0.0))
    # with the axis along Y, the angle-0 source falls back to -Z
    assert about_y.source_ct[0].tolist() == pytest.approx([0.0, 0.0, -300.0], abs=1e-9)


def test_circular_axis_points_up_in_the_image() -> None:
    rig = Rig.circular(6, 300.0, 600.0, 64, 64, 2.0)
    uv, _, _ = rig.project(torch.tensor([[0.0, 0.0, 20.0]], dtype=F64))
    assert (uv[:, 0, 1] < 32.0).all()  # +Z above the centre (v smaller)
    assert torch.allclose(uv[:, 0, 0], torch.full((6,), 32.0, dtype=F64))


def test_carm_angles() -> None:
    rig = Rig.carm(
        [0.0, 90.0, -90.0, 0.0], [0.0, 0.0, 0.0, 90.0 - 1e-9], 500.0, 1000.0, 32, 32, 1.0
    )
    src = rig.source_ct
    # (0, 0): source posterior (+Y); LAO 90: detector on +X so the source is on -X;
    # RAO 90 (LAO -90): source on +X; cranial 90: detector towards the head, source towards the feet.
    assert src[0].tolist() == pytest.approx([0.0, 500.0, 0.0], abs=1e-9)
    assert src[1].tolist() == pytest.approx([-500.0, 0.0, 0.0], abs=1e-9)
    assert src[2].tolist() == pytest.approx([500.0, 0.0, 0.0], abs=1e-9)
    assert src[3].tolist() == pytest.approx([0.0, 0.0, -500.0], abs=1e-6)
    # the principal axis (camera z, source → detector) of LAO 90 points to +X
    assert rig.T_cam_from_ct[1, 2, :3].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    # head up in the image at (0, 0)
    uv, _, _ = rig.project(torch.tensor([[0.0, 0.0, 10.0]], dtype=F64))
    assert float(uv[0, 0, 1]) < 16.0
    with pytest.raises(ValueError, match="same non-zero length"):
        Rig.carm([0.0], [0.0, 1.0], 500.0, 1000.0, 32, 32, 1.0)


def test_json_round_trip_is_exact() -> None:
    rig = Rig.circular(3, 333.3, 777.7, 40, 60, 0.3, start_deg=12.3, offset_px=(1.5, -2.25))
    text = rig.to_json()
    back = Rig.from_json(text)
    assert torch.equal(back.K, rig.K) and torch.equal(back.T_cam_from_ct, rig.T_cam_from_ct)
    assert torch.equal(back.pixel_mm, rig.pixel_mm)
    assert (back.height, back.width) == (40, 60)
    views = json.loads(text)["views"]
    assert set(views[0]) == {"K", "T_cam_from_ct", "height", "width", "pixel_mm"}


def test_from_views_refusals() -> None:
    views = Rig.seed(size=16).to_views()
    with pytest.raises(KeyError, match=r"view 0: missing key\(s\) \['K'\]"):
        Rig.from_views([{k: v for k, v in views[0].items() if k != "K"}])
    with pytest.raises(ValueError, match="share one image size"):
        Rig.from_views([views[0], {**views[1], "height": 17}])
    with pytest.raises(ValueError, match="no views"):
        Rig.from_views([])


def test_kornia_round_trip_and_same_projection() -> None:
    rig = Rig.circular(5, 400.0, 800.0, 48, 64, 1.5, offset_px=(3.0, -4.0))
    cam = rig.to_kornia()
    back = Rig.from_kornia(cam, rig.pixel_mm)
    assert torch.equal(back.K, rig.K) and torch.equal(back.T_cam_from_ct, rig.T_cam_from_ct)
    assert (back.height, back.width) == (48, 64)
    pts = torch.randn(20, 3, dtype=F64) * 50
    ours, _ = project_points(pts, rig.K, rig.T_cam_from_ct)
    theirs = cam.project(pts.expand(5, 20, 3))
    assert torch.allclose(ours, theirs, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(rig=rigs())
def test_kornia_projection_matches_on_random_rigs(rig: Rig) -> None:
    pts = torch.randn(6, 3, dtype=F64) * 30
    ours, _ = project_points(pts, rig.K, rig.T_cam_from_ct)
    theirs = rig.to_kornia().project(pts.expand(rig.num_views, 6, 3))
    assert torch.allclose(ours, theirs, atol=1e-7)
    assert torch.equal(Rig.from_json(rig.to_json()).K, rig.K)


def test_subset_and_to() -> None:
    rig = Rig.seed(size=32)
    sub = rig.subset([3, 0])
    assert sub.num_views == 2
    assert torch.equal(sub.T_cam_from_ct[0], rig.T_cam_from_ct[3])
    assert torch.equal(sub.K[1], rig.K[0]) and torch.equal(sub.pixel_mm, rig.pixel_mm[[3, 0]])
    f32 = rig.to(dtype=torch.float32)
    assert f32.K.dtype == torch.float32 and f32.num_views == 10


def test_rig_construction_refusals() -> None:
    rig = Rig.seed(size=16)
    K, T, pm = rig.K, rig.T_cam_from_ct, rig.pixel_mm
    bad_T = T.clone()
    bad_T[2, :3, :3] *= 1.1  # scaled rotation
    with pytest.raises(ValueError, match="T_cam_from_ct: not a rigid transform"):
        Rig(K, bad_T, 16, 16, pm)
    mirror = T.clone()
    mirror[0, 0, :3] *= -1  # a reflection: det -1
    with pytest.raises(ValueError, match="not a rigid transform"):
        Rig(K, mirror, 16, 16, pm)
    bad_K = K.clone()
    bad_K[1, 0, 0] = 0.0
    with pytest.raises(ValueError, match="singular intrinsics"):
        Rig(bad_K, T, 16, 16, pm)
    nan_K = K.clone()
    nan_K[0, 0, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        Rig(nan_K, T, 16, 16, pm)
    with pytest.raises(ShapeError, match="same V"):
        Rig(K, T[:9], 16, 16, pm)
    with pytest.raises(ShapeError, match=r"pixel_mm: expected shape \(10,\), found \(9,\)"):
        Rig(K, T, 16, 16, pm[:9])
    with pytest.raises(ShapeError, match=r"K: expected shape \(\*, N, 3, 3\)"):
        Rig(K[:, :2], T, 16, 16, pm)
    with pytest.raises(ValueError, match="height and width must be positive"):
        Rig(K, T, 0, 16, pm)
    with pytest.raises(ValueError, match="num_views must be >= 1"):
        Rig.circular(0, 300.0, 600.0, 8, 8, 1.0)


def test_look_at_refusals() -> None:
    z = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="coincides"):
        look_at(z, z, torch.tensor([0.0, 0, 1], dtype=F64))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0.0, 0, -5], dtype=F64), z, torch.tensor([0.0, 0, 1], dtype=F64))


def test_views_at_180_degrees_share_the_principal_line() -> None:
    rig = Rig.circular(2, 300.0, 600.0, 16, 16, 1.0)  # 0° and 180°
    assert angle_between_views_deg(rig, 0, 1) == pytest.approx(180.0)
    assert torch.allclose(rig.source_ct[0], -rig.source_ct[1])
