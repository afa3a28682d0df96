"""PnP + RANSAC recovers known poses."""

from __future__ import annotations

import pytest
import torch

from mvxray.geometry import Rig, ShapeError
from mvxray.lifting.rayemb.poses import perturb_poses, pose_error
from mvxray.registration.pnp import (
    RansacConfig,
    refine_pose,
    reprojection_error,
    solve_pnp_ransac,
)


def _scene(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rig = Rig.seed(128)
    T = perturb_poses(rig.T_cam_from_ct[3:4], 10.0, 20.0, g)[0]
    X = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * 100.0
    K = rig.K[3]
    x = X @ T[:3, :3].T + T[:3, 3]
    uv = (x @ K.T)[:, :2] / x[:, 2:]
    return X, uv, K, T, g


def test_exact_correspondences_recover_the_pose():
    X, uv, K, T, _ = _scene()
    r = solve_pnp_ransac(X, uv, K)
    assert r.success and bool(r.inliers.all())
    assert torch.allclose(r.T_cam_from_ct, T, atol=1e-6)
    assert float(r.reproj_px.max()) < 1e-6


def test_outliers_and_noise_are_rejected():
    X, uv, K, T, g = _scene(100, seed=1)
    noisy = uv + 0.3 * torch.randn(uv.shape, generator=g, dtype=torch.float64)
    bad = torch.rand(100, generator=g) < 0.4  # 40 % gross outliers
    noisy[bad] = torch.rand(int(bad.sum()), 2, generator=g, dtype=torch.float64) * 128
    r = solve_pnp_ransac(X, noisy, K, RansacConfig(iterations=500, threshold_px=2.0))
    rot, trans = pose_error(r.T_cam_from_ct, T)
    assert float(rot) < 0.5 and float(trans) < 3.0
    # every inlier is a true correspondence, and most true ones are kept
    assert not bool((r.inliers & bad).any())
    assert int((r.inliers & ~bad).sum()) >= int((~bad).sum()) - 3


def test_refine_pose_reduces_reprojection_error():
    X, uv, K, T, g = _scene(seed=2)
    T0 = perturb_poses(T[None], 2.0, 5.0, g)[0]
    e0 = reprojection_error(T0, K, X, uv).mean()
    T1 = refine_pose(T0, K, X, uv, iters=10)
    assert float(reprojection_error(T1, K, X, uv).mean()) < 1e-4 < float(e0)


def test_points_behind_the_source_have_infinite_error():
    K = torch.eye(3, dtype=torch.float64)
    e = reprojection_error(
        torch.eye(4, dtype=torch.float64),
        K,
        torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64),
        torch.zeros(1, 2, dtype=torch.float64),
    )
    assert torch.isinf(e).all()


def test_errors():
    X, uv, K, _, _ = _scene(10)
    with pytest.raises(ValueError, match="at least 6"):
        solve_pnp_ransac(X[:5], uv[:5], K)
    with pytest.raises(ShapeError, match="uv"):
        solve_pnp_ransac(X, uv[:8], K)
    flat = X.clone()
    flat[:, 2] = 0.0
    with pytest.raises(ValueError, match="planar"):
        solve_pnp_ransac(flat, uv, K)
