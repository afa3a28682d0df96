"""Pose perturbation, template orbits and pose errors."""

from __future__ import annotations

import math

import pytest
import torch

from mvxray.geometry import Rig, source_position
from mvxray.lifting.rayemb.poses import orbit_poses, perturb_poses, pose_error
from mvxray.registration.baselines import pivot_motion


def test_perturbations_stay_within_bounds_and_rigid():
    rig = Rig.seed(64)
    g = torch.Generator().manual_seed(0)
    T = perturb_poses(rig.T_cam_from_ct, 10.0, 20.0, g)
    R = T[:, :3, :3]
    assert torch.allclose(
        R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-9
    )
    rot, _ = pose_error(T, rig.T_cam_from_ct)
    assert float(rot.max()) <= math.sqrt(3) * 10.0 + 1e-6
    assert float(rot.min()) > 0.0
    # CT origin moves by the translation only (rotation is about it): |dt| <= 20 sqrt(3)
    o = torch.zeros(1, 3, dtype=torch.float64)
    d = (T[:, :3, 3] - rig.T_cam_from_ct[:, :3, 3]).norm(dim=-1)
    assert float(d.max()) <= 20 * math.sqrt(3) + 1e-6
    assert o.shape == (1, 3)


def test_orbit_zero_offset_is_identity_and_orbit_keeps_pivot_distance():
    T = Rig.seed(64).T_cam_from_ct[2]
    P = orbit_poses(T, torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, -15.0]]))
    assert torch.allclose(P[0], T, atol=1e-12)
    pivot = source_position(T) + float(T[2, 3]) * T[2, :3]  # on the principal axis
    dist = (source_position(P) - pivot).norm(dim=-1)
    assert dist.tolist() == pytest.approx([float(T[2, 3])] * 3)
    rot, _ = pose_error(P, T.expand_as(P))
    assert rot.tolist() == pytest.approx([0.0, 20.0, 15.0], abs=1e-4)


def test_pivot_motion_zero_is_identity_and_translation_is_in_camera_frame():
    T = Rig.seed(64).T_cam_from_ct[0]
    assert torch.allclose(pivot_motion(T, torch.zeros(6, dtype=torch.float64)), T)
    d = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    assert (pivot_motion(T, d)[:3, 3] - T[:3, 3]).tolist() == pytest.approx([1.0, 2.0, 3.0])
