"""Input validation: every error names the argument, the expectation and what was found."""

from __future__ import annotations

import math

import pytest
import torch

from mvxray.geometry import ShapeError, check_shape
from mvxray.geometry._checks import check_finite, check_intrinsics, check_rigid


def test_shape_error_is_a_value_error() -> None:
    assert issubclass(ShapeError, ValueError)


@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 7, 3), (0, 3)])
def test_check_shape_accepts_matching_trailing_dims(shape: tuple[int, ...]) -> None:
    check_shape(torch.zeros(shape), "points", (3,))


def test_check_shape_message_names_argument_expected_and_found() -> None:
    with pytest.raises(ShapeError, match=r"points_ct: expected shape \(\*, N, 3\), found \(4, 2\)"):
        check_shape(torch.zeros(4, 2), "points_ct", (None, 3))
    with pytest.raises(ShapeError, match=r"K: expected shape \(\*, 3, 3\), found \(3,\)"):
        check_shape(torch.zeros(3), "K", (3, 3))


def test_check_shape_refuses_non_tensors() -> None:
    with pytest.raises(TypeError, match=r"uv: expected a torch\.Tensor, found list"):
        check_shape([[0.0, 0.0]], "uv", (None, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_counts_bad_entries(bad: float) -> None:
    x = torch.zeros(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="depth: 1 of 6 entries are NaN or Inf"):
        check_finite(x, "depth")
    check_finite(torch.zeros(3, dtype=torch.long), "ints")  # integers are always finite


def _K() -> torch.Tensor:
    return torch.tensor([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]])


def test_check_intrinsics_accepts_a_pinhole() -> None:
    check_intrinsics(_K().expand(4, 3, 3))


def test_check_intrinsics_refusals() -> None:
    K = _K()
    K[0, 0] = 0.0
    with pytest.raises(ValueError, match="K: singular intrinsics"):
        check_intrinsics(K)
    K = _K()
    K[2, 0] = 0.1
    with pytest.raises(ValueError, match=r"last row .* must be \(0, 0, 1\)"):
        check_intrinsics(K)
    K = _K()
    K[1, 2] = math.nan
    with pytest.raises(ValueError, match="K: 1 of 9 entries are NaN or Inf"):
        check_intrinsics(K)
    with pytest.raises(ShapeError, match="K_a"):
        check_intrinsics(torch.eye(4), "K_a")


def _rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    T = torch.eye(4, dtype=torch.float64)
    T[:2, :2] = torch.tensor([[c, -s], [s, c]])
    T[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    return T


def test_check_rigid_accepts_rotations_and_translations() -> None:
    check_rigid(torch.stack([_rot_z(a) for a in (0.0, 30.0, 179.0)]), "T")


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda T: T.__setitem__((0, 0), 2.0), "not a rigid transform"),  # scale
        (lambda T: T.__setitem__((0, 1), 0.3), "not a rigid transform"),  # shear
        (lambda T: T.__setitem__((2, 2), -1.0), "not a rigid transform"),  # reflection, det -1
        (lambda T: T.__setitem__((3, 0), 1.0), r"last row .* \(0, 0, 0, 1\)"),
        (lambda T: T.__setitem__((1, 3), math.inf), "NaN or Inf"),
    ],
)
def test_check_rigid_refusals(edit, what: str) -> None:  # type: ignore[no-untyped-def]
    T = _rot_z(0.0)
    edit(T)
    with pytest.raises(ValueError, match=what):
        check_rigid(T, "T_cam_from_ct")


def test_promote_to_common_float_dtype() -> None:
    from mvxray.geometry._checks import promote

    a, b = promote(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert a.dtype == b.dtype == torch.float64
    (c,) = promote(torch.zeros(2, dtype=torch.long))
    assert c.dtype == torch.get_default_dtype()


def test_float32_detections_with_a_float64_rig() -> None:
    from mvxray.geometry import (
        Rig,
        backproject_pixels,
        epipolar_distance,
        frustum_boxes,
        fundamental_matrix,
        lift_pixels,
        triangulate,
    )

    rig = Rig.seed(size=64)
    X = torch.tensor([[3.0, -4.0, 5.0]], dtype=torch.float64)
    uv32 = rig.project(X)[0].float()
    res = triangulate(uv32, rig.K, rig.T_cam_from_ct)
    assert res.points.dtype == torch.float64 and torch.allclose(res.points, X, atol=1e-3)
    assert backproject_pixels(uv32, rig.K, rig.T_cam_from_ct)[1].dtype == torch.float64
    assert lift_pixels(uv32, torch.tensor([300.0]), rig.K, rig.T_cam_from_ct).dtype == torch.float64
    F = fundamental_matrix(rig.K[0], rig.T_cam_from_ct[0], rig.K[1], rig.T_cam_from_ct[1])
    assert epipolar_distance(uv32[0], uv32[1], F).max() < 1e-3
    box = torch.cat([uv32[0] - 1, uv32[0] + 1], -1)
    assert frustum_boxes(
        box, rig.K[0], rig.T_cam_from_ct[0], rig.K[1], rig.T_cam_from_ct[1], 100.0, 500.0
    )[1].all()
