"""register_xray and calibrate_rig plumbing with an oracle landmark finder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mvxray.geometry import Rig, ShapeError
from mvxray.lifting.rayemb.model import Located
from mvxray.lifting.rayemb.poses import perturb_poses, pose_error
from mvxray.registration.calibrate import CalibrateConfig, calibrate_rig
from mvxray.registration.register import RegisterConfig, register_xray


class OracleModel:
    """Finds every 3D point exactly where the true pose projects it (or at random if lying)."""

    def __init__(self, T_true: torch.Tensor, K: torch.Tensor, lie: bool = False) -> None:
        self.T, self.K, self.lie = T_true, K, lie

    def locate(self, query, templates, template_rig, points_ct, **_):
        x = points_ct @ self.T[:3, :3].T + self.T[:3, 3]
        uv = (x @ self.K.T)[:, :2] / x[:, 2:]
        if self.lie:
            uv = (
                torch.rand(uv.shape, generator=torch.Generator().manual_seed(0), dtype=uv.dtype)
                * 32
            )
        n = points_ct.shape[0]
        return Located(uv, torch.ones(n), torch.ones(n))


def zero_renderer(volume, rig):
    return torch.zeros(rig.num_views, 1, rig.height, rig.width)


def _setup(tiny_volume):
    rig = Rig.circular(3, 400.0, 800.0, 32, 32, 10.0)
    T_true = perturb_poses(rig.T_cam_from_ct, 5.0, 10.0, torch.Generator().manual_seed(0))
    return rig, T_true


def test_register_recovers_the_pose_with_exact_landmarks(tiny_volume):
    rig, T_true = _setup(tiny_volume)
    model = OracleModel(T_true[0], rig.K[0])
    cfg = RegisterConfig(num_landmarks=80, hu_min=300.0, passes=2)
    r = register_xray(
        model,
        tiny_volume,
        torch.zeros(32, 32),
        rig.K[0],
        rig.T_cam_from_ct[0],
        10.0,
        cfg,
        zero_renderer,
    )
    rot, shift = pose_error(r.T_cam_from_ct, T_true[0])
    assert r.success
    assert float(rot) < 1e-4 and float(shift) < 1e-3
    assert r.points_ct.shape[0] == r.uv.shape[0] == r.inliers.shape[0] > 6


def test_register_rejects_bad_image_shape(tiny_volume):
    rig, T_true = _setup(tiny_volume)
    with pytest.raises(ShapeError, match="xray"):
        register_xray(
            OracleModel(T_true[0], rig.K[0]),
            tiny_volume,
            torch.zeros(1, 1, 32, 32),
            rig.K[0],
            rig.T_cam_from_ct[0],
            10.0,
            renderer=zero_renderer,
        )


def test_calibrate_accepts_good_estimates_and_rejects_garbage(tiny_volume, monkeypatch):
    rig, T_true = _setup(tiny_volume)
    import mvxray.registration.calibrate as cal

    calls = {"n": 0}
    real = cal.register_xray

    def fake_register(model, volume, image, K, T0, pm, cfg, renderer):
        v = calls["n"]
        calls["n"] += 1
        return real(
            OracleModel(T_true[v], rig.K[v], lie=(v == 2)), volume, image, K, T0, pm, cfg, renderer
        )

    monkeypatch.setattr(cal, "register_xray", fake_register)
    cfg = CalibrateConfig(
        register=dataclasses.replace(RegisterConfig(), num_landmarks=80, hu_min=300.0),
        min_inliers=10,
    )
    out = calibrate_rig(None, tiny_volume, torch.zeros(3, 1, 32, 32), rig, cfg, zero_renderer)
    assert out.accepted.tolist() == [True, True, False]
    assert torch.allclose(out.rig.T_cam_from_ct[:2], T_true[:2], atol=1e-6)
    assert torch.equal(out.rig.T_cam_from_ct[2], rig.T_cam_from_ct[2])
    with pytest.raises(ShapeError, match="images"):
        calibrate_rig(None, tiny_volume, torch.zeros(2, 1, 32, 32), rig, cfg, zero_renderer)
