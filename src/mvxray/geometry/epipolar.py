"""Epipolar geometry between two calibrated views.

The fundamental matrix ``F_b_from_a`` satisfies ``x_bᵀ F x_a = 0`` for the pixels
``x_a = (u_a, v_a, 1)`` and ``x_b`` of one CT point seen in views a and b; ``F x_a`` is the
epipolar line of ``x_a`` in view b. Built on ``kornia.geometry.epipolar``.
"""

from __future__ import annotations

import torch
from kornia.geometry.epipolar import fundamental_from_projections

from mvxray.geometry._checks import check_shape, promote
from mvxray.geometry.camera import projection_matrix
from mvxray.geometry.frames import source_position


def fundamental_matrix(
    K_a: torch.Tensor, T_a: torch.Tensor, K_b: torch.Tensor, T_b: torch.Tensor
) -> torch.Tensor:
    """Fundamental matrix from view a to view b, scaled to unit Frobenius norm.

    Args:
        K_a: ``(*, 3, 3)`` intrinsics of view a.
        T_a: ``(*, 4, 4)`` ``T_cam_from_ct`` of view a.
        K_b: ``(*, 3, 3)`` intrinsics of view b.
        T_b: ``(*, 4, 4)`` ``T_cam_from_ct`` of view b.

    Returns:
        ``(*, 3, 3)`` F with ``x_bᵀ F x_a = 0`` (zero when the two sources coincide). Leading
        dims broadcast, so ``K[:, None], T[:, None], K[None], T[None]`` gives all ``(V, V)`` pairs.

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=64)
        >>> F = fundamental_matrix(rig.K[0], rig.T_cam_from_ct[0], rig.K[3], rig.T_cam_from_ct[3])
        >>> uv, _, _ = rig.project(torch.tensor([[10.0, -20.0, 5.0]], dtype=torch.float64))
        >>> epipolar_distance(uv[0], uv[3], F).abs().item() < 1e-9
        True
    """
    P_a = projection_matrix(K_a, T_a)
    P_b = projection_matrix(K_b, T_b)
    batch = torch.broadcast_shapes(P_a.shape[:-2], P_b.shape[:-2])
    F = fundamental_from_projections(P_a.expand(*batch, 3, 4), P_b.expand(*batch, 3, 4))
    # Pixel-unit projections give entries ~1e10; unit norm keeps float32 comfortable.
    norm = F.flatten(-2).norm(dim=-1)[..., None, None]
    F = F / norm.clamp(min=torch.finfo(F.dtype).tiny)
    # Coincident sources have no epipolar geometry; kornia's F is then rounding noise, which
    # the normalization would blow up to unit norm — say so explicitly with zeros.
    src_a, src_b = source_position(T_a), source_position(T_b)
    gap = (src_a - src_b).norm(dim=-1)
    scale = 1.0 + torch.maximum(src_a.norm(dim=-1), src_b.norm(dim=-1))
    same = (gap <= 1e3 * torch.finfo(F.dtype).eps * scale)[..., None, None]
    return torch.where(same, torch.zeros_like(F), F)


def epipolar_lines(uv_a: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """Epipolar lines in view b of pixels in view a, normalized so that ``a² + b² = 1``.

    Args:
        uv_a: ``(*, N, 2)`` pixels in view a.
        F: ``(*, 3, 3)`` from :func:`fundamental_matrix`.

    Returns:
        ``(*, N, 3)`` lines ``(a, b, c)``: ``a u + b v + c`` is the signed distance (px) of a
        pixel ``(u, v)`` of view b to the line. Use ``Fᵀ`` for lines in view a of view-b pixels.
    """
    check_shape(uv_a, "uv_a", (None, 2))
    check_shape(F, "F", (3, 3))
    uv_a, F = promote(uv_a, F)
    x = torch.cat([uv_a, torch.ones_like(uv_a[..., :1])], dim=-1)
    lines = x @ F.transpose(-1, -2)
    norm = lines[..., :2].norm(dim=-1, keepdim=True)
    return lines / norm.clamp(min=torch.finfo(lines.dtype).tiny)


def epipolar_distance(
    uv_a: torch.Tensor, uv_b: torch.Tensor, F: torch.Tensor, symmetric: bool = False
) -> torch.Tensor:
    """Distance (px) of corresponding pixels to each other's epipolar lines.

    Args:
        uv_a: ``(*, N, 2)`` pixels in view a.
        uv_b: ``(*, N, 2)`` the corresponding pixels in view b.
        F: ``(*, 3, 3)`` from view a to view b.
        symmetric: average the distance of ``uv_b`` to the line of ``uv_a`` in b and of
            ``uv_a`` to the line of ``uv_b`` in a; otherwise the first only.

    Returns:
        ``(*, N)`` unsigned distances, px.
    """
    check_shape(uv_a, "uv_a", (None, 2))
    check_shape(uv_b, "uv_b", (None, 2))
    check_shape(F, "F", (3, 3))
    uv_a, uv_b, F = promote(uv_a, uv_b, F)
    x_b = torch.cat([uv_b, torch.ones_like(uv_b[..., :1])], dim=-1)
    d_b = (epipolar_lines(uv_a, F) * x_b).sum(-1).abs()
    if not symmetric:
        return d_b
    x_a = torch.cat([uv_a, torch.ones_like(uv_a[..., :1])], dim=-1)
    d_a = (epipolar_lines(uv_b, F.transpose(-1, -2)) * x_a).sum(-1).abs()
    return (d_a + d_b) / 2


def epipolar_distance_matrix(
    uv_a: torch.Tensor, uv_b: torch.Tensor, F: torch.Tensor, symmetric: bool = False
) -> torch.Tensor:
    """All-pairs :func:`epipolar_distance`: ``(*, N, 2)`` × ``(*, M, 2)`` → ``(*, N, M)`` px.

    Entry ``(n, m)`` is the distance of ``uv_b[m]`` to the epipolar line of ``uv_a[n]``
    (averaged with the reverse distance when ``symmetric``): the cost of matching detections
    across two views.

    Example:
        >>> F = torch.tensor([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # pure x-translation: rows match
        >>> epipolar_distance_matrix(torch.tensor([[5.0, 2.0]]), torch.tensor([[9.0, 2.0], [1.0, 5.0]]), F)
        tensor([[0., 3.]])
    """
    check_shape(uv_a, "uv_a", (None, 2))
    check_shape(uv_b, "uv_b", (None, 2))
    check_shape(F, "F", (3, 3))
    uv_a, uv_b, F = promote(uv_a, uv_b, F)
    x_b = torch.cat([uv_b, torch.ones_like(uv_b[..., :1])], dim=-1)
    d_b = epipolar_lines(uv_a, F) @ x_b.transpose(-1, -2)  # (*, N, M)
    if not symmetric:
        return d_b.abs()
    x_a = torch.cat([uv_a, torch.ones_like(uv_a[..., :1])], dim=-1)
    d_a = x_a @ epipolar_lines(uv_b, F.transpose(-1, -2)).transpose(-1, -2)
    return (d_a.abs() + d_b.abs()) / 2
