"""CT voxel ↔ CT world frames and rigid transforms.

The CT world frame (``ct``) has its origin at the centre of the volume, axes along the
DICOM patient axes (LPS: X to the patient's left, Y to posterior, Z to superior / head),
right-handed, in millimetres. See ``docs/conventions.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.geometry.linalg as KL
import torch

from mvxray.geometry._checks import ShapeError, check_finite, check_shape


def transform_points(T_b_from_a: torch.Tensor, points_a: torch.Tensor) -> torch.Tensor:
    """Apply a homogeneous transform to 3D points (column-vector convention).

    Args:
        T_b_from_a: ``(*, 4, 4)`` transform from frame a to frame b.
        points_a: ``(*, N, 3)`` points in frame a (mm).

    Returns:
        ``(*, N, 3)`` points in frame b (mm); leading dims broadcast.

    Example:
        >>> T = torch.eye(4); T[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
        >>> transform_points(T, torch.zeros(1, 3))
        tensor([[1., 2., 3.]])
    """
    check_shape(T_b_from_a, "T_b_from_a", (4, 4))
    check_shape(points_a, "points_a", (None, 3))
    R = T_b_from_a[..., :3, :3]
    t = T_b_from_a[..., :3, 3]
    return points_a @ R.transpose(-1, -2) + t.unsqueeze(-2)


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Invert rigid transforms ``(*, 4, 4)`` exactly (Rᵀ, -Rᵀt) — no general matrix inverse.

    Example:
        >>> T = torch.eye(4); T[0, 3] = 5.0
        >>> invert_rigid(T)[0, 3].item()
        -5.0
    """
    check_shape(T, "T", (4, 4))
    return KL.inverse_transformation(T)


def T_ct_from_voxel(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    direction: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Voxel index (i, j, k) → CT world (mm) for a volume centred on the CT origin.

    Voxel ``(i, j, k)`` is the array element ``volume[i, j, k]``; its centre sits at integer
    indices. Column ``a`` of ``direction`` is the LPS unit vector along array axis ``a``
    (DICOM direction cosines). The CT origin is the centre of the voxel grid, i.e. voxel
    ``((I-1)/2, (J-1)/2, (K-1)/2)``.

    Args:
        shape: ``(I, J, K)`` array shape.
        spacing_mm: voxel spacing along the array axes, mm, all > 0.
        direction: ``(3, 3)`` orthonormal direction cosines; identity if ``None``.
        dtype: dtype of the result.

    Returns:
        ``(4, 4)`` affine ``T_ct_from_voxel`` (rotation × spacing, translation).

    Raises:
        ValueError: non-positive spacing or a shape that is not 3D.

    Example:
        >>> T = T_ct_from_voxel((3, 3, 3), (2.0, 2.0, 2.0))
        >>> transform_points(T, torch.tensor([[1.0, 1.0, 1.0]], dtype=T.dtype))
        tensor([[0., 0., 0.]], dtype=torch.float64)
    """
    if len(shape) != 3 or len(spacing_mm) != 3:
        raise ValueError(f"shape and spacing_mm must have 3 entries, found {shape}, {spacing_mm}")
    sp = torch.tensor([float(s) for s in spacing_mm], dtype=dtype)
    if bool((sp <= 0).any()) or not bool(torch.isfinite(sp).all()):
        raise ValueError(f"spacing_mm must be positive and finite (mm), found {list(spacing_mm)}")
    D = torch.eye(3, dtype=dtype) if direction is None else direction.to(dtype)
    if D.shape != (3, 3):
        raise ShapeError(f"direction: expected shape (3, 3), found {tuple(D.shape)}")
    check_finite(D, "direction")
    A = D * sp.unsqueeze(0)  # column a scaled by spacing a
    centre = (torch.tensor([float(n) for n in shape], dtype=dtype) - 1.0) / 2.0
    T = torch.eye(4, dtype=dtype)
    T[:3, :3] = A
    T[:3, 3] = -A @ centre
    return T


def voxel_to_ct(points_ijk: torch.Tensor, T_ct_from_vox: torch.Tensor) -> torch.Tensor:
    """Map continuous voxel indices ``(*, N, 3)`` to CT world mm ``(*, N, 3)``."""
    return transform_points(T_ct_from_vox.to(points_ijk.dtype), points_ijk)


def ct_to_voxel(points_ct: torch.Tensor, T_ct_from_vox: torch.Tensor) -> torch.Tensor:
    """Map CT world mm ``(*, N, 3)`` to continuous voxel indices ``(*, N, 3)`` (inverse affine).

    Example:
        >>> T = T_ct_from_voxel((5, 5, 5), (1.0, 1.0, 2.0))
        >>> ct_to_voxel(torch.tensor([[0.0, 0.0, 2.0]], dtype=T.dtype), T)
        tensor([[2., 2., 3.]], dtype=torch.float64)
    """
    T_inv = torch.linalg.inv(T_ct_from_vox.to(points_ct.dtype))
    return transform_points(T_inv, points_ct)


def source_position(T_cam_from_ct: torch.Tensor) -> torch.Tensor:
    """X-ray source (camera centre) in CT mm: ``-Rᵀ t``. ``(*, 4, 4)`` → ``(*, 3)``."""
    check_shape(T_cam_from_ct, "T_cam_from_ct", (4, 4))
    R = T_cam_from_ct[..., :3, :3]
    t = T_cam_from_ct[..., :3, 3:]
    return -(R.transpose(-1, -2) @ t).squeeze(-1)
