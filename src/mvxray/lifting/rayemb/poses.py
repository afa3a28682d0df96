"""Pose sampling shared by RayEmb training and registration: perturbations and orbits.

All poses are ``T_cam_from_ct`` ``(*, 4, 4)`` (world → camera, mm; see ``docs/conventions.md``).
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from mvxray.geometry import check_shape, invert_rigid


def perturb_poses(
    T_cam_from_ct: torch.Tensor,
    max_rot_deg: float,
    max_trans_mm: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Move each camera by a random rigid motion of the CT frame.

    The camera pose ``T_ct_from_cam`` is left-multiplied by ``ΔT`` = rotation about the CT
    origin (X, Y, Z Euler angles each uniform in ±``max_rot_deg``) then a translation (each
    axis uniform in ±``max_trans_mm``): ``T' = T_cam_from_ct · ΔT⁻¹``.

    Args:
        T_cam_from_ct: ``(V, 4, 4)`` poses.
        max_rot_deg: bound per Euler angle, degrees.
        max_trans_mm: bound per translation axis, mm.
        generator: RNG (reproducibility).

    Returns:
        ``(V, 4, 4)`` perturbed poses (same dtype).

    Example:
        >>> T = torch.eye(4, dtype=torch.float64)[None]
        >>> torch.equal(perturb_poses(T, 0.0, 0.0), T)
        True
    """
    check_shape(T_cam_from_ct, "T_cam_from_ct", (None, 4, 4))
    V, dt = T_cam_from_ct.shape[0], T_cam_from_ct.dtype
    u = torch.rand(V, 6, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    ang = torch.deg2rad(u[:, :3] * max_rot_deg)
    dT = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    dT[:, :3, :3] = euler_xyz(ang)
    dT[:, :3, 3] = u[:, 3:] * max_trans_mm
    return (T_cam_from_ct.to(torch.float64) @ invert_rigid(dT)).to(dt)


def euler_xyz(angles_rad: torch.Tensor) -> torch.Tensor:
    """``R = Rz · Ry · Rx`` from ``(*, 3)`` angles (rad) about X, Y, Z → ``(*, 3, 3)``."""
    eye = torch.eye(3, dtype=angles_rad.dtype, device=angles_rad.device)
    R = [axis_angle_to_rotation_matrix(angles_rad[..., i : i + 1] * eye[i]) for i in range(3)]
    return R[2] @ R[1] @ R[0]


def orbit_poses(T_cam_from_ct: torch.Tensor, offsets_deg: torch.Tensor) -> torch.Tensor:
    """Cameras orbiting the point where a view's principal axis passes closest to the CT origin.

    Args:
        T_cam_from_ct: ``(4, 4)`` the reference pose.
        offsets_deg: ``(T, 2)`` rotations (degrees) about the camera's own x axis (tilt up/down)
            then y axis (swing left/right), around the pivot on the principal axis at the CT
            origin's depth.

    Returns:
        ``(T, 4, 4)`` poses (offset (0, 0) reproduces the reference).

    Example:
        >>> T = torch.eye(4, dtype=torch.float64); T[2, 3] = 300.0
        >>> P = orbit_poses(T, torch.tensor([[0.0, 90.0]]))
        >>> from mvxray.geometry import source_position
        >>> [round(x) for x in source_position(P[0]).tolist()]  # swung from −Z to +X
        [300, 0, 0]
    """
    check_shape(T_cam_from_ct, "T_cam_from_ct", (4, 4))
    check_shape(offsets_deg, "offsets_deg", (None, 2))
    dt = torch.float64
    T0 = T_cam_from_ct.to(dt)
    depth = float(T0[2, 3])  # camera z of the CT origin
    n = offsets_deg.shape[0]
    rad = torch.deg2rad(offsets_deg.to(dt))
    zeros = torch.zeros(n, dtype=dt)
    Rx = axis_angle_to_rotation_matrix(torch.stack([rad[:, 0], zeros, zeros], -1))
    Ry = axis_angle_to_rotation_matrix(torch.stack([zeros, rad[:, 1], zeros], -1))
    R = Ry @ Rx
    pivot = torch.tensor([0.0, 0.0, depth], dtype=dt)
    # Rotating the world about the pivot (camera coordinates) = orbiting the camera inversely.
    M = torch.eye(4, dtype=dt).repeat(n, 1, 1)
    M[:, :3, :3] = R
    M[:, :3, 3] = pivot - R @ pivot
    return (M @ T0).to(T_cam_from_ct.dtype)


def pose_error(T_est: torch.Tensor, T_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation angle (degrees) and source-position distance (mm) between poses ``(*, 4, 4)``."""
    dR = T_est[..., :3, :3] @ T_gt[..., :3, :3].transpose(-1, -2)
    cos = ((dR.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    rot = torch.acos(cos) * 180.0 / math.pi
    s_est = -(T_est[..., :3, :3].transpose(-1, -2) @ T_est[..., :3, 3:]).squeeze(-1)
    s_gt = -(T_gt[..., :3, :3].transpose(-1, -2) @ T_gt[..., :3, 3:]).squeeze(-1)
    return rot, (s_est - s_gt).norm(dim=-1)
