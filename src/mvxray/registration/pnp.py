"""PnP with RANSAC: a camera pose from 2D–3D correspondences and known intrinsics.

Hypotheses come from kornia's batched DLT (:func:`kornia.geometry.solve_pnp_dlt`), all minimal
sets in one call; the RANSAC loop, the inlier refit (DLT with 0/1 weights) and a
Gauss–Newton refinement of the reprojection error on se(3) are written here because kornia has
no robust PnP. We chose this over ``cv2.solvePnPRansac`` to stay in torch (any device, float64,
no NumPy round trips) and to keep the scoring and the refinement in our pixel convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.geometry import solve_pnp_dlt
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from mvxray.geometry import ShapeError, check_shape


@dataclass(frozen=True)
class RansacConfig:
    """RANSAC settings.

    Attributes:
        iterations: hypotheses (all solved in one batch).
        sample_size: points per hypothesis (≥ 6 for the DLT).
        threshold_px: inlier reprojection error, px.
        refine_iters: Gauss–Newton iterations on the inliers (0 = DLT only).
        seed: RNG seed.
    """

    iterations: int = 1000
    sample_size: int = 6
    threshold_px: float = 4.0
    refine_iters: int = 10
    seed: int = 0


@dataclass
class PnPResult:
    """A robust PnP estimate.

    Attributes:
        T_cam_from_ct: ``(4, 4)`` float64 pose (world → camera).
        inliers: ``(N,)`` bool.
        reproj_px: ``(N,)`` reprojection error of every correspondence under the pose, px.
        success: at least ``sample_size`` inliers were found.
    """

    T_cam_from_ct: torch.Tensor
    inliers: torch.Tensor
    reproj_px: torch.Tensor
    success: bool


def reprojection_error(
    T_cam_from_ct: torch.Tensor, K: torch.Tensor, points_ct: torch.Tensor, uv: torch.Tensor
) -> torch.Tensor:
    """Pixel distance between projected points and observations; ``inf`` behind the source.

    Args:
        T_cam_from_ct: ``(*, 4, 4)`` or ``(*, 3, 4)`` poses.
        K: ``(3, 3)`` intrinsics.
        points_ct: ``(N, 3)`` CT mm.
        uv: ``(N, 2)`` px.

    Returns:
        ``(*, N)`` px.
    """
    x = points_ct @ T_cam_from_ct[..., :3, :3].transpose(-1, -2) + T_cam_from_ct[..., None, :3, 3]
    z = x[..., 2]
    p = x @ K.transpose(-1, -2)
    proj = p[..., :2] / z.unsqueeze(-1).clamp_min(1e-9)
    err = (proj - uv).norm(dim=-1)
    return torch.where(z > 1e-6, err, torch.full_like(err, float("inf")))


def _to4x4(Rt: torch.Tensor) -> torch.Tensor:
    T = torch.zeros((*Rt.shape[:-2], 4, 4), dtype=Rt.dtype, device=Rt.device)
    T[..., :3, :] = Rt
    T[..., 3, 3] = 1.0
    return T


def _orthonormalize(T: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(T[..., :3, :3])
    R = U @ Vh
    sign = torch.linalg.det(R).sign()
    U = U.clone()
    U[..., :, 2] = U[..., :, 2] * sign.unsqueeze(-1)
    out = T.clone()
    out[..., :3, :3] = U @ Vh
    return out


def refine_pose(
    T_cam_from_ct: torch.Tensor,
    K: torch.Tensor,
    points_ct: torch.Tensor,
    uv: torch.Tensor,
    iters: int = 10,
) -> torch.Tensor:
    """Gauss–Newton (damped) on the reprojection error; pose update ``exp(δ) · T``.

    Args:
        T_cam_from_ct: ``(4, 4)`` float64 initial pose.
        K: ``(3, 3)`` intrinsics.
        points_ct: ``(N, 3)`` CT mm (N ≥ 3).
        uv: ``(N, 2)`` px.
        iters: iterations.

    Returns:
        ``(4, 4)`` refined pose (the input if no step reduced the error).
    """
    T = T_cam_from_ct.to(torch.float64)
    P, Q, Kd = points_ct.to(T), uv.to(T), K.to(T)

    def residual(T_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = P @ T_[:3, :3].T + T_[:3, 3]  # (N, 3) camera mm
        p = x @ Kd.T
        return p[:, :2] / p[:, 2:].clamp_min(1e-9) - Q, x

    lam = 1e-3
    r, x = residual(T)
    for _ in range(iters):
        # Analytic Jacobian of the pixel w.r.t. a left perturbation exp(δ) of the pose:
        # dx = ω × x + v, du/dx = (K_row - u K_row3) / z.
        z = x[:, 2:].clamp_min(1e-9)
        uvp = (x @ Kd.T)[:, :2] / z
        du_dx = (Kd[None, :2, :] - uvp[:, :, None] * Kd[None, 2:3, :]) / z[:, :, None]  # (N,2,3)
        skew = torch.zeros(x.shape[0], 3, 3, dtype=T.dtype)
        skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -x[:, 2], x[:, 1], -x[:, 0]
        skew = skew - skew.transpose(1, 2)  # [x]_x
        dx = torch.cat([-skew, torch.eye(3, dtype=T.dtype).expand(x.shape[0], 3, 3)], -1)
        J = (du_dx @ dx).reshape(-1, 6)
        rf = r.reshape(-1)
        A = J.T @ J
        step = -torch.linalg.solve(A + lam * torch.diag(A.diagonal() + 1e-9), J.T @ rf)
        dT = torch.eye(4, dtype=T.dtype)
        dT[:3, :3] = axis_angle_to_rotation_matrix(step[None, :3])[0]
        dT[:3, 3] = step[3:]
        T_new = dT @ T
        r_new, x_new = residual(T_new)
        if float(r_new.square().sum()) < float(rf.square().sum()):
            T, r, x, lam = T_new, r_new, x_new, lam * 0.3
        else:
            lam *= 10.0
    return T


def solve_pnp_ransac(
    points_ct: torch.Tensor,
    uv: torch.Tensor,
    K: torch.Tensor,
    cfg: RansacConfig | None = None,
    weights: torch.Tensor | None = None,
) -> PnPResult:
    """Robust pose from ``N`` correspondences: batched DLT hypotheses, inlier count, refit, GN.

    Args:
        points_ct: ``(N, 3)`` 3D points, CT mm.
        uv: ``(N, 2)`` their observed pixels (u right, v down).
        K: ``(3, 3)`` intrinsics, px.
        cfg: RANSAC settings.
        weights: ``(N,)`` optional sampling weights (e.g. match confidences); hypotheses draw
            points with probability ∝ weight.

    Returns:
        :class:`PnPResult`.

    Raises:
        ShapeError: mismatched shapes.
        ValueError: fewer than ``sample_size`` correspondences.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.rand(20, 3, generator=g, dtype=torch.float64) * 100 - 50
        >>> K = torch.tensor([[500.0, 0, 64], [0, 500.0, 64], [0, 0, 1]], dtype=torch.float64)
        >>> T = torch.eye(4, dtype=torch.float64); T[2, 3] = 400.0
        >>> uv = (X + T[:3, 3]) @ K.T; uv = uv[:, :2] / uv[:, 2:]
        >>> r = solve_pnp_ransac(X, uv, K)
        >>> bool(torch.allclose(r.T_cam_from_ct, T, atol=1e-6)), int(r.inliers.sum())
        (True, 20)
    """
    cfg = cfg or RansacConfig()
    check_shape(points_ct, "points_ct", (None, 3))
    check_shape(uv, "uv", (None, 2))
    check_shape(K, "K", (3, 3))
    N = points_ct.shape[0]
    if uv.shape[0] != N or points_ct.dim() != 2 or uv.dim() != 2:
        raise ShapeError(f"uv: expected shape ({N}, 2) to match points_ct, found {tuple(uv.shape)}")
    s = max(6, cfg.sample_size)
    if s > N:
        raise ValueError(f"solve_pnp_ransac: need at least {s} correspondences, found {N}")
    X, x, Kd = points_ct.double(), uv.double(), K.double()
    g = torch.Generator().manual_seed(cfg.seed)
    w = torch.ones(N, dtype=torch.float64) if weights is None else weights.double().clamp_min(0)
    if float(w.sum()) <= 0:
        w = torch.ones(N, dtype=torch.float64)
    idx = torch.multinomial(w.expand(cfg.iterations, N), s, replacement=False, generator=g)
    Xs, xs = X[idx], x[idx]  # (B, s, 3), (B, s, 2)
    # Drop near-planar / collinear minimal sets: the DLT refuses them (AssertionError).
    c = Xs - Xs.mean(1, keepdim=True)
    sv = torch.linalg.svdvals(c)
    ok = sv[:, 2] > 1e-2 * sv[:, 0].clamp_min(1e-12)
    Xs, xs = Xs[ok], xs[ok]
    if Xs.shape[0] == 0:
        raise ValueError("solve_pnp_ransac: all sampled point sets are (near) planar")
    try:
        Rt = solve_pnp_dlt(Xs, xs, Kd.expand(Xs.shape[0], 3, 3), svd_eps=1e-9)
    except AssertionError as exc:  # a degenerate set slipped through the filter
        raise ValueError(f"solve_pnp_ransac: degenerate correspondences ({exc})") from exc
    hyp = _orthonormalize(_to4x4(Rt))
    err = reprojection_error(hyp, Kd, X, x)  # (B, N)
    inl = err < cfg.threshold_px
    # Score by inlier count, ties broken by the truncated error (MSAC-like).
    score = inl.sum(-1).double() - (err.clamp(max=cfg.threshold_px) / cfg.threshold_px).mean(-1)
    best = int(score.argmax())
    T, inliers = hyp[best], inl[best]
    for _ in range(2):  # refit on the inliers, re-collect
        if int(inliers.sum()) < s:
            break
        try:
            Rt = solve_pnp_dlt(X[None], x[None], Kd[None], weights=inliers.double()[None])
            T_fit = _orthonormalize(_to4x4(Rt))[0]
        except AssertionError:
            T_fit = T
        if cfg.refine_iters > 0:
            T_fit = refine_pose(T_fit, Kd, X[inliers], x[inliers], cfg.refine_iters)
        new = reprojection_error(T_fit, Kd, X, x) < cfg.threshold_px
        if int(new.sum()) < int(inliers.sum()):
            break
        T, inliers = T_fit, new
    reproj = reprojection_error(T, Kd, X, x)
    return PnPResult(T, inliers, reproj, bool(int(inliers.sum()) >= s))
