"""Axis-aligned 3D boxes in the CT frame and 2D boxes in the image.

* 3D box: ``(*, N, 6)`` = (xmin, ymin, zmin, xmax, ymax, zmax), CT mm.
* 2D box: ``(*, N, 4)`` = (x1, y1, x2, y2), px, continuous image coordinates (pixel centres
  at +0.5, so a box covering pixel columns 3..5 is x1 = 3, x2 = 6).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_iou

from mvxray.geometry._checks import check_shape
from mvxray.geometry.camera import _EPS, projection_matrix

# Corner order: bit 0 → x, bit 1 → y, bit 2 → z (0 = min, 1 = max).
_CORNER_BITS = torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=torch.bool)


def box3d_corners(boxes: torch.Tensor) -> torch.Tensor:
    """The 8 corners of 3D boxes: ``(*, N, 6)`` → ``(*, N, 8, 3)`` mm.

    Example:
        >>> box3d_corners(torch.tensor([[0.0, 0, 0, 1, 2, 3]]))[0, 7].tolist()
        [1.0, 2.0, 3.0]
    """
    check_shape(boxes, "boxes", (None, 6))
    lo, hi = boxes[..., None, :3], boxes[..., None, 3:]
    bits = _CORNER_BITS.to(boxes.device)
    return torch.where(bits, hi, lo)


def box3d_center_size(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(*, N, 6)`` → centres ``(*, N, 3)`` and sizes ``(*, N, 3)``, mm."""
    check_shape(boxes, "boxes", (None, 6))
    return (boxes[..., :3] + boxes[..., 3:]) / 2, boxes[..., 3:] - boxes[..., :3]


