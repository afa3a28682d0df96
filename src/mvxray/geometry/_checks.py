"""Input validation shared by every geometry function.

One helper per kind of check so that every error names the argument, what was expected
and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ShapeError(ValueError):
    """A tensor argument has the wrong shape.

    The message names the argument, the expected shape pattern and the shape found.
    """


def check_shape(x: torch.Tensor, name: str, trailing: Sequence[int | None]) -> None:
    """Check that ``x`` ends with the dimensions ``trailing``.

    Args:
        x: the tensor to check.
        name: the argument's name, used in the error message.
        trailing: expected sizes of the last ``len(trailing)`` dimensions; ``None`` accepts any size.

    Raises:
        TypeError: if ``x`` is not a tensor.
        ShapeError: if ``x`` has too few dimensions or a trailing size differs.

    Example:
        >>> check_shape(torch.zeros(2, 4, 4), "T_cam_from_ct", (4, 4))
        >>> check_shape(torch.zeros(3), "points", (None, 3))
        Traceback (most recent call last):
        ...
        mvxray.geometry._checks.ShapeError: points: expected shape (*, N, 3), found (3,)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    want = tuple(trailing)
    if x.dim() < len(want) or any(
        w is not None and s != w for s, w in zip(x.shape[x.dim() - len(want) :], want)
    ):
        pattern = ", ".join("N" if w is None else str(w) for w in want)
        raise ShapeError(f"{name}: expected shape (*, {pattern}), found {tuple(x.shape)}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Refuse tensors holding NaN or Inf.

    Raises:
        ValueError: naming the argument and how many entries are not finite.
    """
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name}: {int(bad.sum())} of {x.numel()} entries are NaN or Inf")


def check_intrinsics(K: torch.Tensor, name: str = "K") -> None:
    """Check a batch of pinhole intrinsics ``(*, 3, 3)``: finite, last row (0, 0, 1), invertible.

    Raises:
        ShapeError: wrong shape.
        ValueError: non-finite entries, a last row other than (0, 0, 1), or a zero focal length.
    """
    check_shape(K, name, (3, 3))
    check_finite(K, name)
    last = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
    if not torch.allclose(K[..., 2, :], last.expand_as(K[..., 2, :]), atol=1e-6):
        raise ValueError(f"{name}: the last row of an intrinsic matrix must be (0, 0, 1)")
    if bool((K[..., 0, 0].abs() < 1e-12).any() | (K[..., 1, 1].abs() < 1e-12).any()):
        raise ValueError(f"{name}: singular intrinsics (a focal length fx or fy is zero)")


def check_rigid(T: torch.Tensor, name: str, atol: float = 1e-4) -> None:
    """Check a batch of rigid transforms ``(*, 4, 4)``: rotation orthonormal with det +1.

    Raises:
        ShapeError: wrong shape.
        ValueError: non-finite entries, a last row other than (0, 0, 0, 1), or a non-rigid
            rotation block (scale, shear or reflection).
    """
    check_shape(T, name, (4, 4))
    check_finite(T, name)
    last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    if not torch.allclose(T[..., 3, :], last.expand_as(T[..., 3, :]), atol=1e-6):
        raise ValueError(f"{name}: the last row of a rigid transform must be (0, 0, 0, 1)")
    R = T.detach()[..., :3, :3]  # a check, not part of the graph
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    ortho = (R @ R.transpose(-1, -2) - eye).abs().amax() if R.numel() else torch.tensor(0.0)
    if float(ortho) > atol or bool((torch.linalg.det(R) < 0).any()):
        raise ValueError(
            f"{name}: not a rigid transform (rotation block is not orthonormal with det +1; "
            f"max |R R^T - I| = {float(ortho):.2e})"
        )


def promote(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast tensors to their common floating dtype (e.g. float32 detections with a float64 rig).

    Integer-only inputs become the default float dtype.

    Example:
        >>> [t.dtype for t in promote(torch.zeros(2), torch.zeros(2, dtype=torch.float64))]
        [torch.float64, torch.float64]
    """
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return tuple(x.to(dtype) for x in xs)
