"""CT voxel ↔ CT world frames and rigid transforms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.geometry import (
    ShapeError,
    T_ct_from_voxel,
    ct_to_voxel,
    invert_rigid,
    look_at,
    source_position,
    transform_points,
    voxel_to_ct,
)

F64 = torch.float64


def test_transform_points_hand_value() -> None:
    # 90° about Z then translate by (1, 2, 3): (1, 0, 0) → (0, 1, 0) → (1, 3, 3).
    T = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=F64)
    out = transform_points(T, torch.tensor([[1.0, 0.0, 0.0]], dtype=F64))
    assert out.tolist() == [[1.0, 3.0, 3.0]]


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
def test_transform_points_broadcasts_leading_dims(batch: tuple[int, ...]) -> None:
    T = torch.eye(4, dtype=F64).expand(*batch, 4, 4)
    p = torch.rand(5, 3, dtype=F64)
    assert transform_points(T, p).shape == (*batch, 5, 3)


def test_transform_points_bad_shapes() -> None:
    with pytest.raises(ShapeError, match=r"points_a: expected shape \(\*, N, 3\), found \(5, 4\)"):
        transform_points(torch.eye(4), torch.zeros(5, 4))
    with pytest.raises(ShapeError, match="T_b_from_a"):
        transform_points(torch.eye(3), torch.zeros(5, 3))


def test_invert_rigid_is_the_inverse() -> None:
    T = look_at(
        torch.tensor([100.0, -200.0, 50.0], dtype=F64),
        torch.zeros(3, dtype=F64),
        torch.tensor([0.0, 0, 1], dtype=F64),
    )
    assert torch.allclose(invert_rigid(T) @ T, torch.eye(4, dtype=F64), atol=1e-12)
    assert torch.allclose(invert_rigid(T), torch.linalg.inv(T), atol=1e-12)


def test_identity_pose_source_at_origin() -> None:
    assert source_position(torch.eye(4)).tolist() == [0.0, 0.0, 0.0]


def test_source_position_of_look_at() -> None:
    src = torch.tensor([[10.0, -300.0, 20.0], [0.0, 0.0, 500.0]], dtype=F64)
    up = torch.tensor([[0.0, 0, 1], [0, 1, 0]], dtype=F64)
    T = look_at(src, torch.zeros_like(src), up)
    assert torch.allclose(source_position(T), src, atol=1e-10)


def test_T_ct_from_voxel_hand_values() -> None:
    # 5 x 3 x 1 voxels of 2 x 1 x 4 mm: the centre voxel (2, 1, 0) is the CT origin,
    # voxel (0, 0, 0) sits at (-4, -1, 0) mm.
    T = T_ct_from_voxel((5, 3, 1), (2.0, 1.0, 4.0))
    ijk = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [4.0, 2.0, 0.0]], dtype=F64)
    assert voxel_to_ct(ijk, T).tolist() == [[0.0, 0.0, 0.0], [-4.0, -1.0, 0.0], [4.0, 1.0, 0.0]]


def test_T_ct_from_voxel_direction_cosines() -> None:
    # Array axis 0 runs along -Y (anterior), axis 1 along +X, axis 2 along +Z.
    D = torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=F64)
    T = T_ct_from_voxel((3, 3, 3), (1.0, 2.0, 3.0), D)
    assert voxel_to_ct(torch.tensor([[2.0, 1.0, 1.0]], dtype=F64), T).tolist() == [[0.0, -1.0, 0.0]]
    assert voxel_to_ct(torch.tensor([[1.0, 2.0, 2.0]], dtype=F64), T).tolist() == [[2.0, 0.0, 3.0]]


def test_T_ct_from_voxel_refusals() -> None:
    with pytest.raises(ValueError, match="spacing_mm must be positive"):
        T_ct_from_voxel((3, 3, 3), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3 entries"):
        T_ct_from_voxel((3, 3), (1.0, 1.0))
    with pytest.raises(ShapeError, match=r"direction: expected shape \(3, 3\), found \(2, 2\)"):
        T_ct_from_voxel((3, 3, 3), (1.0, 1.0, 1.0), torch.eye(2))
    with pytest.raises(ValueError, match="direction: 1 of 9 entries are NaN"):
        T_ct_from_voxel(
            (3, 3, 3),
            (1.0, 1.0, 1.0),
            torch.eye(3).index_put_((torch.tensor(0), torch.tensor(0)), torch.tensor(math.nan)),
        )


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 64) for _ in range(3))),
    spacing=st.tuples(*(st.floats(0.1, 5.0) for _ in range(3))),
    angle=st.floats(-math.pi, math.pi),
)
def test_voxel_ct_round_trip(shape, spacing, angle) -> None:  # type: ignore[no-untyped-def]
    c, s = math.cos(angle), math.sin(angle)
    D = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=F64)
    T = T_ct_from_voxel(shape, spacing, D)
    ijk = torch.rand(10, 3, dtype=F64) * torch.tensor(shape, dtype=F64)
    assert torch.allclose(ct_to_voxel(voxel_to_ct(ijk, T), T), ijk, atol=1e-9)
    centre = (torch.tensor(shape, dtype=F64) - 1) / 2
    assert voxel_to_ct(centre[None], T).abs().max() < 1e-9