def box3d_from_center_size(center: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Centres ``(*, N, 3)`` and sizes ``(*, N, 3)`` mm → boxes ``(*, N, 6)``."""
    check_shape(center, "center", (None, 3))
    check_shape(size, "size", (None, 3))
    half = size / 2
    return torch.cat([center - half, center + half], dim=-1)


def box3d_volume(boxes: torch.Tensor) -> torch.Tensor:
    """Volumes ``(*, N)`` mm³ (0 for empty boxes)."""
    _, size = box3d_center_size(boxes)
    return size.clamp(min=0).prod(-1)


def box_iou_3d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of axis-aligned 3D boxes ``(N, 6)`` × ``(M, 6)`` → ``(N, M)``.

    Written here because torchvision's IoU is 2D only.

    Example:
        >>> box_iou_3d(torch.tensor([[0.0, 0, 0, 2, 2, 2]]), torch.tensor([[1.0, 0, 0, 3, 2, 2]]))
        tensor([[0.3333]])
    """
    check_shape(a, "a", (None, 6))
    check_shape(b, "b", (None, 6))
    lo = torch.maximum(a[..., :, None, :3], b[..., None, :, :3])
    hi = torch.minimum(a[..., :, None, 3:], b[..., None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = box3d_volume(a)[..., :, None] + box3d_volume(b)[..., None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def box_iou_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of 2D boxes ``(*, N, 4)`` × ``(*, M, 4)`` → ``(*, N, M)`` (torchvision's ``box_iou``).

    Leading dims broadcast. Boxes with non-positive width or height have area 0.

    Example:
        >>> box_iou_2d(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2], [5, 5, 6, 6]]))
        tensor([[0.3333, 0.0000]])
    """
    check_shape(a, "a", (None, 4))
    check_shape(b, "b", (None, 4))
    if a.dim() == 2 and b.dim() == 2:
        return box_iou(a, b)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    N, M = a.shape[-2], b.shape[-2]
    B = math.prod(batch)
    af = a.expand(*batch, N, 4).reshape(B, N, 4)
    bf = b.expand(*batch, M, 4).reshape(B, M, 4)
    if (
        N * M >= 4096
        and B > 0
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    ):
        return _box_iou_inplace(af, bf).reshape(*batch, N, M)
    lo = torch.maximum(af[:, :, None, :2], bf[:, None, :, :2])
    hi = torch.minimum(af[:, :, None, 2:], bf[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_a = (af[..., 2:] - af[..., :2]).clamp(min=0).prod(-1)
    area_b = (bf[..., 2:] - bf[..., :2]).clamp(min=0).prod(-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    return iou.reshape(*batch, N, M)


def _box_iou_inplace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, N, 4)`` × ``(B, M, 4)`` → ``(B, N, M)`` IoU without autograd, one batch at a time.

    Written by hand because the IoU of large box sets is memory bound: broadcasting allocates
    a fresh ``(N, M)`` temporary per step, and torchvision's ``box_iou`` four of them. Here every
    step writes into three reused ``(N, M)`` buffers that stay in cache (measured: 1,000 × 100
    boxes in 10 views, 3.2 ms vs 5.7 ms for torchvision's ``box_iou`` per view).
    """
    B, N, M = a.shape[0], a.shape[1], b.shape[1]
    out = a.new_empty(B, N, M)
    tmp, tmp2 = a.new_empty(N, M), a.new_empty(N, M)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    tiny = torch.finfo(a.dtype).tiny
    for i in range(B):
        ai, bi, inter = a[i, :, None], b[i, None], out[i]
        torch.minimum(ai[..., 2], bi[..., 2], out=inter)
        inter.sub_(torch.maximum(ai[..., 0], bi[..., 0], out=tmp)).clamp_(min=0)  # width
        torch.minimum(ai[..., 3], bi[..., 3], out=tmp)
        tmp.sub_(torch.maximum(ai[..., 1], bi[..., 1], out=tmp2)).clamp_(min=0)  # height
        inter.mul_(tmp)
        torch.add(area_a[i, :, None], area_b[i, None], out=tmp).sub_(inter).clamp_(min=tiny)
        inter.div_(tmp)
    return out


def project_boxes3d(
    boxes_ct: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project 3D boxes to the 2D box enclosing their 8 projected corners, in every view.

    The projection of a convex box is the convex hull of its projected corners, so this
    enclosing box is tight as long as the whole box lies in front of the source.

    Args:
        boxes_ct: ``(*, N, 6)`` CT mm.
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        height: image rows; with ``width``, clip to the image.
        width: image columns.

    Returns:
        boxes2d: ``(*, V, N, 4)`` px (clipped when the size is given).
        visible: ``(*, V, N)`` bool — the whole box is in front of the source and the clipped
            box has positive area.
    """
    check_shape(boxes_ct, "boxes_ct", (None, 6))
    P = projection_matrix(K, T_cam_from_ct)  # (*, V, 3, 4)
    dtype = torch.promote_types(boxes_ct.dtype, P.dtype)
    P, boxes_ct = P.to(dtype), boxes_ct.to(dtype)
    # A corner's homogeneous pixel is P[:, 3] + Σ_a P[:, a]·corner_a, so the 8 corners are sums
    # of one lo-or-hi term per axis: (2, *, V, 3 rows, 3 axes, N), corners first so that the
    # min/max over them reduce contiguous memory (3x faster than projecting corner lists).
    sides = torch.stack([boxes_ct[..., :3], boxes_ct[..., 3:]]).transpose(-1, -2)  # (2, *, 3, N)
    terms = P[..., :3, None] * sides.unsqueeze(-3).unsqueeze(-3)  # (2, *, V, 3, 3, N)
    x = (
        P[..., 3:]
        + terms[:, None, None, ..., 0, :]
        + terms[None, :, None, ..., 1, :]
        + terms[None, None, :, ..., 2, :]
    ).flatten(0, 2)  # (8, *, V, 3, N)
    z = x[..., 2, :]
    z_safe = torch.where(z.abs() < _EPS, torch.full_like(z, _EPS), z)
    uv = x[..., :2, :] / z_safe.unsqueeze(-2)  # (8, *, V, 2, N)
    boxes2d = torch.cat([uv.amin(0), uv.amax(0)], dim=-2).transpose(-1, -2)  # (*, V, N, 4)
    in_front = (z > 1e-6).all(0)
    if height is not None and width is not None:
        limits = torch.tensor(
            [width, height, width, height], dtype=boxes2d.dtype, device=boxes2d.device
        )
        boxes2d = torch.minimum(boxes2d.clamp(min=0), limits)
    area_ok = (boxes2d[..., 2] > boxes2d[..., 0]) & (boxes2d[..., 3] > boxes2d[..., 1])
    return boxes2d, in_front & area_ok
