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
from mvxray.geometry.camera import project_points

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
    if N * M >= 4096 and B > 0:
        # torchvision's 2D kernel chain is ~3x faster than the same ops broadcast in 3D
        # (measured: 1,000 x 100 boxes in 10 views, 6 ms vs 21 ms), so loop over the batch.
        return torch.stack([box_iou(x, y) for x, y in zip(af, bf)]).reshape(*batch, N, M)
    lo = torch.maximum(af[:, :, None, :2], bf[:, None, :, :2])
    hi = torch.minimum(af[:, :, None, 2:], bf[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_a = (af[..., 2:] - af[..., :2]).clamp(min=0).prod(-1)
    area_b = (bf[..., 2:] - bf[..., :2]).clamp(min=0).prod(-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    return iou.reshape(*batch, N, M)


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
    corners = box3d_corners(boxes_ct)  # (*, N, 8, 3)
    flat = corners.flatten(-3, -2)  # (*, N*8, 3)
    uv, z = project_points(flat, K, T_cam_from_ct)  # (*, V, N*8, 2)
    uv = uv.unflatten(-2, (-1, 8))
    z = z.unflatten(-1, (-1, 8))
    boxes2d = torch.cat([uv.amin(-2), uv.amax(-2)], dim=-1)
    in_front = (z > 1e-6).all(-1)
    if height is not None and width is not None:
        limits = torch.tensor(
            [width, height, width, height], dtype=boxes2d.dtype, device=boxes2d.device
        )
        boxes2d = torch.minimum(boxes2d.clamp(min=0), limits)
    area_ok = (boxes2d[..., 2] > boxes2d[..., 0]) & (boxes2d[..., 3] > boxes2d[..., 1])
    return boxes2d, in_front & area_ok
