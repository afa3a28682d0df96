"""Multi-view triangulation: weighted linear DLT, a robust variant over view pairs, ray midpoints.

kornia's ``triangulate_points`` handles two views without weights; detections here come from
up to ~20 views with confidences and missing views, so the weighted multi-view DLT is written
here (H&Z 12.2, inhomogeneous form, in normalized camera coordinates so that every view's
rows are O(1) whatever the pixel pitch).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch

from mvxray.geometry._checks import ShapeError, check_intrinsics, check_shape, promote
from mvxray.geometry.camera import project_points


class Triangulation(NamedTuple):
    """Result of :func:`triangulate` / :func:`triangulate_robust`.

    Attributes:
        points: ``(*, N, 3)`` CT mm (finite but meaningless where ``degenerate``).
        residuals_px: ``(*, V, N)`` reprojection error in every view, px (``inf`` where the
            point is behind that view's source); computed for all views, used or not.
        degenerate: ``(*, N)`` bool — fewer than 2 views used, or their rays are near-parallel
            (largest angle between the lines of sight < ``min_angle_deg``).
        num_views: ``(*, N)`` number of views used (positive weight).
        max_angle_deg: ``(*, N)`` largest angle between two used lines of sight, degrees in
            ``[0, 90]`` (opposite views, 180° apart, see the same line: 0°).
        condition: ``(*, N)`` ``sqrt(λ_min / λ_max)`` of the 3×3 normal matrix, in ``[0, 1]``;
            near 0 means ill-conditioned.
        inliers: ``(*, V, N)`` bool — the views used for the final fit.
    """

    points: torch.Tensor
    residuals_px: torch.Tensor
    degenerate: torch.Tensor
    num_views: torch.Tensor
    max_angle_deg: torch.Tensor
    condition: torch.Tensor
    inliers: torch.Tensor


def _check_inputs(
    uv: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    weights: torch.Tensor | None,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """Validate shapes; return the effective per-view weights ``(*, V, N)`` (0 = unused)."""
    check_shape(uv, "uv", (None, None, 2))
    V = uv.shape[-3]
    check_shape(K, "K", (V, 3, 3))
    check_intrinsics(K)
    check_shape(T_cam_from_ct, "T_cam_from_ct", (V, 4, 4))
    target = uv.shape[:-1]
    w = torch.ones(target, dtype=uv.dtype, device=uv.device)
    for name, x in (("weights", weights), ("valid", valid)):
        if x is None:
            continue
        try:
            if torch.broadcast_shapes(x.shape, target) != target:
                raise RuntimeError
        except RuntimeError:
            raise ShapeError(
                f"{name}: expected shape {tuple(target)} (uv without its last dim, (*, V, N)), "
                f"found {tuple(x.shape)}"
            ) from None
        if name == "weights":
            if bool((~torch.isfinite(x) | (x < 0)).any()):
                raise ValueError("weights: expected finite, non-negative values")
            w = w * x
        else:
            w = w * x.to(uv.dtype)
    used = w > 0
    if bool((~torch.isfinite(uv) & used.unsqueeze(-1)).any()):
        raise ValueError("uv: NaN or Inf in a used view (mark missing views with valid=False)")
    return w


def _rays_normalized(uv: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``K⁻¹ (u, v, 1)``: ``(*, V, N, 2)`` → ``(*, V, N, 3)`` camera-frame rays with z = 1."""
    return torch.cat([uv, torch.ones_like(uv[..., :1])], -1) @ torch.linalg.inv(K).transpose(-1, -2)


def _max_line_angle_deg(dirs: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Largest angle between two used lines of sight: ``(*, V, N, 3)``, ``(*, V, N)`` → ``(*, N)``."""
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    cos = torch.einsum("...vnc,...wnc->...nvw", d, d).abs()
    pair = used.transpose(-1, -2).unsqueeze(-1) & used.transpose(-1, -2).unsqueeze(-2)
    min_cos = torch.where(pair, cos, torch.ones_like(cos)).flatten(-2).amin(-1)
    return torch.rad2deg(torch.arccos(min_cos.clamp(0.0, 1.0)))


def triangulate(
    uv: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    weights: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    min_angle_deg: float = 1.0,
) -> Triangulation:
    """Weighted linear (DLT) triangulation of N points from V views, batched.

    Each used view contributes the two DLT rows ``x' M₃ − M₁`` and ``y' M₃ − M₂`` of its
    normalized pixel ``(x', y', 1) = K⁻¹ (u, v, 1)`` and ``M = [R | t]``, scaled by its weight;
    the point minimizes the weighted algebraic error (a 3×3 linear solve, differentiable).

    Args:
        uv: ``(*, V, N, 2)`` the pixel of point n in view v.
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        weights: ``(*, V, N)`` non-negative confidences (multiply the squared residuals);
            default 1.
        valid: ``(*, V, N)`` bool, False for views where the point is missing (their uv may be
            NaN).
        min_angle_deg: lines of sight closer to parallel than this make the point degenerate.

    Returns:
        :class:`Triangulation`. Degenerate points are solved with a small ridge towards the CT
        origin (a single view gives roughly the point of its ray nearest the origin).

    Raises:
        ShapeError: ``uv`` not ``(*, V, N, 2)``, ``K``/``T_cam_from_ct`` with another V, or
            ``weights``/``valid`` not ``(*, V, N)``.
        ValueError: non-finite uv in a used view, negative weights, bad intrinsics.

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=64)
        >>> X = torch.tensor([[12.0, -7.0, 30.0]], dtype=torch.float64)
        >>> uv, _, _ = rig.project(X)
        >>> res = triangulate(uv, rig.K, rig.T_cam_from_ct)
        >>> bool(torch.allclose(res.points, X)), res.degenerate.tolist(), res.num_views.tolist()
        (True, [False], [10])
    """
    w = _check_inputs(uv, K, T_cam_from_ct, weights, valid)
    uv, K, T_cam_from_ct, w = promote(uv, K, T_cam_from_ct, w)
    used = w > 0
    uv = torch.where(used.unsqueeze(-1), uv, torch.zeros_like(uv))
    x = _rays_normalized(uv, K)  # (*, V, N, 3)
    M = T_cam_from_ct[..., :3, :].to(uv.dtype)  # (*, V, 3, 4)
    rows = torch.stack(
        [
            x[..., 0:1] * M[..., None, 2, :] - M[..., None, 0, :],
            x[..., 1:2] * M[..., None, 2, :] - M[..., None, 1, :],
        ],
        dim=-2,
    )  # (*, V, N, 2, 4)
    A, a = rows[..., :3], rows[..., 3]
    G = torch.einsum("...vn,...vnki,...vnkj->...nij", w, A, A)  # (*, N, 3, 3)
    b = -torch.einsum("...vn,...vnki,...vnk->...ni", w, A, a)  # (*, N, 3)

    num_views = used.sum(-2)
    dirs = x @ M[..., :3]  # (Rᵀ x)ᵀ per view: the rays in the CT frame
    max_angle = _max_line_angle_deg(dirs.detach(), used)
    degenerate = (num_views < 2) | (max_angle < min_angle_deg)
    with torch.no_grad():
        ev = torch.linalg.eigvalsh(G).clamp(min=0)
        condition = (ev[..., 0] / ev[..., 2].clamp(min=torch.finfo(ev.dtype).tiny)).sqrt()
    eye = torch.eye(3, dtype=G.dtype, device=G.device)
    trace = G.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    ridge = (1e-6 * trace + torch.finfo(G.dtype).eps) * eye
    G = torch.where(degenerate[..., None, None], G + ridge, G)
    points = torch.linalg.solve(G, b.unsqueeze(-1)).squeeze(-1)
    return Triangulation(
        points,
        _residuals(points, uv, K, T_cam_from_ct),
        degenerate,
        num_views,
        max_angle,
        condition,
        used,
    )


def _residuals(
    points: torch.Tensor, uv: torch.Tensor, K: torch.Tensor, T_cam_from_ct: torch.Tensor
) -> torch.Tensor:
    """Reprojection error ``(*, V, N)`` px of ``(*, N, 3)`` points; ``inf`` behind a source."""
    proj, z = project_points(points, K.to(points.dtype), T_cam_from_ct.to(points.dtype))
    err = (proj - uv).norm(dim=-1)
    return torch.where(z > 0, err, torch.full_like(err, math.inf))


def triangulate_robust(
    uv: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    weights: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    threshold_px: float = 4.0,
    min_angle_deg: float = 1.0,
) -> Triangulation:
    """Triangulation robust to wrong views: best view pair by inlier count, then a refit.

    Deterministic RANSAC over all ``V (V − 1) / 2`` view pairs at once (V is small, so no
    sampling): each non-degenerate pair's two-view DLT point is scored by the number of used
    views whose reprojection error is below ``threshold_px`` (ties: lower summed inlier error),
    and the weighted DLT is refit on the best pair's inliers.

    Args:
        uv: ``(*, V, N, 2)``.
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        weights: ``(*, V, N)`` confidences for the refit.
        valid: ``(*, V, N)`` bool.
        threshold_px: inlier reprojection threshold, px.
        min_angle_deg: see :func:`triangulate`.

    Returns:
        :class:`Triangulation` of the refit; ``inliers`` are the views it used. Points without a
        non-degenerate pair fall back to :func:`triangulate` on all used views (degenerate).

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=256)
        >>> X = torch.tensor([[5.0, 5.0, -20.0]], dtype=torch.float64)
        >>> uv, _, _ = rig.project(X)
        >>> uv[2, 0] += 40.0  # one wrong detection
        >>> res = triangulate_robust(uv, rig.K, rig.T_cam_from_ct)
        >>> bool(torch.allclose(res.points, X)), res.inliers[:, 0].sum().item()
        (True, 9)
    """
    w = _check_inputs(uv, K, T_cam_from_ct, weights, valid)
    uv, K, T_cam_from_ct, w = promote(uv, K, T_cam_from_ct, w)
    used = w > 0
    V = uv.shape[-3]
    if V < 2:
        return triangulate(uv, K, T_cam_from_ct, w, None, min_angle_deg)
    uv0 = torch.where(used.unsqueeze(-1), uv, torch.zeros_like(uv))
    pairs = torch.tensor(list(itertools.combinations(range(V), 2)), device=uv.device)  # (P, 2)
    P = pairs.shape[0]
    flat = pairs.reshape(-1)

    def take(t: torch.Tensor, dims: int) -> torch.Tensor:
        # Gather views along dim -(dims + 1) and split them into (P, 2).
        return t.index_select(t.dim() - dims - 1, flat).unflatten(t.dim() - dims - 1, (P, 2))

    with torch.no_grad():
        hyp = triangulate(
            take(uv0, 2),
            take(K, 2),
            take(T_cam_from_ct, 2),
            take(w, 1),
            None,
            min_angle_deg,
        )  # points (*, P, N, 3)
        res = _residuals(
            hyp.points, uv0.unsqueeze(-4), K.unsqueeze(-4), T_cam_from_ct.unsqueeze(-4)
        )
        inl = used.unsqueeze(-3) & (res < threshold_px)  # (*, P, V, N)
        err = torch.where(inl, res, torch.zeros_like(res)).sum(-2) / threshold_px
        score = inl.sum(-2).to(uv.dtype) - err / (V + 1)  # count first, then total error
        score = torch.where(hyp.degenerate, torch.full_like(score, -1.0), score)
        best = score.argmax(-2)  # (*, N)
        best_inl = torch.gather(
            inl, -3, best[..., None, None, :].expand(*best.shape[:-1], 1, V, best.shape[-1])
        ).squeeze(-3)
        has_pair = ~torch.gather(hyp.degenerate, -2, best.unsqueeze(-2)).squeeze(-2)
        use = torch.where(has_pair.unsqueeze(-2), best_inl, used)
    return triangulate(uv, K, T_cam_from_ct, w * use, None, min_angle_deg)


def closest_point_of_rays(
    origins: torch.Tensor, directions: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The point nearest to R rays in the weighted least-squares sense (the midpoint for two).

    Minimizes ``Σ_r w_r ‖(I − d_r d_rᵀ)(X − o_r)‖²``: for two skew rays it is the midpoint of
    their common perpendicular. Parallel rays have no unique point: a small ridge picks the one
    nearest the mean origin.

    Args:
        origins: ``(*, R, 3)`` ray origins, mm.
        directions: ``(*, R, 3)`` ray directions (any non-zero length).
        weights: ``(*, R)`` non-negative; default 1.

    Returns:
        point: ``(*, 3)`` mm.
        distances: ``(*, R)`` distance from the point to each ray's line, mm.

    Example:
        >>> o = torch.tensor([[0.0, 0, 0], [0, 0, 2]]); d = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
        >>> p, dist = closest_point_of_rays(o, d)
        >>> p.tolist(), dist.tolist()
        ([0.0, 0.0, 1.0], [1.0, 1.0])
    """
    check_shape(origins, "origins", (None, 3))
    check_shape(directions, "directions", (None, 3))
    origins, directions = promote(origins, directions)
    d = directions / directions.norm(dim=-1, keepdim=True)
    w = torch.ones_like(d[..., 0]) if weights is None else weights.to(d.dtype)
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    proj = eye - d.unsqueeze(-1) * d.unsqueeze(-2)  # (*, R, 3, 3)
    G = (w[..., None, None] * proj).sum(-3)
    b = (w[..., None, None] * proj @ origins.unsqueeze(-1)).sum(-3)
    with torch.no_grad():
        ev = torch.linalg.eigvalsh(G)
        ill = ev[..., 0] < 1e-9 * ev[..., 2].clamp(min=torch.finfo(d.dtype).tiny)
    trace = G.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    ridge = 1e-6 * trace + torch.finfo(d.dtype).eps
    centre = (w.unsqueeze(-1) * origins).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1e-12)
    G = torch.where(ill[..., None, None], G + ridge * eye, G)
    b = torch.where(ill[..., None, None], b + ridge * centre.unsqueeze(-1), b)
    point = torch.linalg.solve(G, b).squeeze(-1)
    off = point.unsqueeze(-2) - origins
    dist = (proj @ off.unsqueeze(-1)).squeeze(-1).norm(dim=-1)
    return point, dist
