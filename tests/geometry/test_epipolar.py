"""Epipolar geometry: fundamental matrix, epipolar lines and point-to-line distances."""

from __future__ import annotations

import pytest
import torch
from geometry_strategies import points_near_isocentre, rigs
from hypothesis import given, settings
from hypothesis import strategies as st
from kornia.geometry.epipolar import left_to_right_epipolar_distance

from mvxray.geometry import (
    Rig,
    ShapeError,
    epipolar_distance,
    epipolar_distance_matrix,
    epipolar_lines,
    fundamental_matrix,
    project_points,
)

F64 = torch.float64


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_correspondences_lie_on_epipolar_lines(data: st.DataObject) -> None:
    rig = data.draw(rigs())
    X = data.draw(points_near_isocentre(rig))
    uv, _, _ = rig.project(X)
    F = fundamental_matrix(rig.K[0], rig.T_cam_from_ct[0], rig.K[1], rig.T_cam_from_ct[1])
    assert torch.allclose(F.norm(), torch.tensor(1.0, dtype=F64))
    assert epipolar_distance(uv[0], uv[1], F, symmetric=True).max() < 1e-6
    # a pixel moved along the normal of its epipolar line is that many px away from it
    lines = epipolar_lines(uv[0], F)  # (N, 3), unit normal (a, b)
    shift = data.draw(st.floats(-30.0, 30.0))
    moved = uv[1] + shift * lines[:, :2]
    assert torch.allclose(
        epipolar_distance(uv[0], moved, F), torch.full((len(X),), abs(shift), dtype=F64), atol=1e-6
    )


def test_matches_kornia_distance_and_epipoles() -> None:
    rig = Rig.seed(size=256)
    g = torch.Generator().manual_seed(0)
    uv_a = torch.rand(20, 2, generator=g, dtype=F64) * 256
    uv_b = torch.rand(20, 2, generator=g, dtype=F64) * 256
    F = fundamental_matrix(rig.K[2], rig.T_cam_from_ct[2], rig.K[5], rig.T_cam_from_ct[5])
    ours = epipolar_distance(uv_a, uv_b, F)
    theirs = left_to_right_epipolar_distance(uv_a[None], uv_b[None], F[None])[0]
    assert torch.allclose(ours, theirs)
    # the epipole in a (image of b's source) is F's right null vector; in b, the left one
    e_a, _ = project_points(rig.source_ct[5:6], rig.K[2:3], rig.T_cam_from_ct[2:3])
    e_b, _ = project_points(rig.source_ct[2:3], rig.K[5:6], rig.T_cam_from_ct[5:6])
    ha = torch.cat([e_a[0, 0], torch.ones(1, dtype=F64)])
    hb = torch.cat([e_b[0, 0], torch.ones(1, dtype=F64)])
    assert (F @ ha).abs().max() < 1e-9 * ha.norm() and (hb @ F).abs().max() < 1e-9 * hb.norm()


def test_symmetric_is_the_mean_of_both_directions() -> None:
    rig = Rig.seed(size=128)
    uv_a = torch.rand(6, 2, dtype=F64) * 128
    uv_b = torch.rand(6, 2, dtype=F64) * 128
    Fab = fundamental_matrix(rig.K[0], rig.T_cam_from_ct[0], rig.K[3], rig.T_cam_from_ct[3])
    Fba = fundamental_matrix(rig.K[3], rig.T_cam_from_ct[3], rig.K[0], rig.T_cam_from_ct[0])
    assert torch.allclose(Fba, Fab.T) or torch.allclose(Fba, -Fab.T)
    both = (epipolar_distance(uv_a, uv_b, Fab) + epipolar_distance(uv_b, uv_a, Fba)) / 2
    assert torch.allclose(epipolar_distance(uv_a, uv_b, Fab, symmetric=True), both)


def test_distance_matrix_matches_pairwise_and_all_view_pairs() -> None:
    rig = Rig.seed(size=128)
    uv_a = torch.rand(5, 2, dtype=F64) * 128
    uv_b = torch.rand(7, 2, dtype=F64) * 128
    F = fundamental_matrix(rig.K[1], rig.T_cam_from_ct[1], rig.K[4], rig.T_cam_from_ct[4])
    for sym in (False, True):
        D = epipolar_distance_matrix(uv_a, uv_b, F, symmetric=sym)
        assert D.shape == (5, 7)
        ref = epipolar_distance(
            uv_a[:, None].expand(5, 7, 2), uv_b[None].expand(5, 7, 2), F, symmetric=sym
        )
        assert torch.allclose(D, ref)
    K, T = rig.K, rig.T_cam_from_ct
    F_all = fundamental_matrix(K[:, None], T[:, None], K[None], T[None])
    assert F_all.shape == (10, 10, 3, 3)
    assert torch.allclose(F_all[1, 4], F)
    assert torch.equal(
        F_all[3, 3], torch.zeros(3, 3, dtype=F64)
    )  # same source: no epipolar geometry
    assert epipolar_distance_matrix(torch.zeros(0, 2, dtype=F64), uv_b, F).shape == (0, 7)


def test_coincident_sources_give_zero_F_without_nan() -> None:
    rig = Rig.seed(size=64)
    F = fundamental_matrix(rig.K[0], rig.T_cam_from_ct[0], rig.K[0], rig.T_cam_from_ct[0])
    assert torch.equal(F, torch.zeros(3, 3, dtype=F64))
    assert torch.isfinite(epipolar_lines(torch.rand(3, 2, dtype=F64), F)).all()


def test_gradient_flows_to_pixels() -> None:
    rig = Rig.seed(size=64)
    F = fundamental_matrix(rig.K[0], rig.T_cam_from_ct[0], rig.K[2], rig.T_cam_from_ct[2])
    uv_a = (torch.rand(4, 2, dtype=F64) * 64).requires_grad_()
    uv_b = (torch.rand(4, 2, dtype=F64) * 64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: epipolar_distance(a, b, F, symmetric=True), (uv_a, uv_b)
    )


def test_bad_shapes() -> None:
    F = torch.eye(3, dtype=F64)
    with pytest.raises(ShapeError, match=r"uv_a: expected shape \(\*, N, 2\), found \(4, 3\)"):
        epipolar_lines(torch.zeros(4, 3, dtype=F64), F)
    with pytest.raises(ShapeError, match="F"):
        epipolar_lines(torch.zeros(4, 2, dtype=F64), torch.eye(4, dtype=F64))
    with pytest.raises(ShapeError, match="uv_b"):
        epipolar_distance(torch.zeros(4, 2, dtype=F64), torch.zeros(4, 3, dtype=F64), F)
