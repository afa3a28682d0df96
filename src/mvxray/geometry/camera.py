"""Pinhole X-ray cameras: intrinsics, projection CT → image, back-projection image → rays.

Camera frame (``cam``): OpenCV / mmdet3d — x right, y down, z from the X-ray source (the
camera centre) towards the detector. Image plane: u right, v down, in pixels; the centre of
pixel (row r, column c) is at (u, v) = (c + 0.5, r + 0.5). See ``docs/conventions.md``.

All functions are batched and differentiable; views are a leading dimension ``V``.
"""

from __future__ import annotations

import math

import torch

from mvxray.geometry._checks import (
    ShapeError,
    check_finite,
    check_intrinsics,
    check_shape,
    promote,
)

_EPS = 1e-9


def intrinsics_from_detector(
    sdd_mm: float | torch.Tensor,
    pixel_mm: float | torch.Tensor,
    height: int,
    width: int,
    offset_px: tuple[float, float] = (0.0, 0.0),
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Intrinsics of a flat detector ``sdd_mm`` from the source, square pixels of ``pixel_mm``.

    The principal point (foot of the perpendicular from the source onto the detector) is the
    detector centre ``(width / 2, height / 2)`` px plus ``offset_px`` (du, dv).

    Args:
        sdd_mm: source-to-detector distance, mm (scalar or ``(*,)``).
        pixel_mm: detector pixel pitch, mm (scalar or ``(*,)``).
        height: detector rows, px.
        width: detector columns, px.
        offset_px: principal-point offset from the detector centre, px.
        dtype: result dtype.

    Returns:
        ``(*, 3, 3)`` intrinsic matrix K.

    Raises:
        ValueError: non-positive distance, pitch or size.

    Example:
        >>> intrinsics_from_detector(600.0, 0.78125, 1024, 1024)[0]
        tensor([768.,   0., 512.], dtype=torch.float64)
    """
    sdd = torch.as_tensor(sdd_mm, dtype=dtype)
    pix = torch.as_tensor(pixel_mm, dtype=dtype)
    if bool((sdd <= 0).any()) or bool((pix <= 0).any()) or height <= 0 or width <= 0:
        raise ValueError(
            f"sdd_mm, pixel_mm, height and width must be positive; found sdd_mm={sdd_mm}, "
            f"pixel_mm={pixel_mm}, height={height}, width={width}"
        )
    f = sdd / pix
    shape = torch.broadcast_shapes(sdd.shape, pix.shape)
    K = torch.zeros((*shape, 3, 3), dtype=dtype)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = width / 2.0 + offset_px[0]
    K[..., 1, 2] = height / 2.0 + offset_px[1]
    K[..., 2, 2] = 1.0
    return K


def projection_matrix(K: torch.Tensor, T_cam_from_ct: torch.Tensor) -> torch.Tensor:
    """``P_img_from_ct = K [R | t]``: ``(*, 3, 3)``, ``(*, 4, 4)`` → ``(*, 3, 4)``."""
    check_intrinsics(K)
    check_shape(T_cam_from_ct, "T_cam_from_ct", (4, 4))
    return K @ T_cam_from_ct[..., :3, :]


def project_points(
    points_ct: torch.Tensor, K: torch.Tensor, T_cam_from_ct: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project CT points into every view at once (one fused ``K[R|t]`` product).

    Args:
        points_ct: ``(*, N, 3)`` points in the CT frame, mm.
        K: ``(*, V, 3, 3)`` intrinsics.
        T_cam_from_ct: ``(*, V, 4, 4)`` extrinsics (CT → camera).

    Returns:
        uv: ``(*, V, N, 2)`` pixel coordinates (u right, v down).
        depth: ``(*, V, N)`` z in the camera frame, mm (≤ 0 means behind the source; there the
            uv values are meaningless — use :func:`visible_mask`). uv is always finite, also for
            points on the source plane (z = 0), but its value there is unspecified.

    Example:
        >>> K = intrinsics_from_detector(1000.0, 1.0, 100, 100).unsqueeze(0)
        >>> T = torch.eye(4, dtype=torch.float64); T[2, 3] = 500.0
        >>> uv, z = project_points(torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64), K, T[None])
        >>> uv[0, 0].tolist(), z[0, 0].item()
        ([70.0, 50.0], 500.0)
    """
    check_shape(points_ct, "points_ct", (None, 3))
    P = projection_matrix(K, T_cam_from_ct)  # (*, V, 3, 4)
    dtype = torch.promote_types(points_ct.dtype, P.dtype)
    P, points_ct = P.to(dtype), points_ct.to(dtype)
    batch = torch.broadcast_shapes(points_ct.shape[:-2], P.shape[:-3])
    V, N = P.shape[-3], points_ct.shape[-2]
    # One batched GEMM in the (V, 3, N) layout: the inner dimension is 3, so the product is
    # memory bound and this layout (points as rows of length N) streams best.
    BV = math.prod(batch) * V
    Pb = P.expand(*batch, V, 3, 4).reshape(BV, 3, 4)
    pts_t = points_ct.expand(*batch, N, 3).transpose(-1, -2).unsqueeze(-3)
    pts_t = pts_t.expand(*batch, V, 3, N).reshape(BV, 3, N)
    x = torch.baddbmm(Pb[..., 3:], Pb[..., :3], pts_t)  # (B*V, 3, N)
    z = x[:, 2]
    if torch.is_grad_enabled() and x.requires_grad:
        # Keep the division finite and its gradient defined on the source plane (z = 0).
        z_safe = torch.where(z.abs() < _EPS, torch.full_like(z, _EPS), z)
        uv = torch.stack((x[:, 0] / z_safe, x[:, 1] / z_safe), dim=-1)
    else:
        # Inference path: divide straight into the (V, N, 2) layout, then make the rare
        # source-plane points finite in place (no gradient needed, ~30 % faster).
        uv = x.new_empty(x.shape[0], N, 2)
        torch.div(x[:, :2], z.unsqueeze(1), out=uv.transpose(-1, -2))
        uv.nan_to_num_(0.0)
    return uv.reshape(*batch, V, N, 2), z.reshape(*batch, V, N)


def visible_mask(
    uv: torch.Tensor, depth: torch.Tensor, height: int, width: int, min_depth_mm: float = 1e-6
) -> torch.Tensor:
    """True where a projected point is in front of the source and inside the image.

    Args:
        uv: ``(*, N, 2)`` pixels.
        depth: ``(*, N)`` camera z, mm.
        height: image rows, px.
        width: image columns, px.
        min_depth_mm: points closer to the source plane than this are not visible.

    Returns:
        ``(*, N)`` bool.
    """
    u, v = uv[..., 0], uv[..., 1]
    inside = (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    return inside & (depth > min_depth_mm)


def pixels_to_grid(uv: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixels → ``torch.nn.functional.grid_sample`` coordinates (``align_corners=False``).

    The one adapter to ``grid_sample``: its −1 / +1 are the image borders, so pixel centres sit
    at ``(c + 0.5, r + 0.5)``, the geometry core's rule (docs/conventions.md).

    Example:
        >>> pixels_to_grid(torch.tensor([[0.0, 4.0], [0.5, 2.0]]), 4, 2).tolist()
        [[-1.0, 1.0], [-0.5, 0.0]]
    """
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=uv.dtype, device=uv.device)
    return uv * scale - 1


def backproject_pixels(
    uv: torch.Tensor, K: torch.Tensor, T_cam_from_ct: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixels, in the CT frame.

    Args:
        uv: ``(*, V, N, 2)`` pixel coordinates.
        K: ``(*, V, 3, 3)`` intrinsics.
        T_cam_from_ct: ``(*, V, 4, 4)`` extrinsics.

    Returns:
        origins: ``(*, V, N, 3)`` the source position (mm), repeated per pixel.
        directions: ``(*, V, N, 3)`` unit directions from the source through the pixel.

    Example:
        >>> K = intrinsics_from_detector(1000.0, 1.0, 100, 100).unsqueeze(0)
        >>> T = torch.eye(4, dtype=torch.float64)[None]
        >>> o, d = backproject_pixels(torch.tensor([[[50.0, 50.0]]], dtype=torch.float64), K, T)
        >>> d[0, 0].tolist()
        [0.0, 0.0, 1.0]
    """
    check_shape(uv, "uv", (None, 2))
    check_intrinsics(K)
    check_shape(T_cam_from_ct, "T_cam_from_ct", (4, 4))
    uv, K, T_cam_from_ct = promote(uv, K, T_cam_from_ct)
    ones = torch.ones_like(uv[..., :1])
    pix_h = torch.cat([uv, ones], dim=-1)  # (*, V, N, 3)
    d_cam = pix_h @ torch.linalg.inv(K).transpose(-1, -2)
    R = T_cam_from_ct[..., :3, :3]
    d_ct = d_cam @ R  # (R^T d)^T = d^T R
    directions = d_ct / d_ct.norm(dim=-1, keepdim=True)
    t = T_cam_from_ct[..., :3, 3:]
    source = -(R.transpose(-1, -2) @ t).squeeze(-1)  # (*, V, 3)
    return source.unsqueeze(-2).expand_as(directions), directions


def unproject_points(
    uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T_cam_from_ct: torch.Tensor
) -> torch.Tensor:
    """Lift pixels with camera depth to CT points: ``p = [R|t]⁻¹ K⁻¹ (u·d, v·d, d)``.

    Args:
        uv: ``(*, V, N, 2)`` pixels.
        depth: ``(*, V, N)`` camera z, mm (not the distance along the ray).
        K: ``(*, V, 3, 3)`` intrinsics.
        T_cam_from_ct: ``(*, V, 4, 4)`` extrinsics.

    Returns:
        ``(*, V, N, 3)`` points in the CT frame, mm.
    """
    check_shape(uv, "uv", (None, 2))
    check_finite(depth, "depth")
    check_intrinsics(K)
    check_shape(T_cam_from_ct, "T_cam_from_ct", (4, 4))
    try:
        torch.broadcast_shapes(depth.shape, uv.shape[:-1])
    except RuntimeError:
        raise ShapeError(
            f"depth: expected a shape broadcastable to {tuple(uv.shape[:-1])} (uv without its "
            f"last dim), found {tuple(depth.shape)}"
        ) from None
    uv, depth, K, T_cam_from_ct = promote(uv, depth, K, T_cam_from_ct)
    ones = torch.ones_like(uv[..., :1])
    x_cam = (torch.cat([uv, ones], -1) @ torch.linalg.inv(K).transpose(-1, -2)) * depth.unsqueeze(
        -1
    )
    R = T_cam_from_ct[..., :3, :3]
    t = T_cam_from_ct[..., :3, 3]
    return (x_cam - t.unsqueeze(-2)) @ R


def points_depth(points_ct: torch.Tensor, T_cam_from_ct: torch.Tensor) -> torch.Tensor:
    """Camera z (depth along the principal axis, mm) of CT points: ``(*, N, 3)`` → ``(*, V, N)``."""
    check_shape(points_ct, "points_ct", (None, 3))
    check_shape(T_cam_from_ct, "T_cam_from_ct", (4, 4))
    r3 = T_cam_from_ct[..., 2, :3]  # (*, V, 3)
    return (points_ct.unsqueeze(-3) * r3.unsqueeze(-2)).sum(-1) + T_cam_from_ct[..., 2, 3:]
