"""One-to-one assignment of predicted to ground-truth 3D boxes (Hungarian, as in DETR / MV2D)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from mvxray.geometry import box3d_center_size
from mvxray.geometry._checks import ShapeError, check_shape


def box_regression_cost(
    centre: torch.Tensor,
    size: torch.Tensor,
    gt_boxes: torch.Tensor,
    offset_scale_mm: float,
    w_centre: float = 1.0,
    w_size: float = 1.0,
) -> torch.Tensor:
    """Pairwise L1 regression cost in the head's normalized units.

    Centres are compared in units of ``offset_scale_mm``, sizes as log-ratios, the same units
    the L1 loss uses, so matching and training agree.

    Args:
        centre: ``(Q, 3)`` predicted centres, CT mm.
        size: ``(Q, 3)`` predicted sizes, mm.
        gt_boxes: ``(M, 6)`` ground-truth boxes, CT mm.
        offset_scale_mm: centre unit, mm.
        w_centre: weight of the centre term.
        w_size: weight of the size term.

    Returns:
        ``(Q, M)`` cost.

    Example:
        >>> c = box_regression_cost(torch.zeros(1, 3), torch.ones(1, 3),
        ...                         torch.tensor([[1.5, -0.5, -0.5, 2.5, 0.5, 0.5]]), 1.0)
        >>> round(float(c), 4)
        2.0
    """
    check_shape(centre, "centre", (None, 3))
    check_shape(size, "size", (None, 3))
    check_shape(gt_boxes, "gt_boxes", (None, 6))
    gc, gs = box3d_center_size(gt_boxes)
    d_c = torch.cdist(centre / offset_scale_mm, gc / offset_scale_mm, p=1)
    d_s = torch.cdist(size.clamp(min=1e-6).log(), gs.clamp(min=1e-6).log(), p=1)
    return w_centre * d_c + w_size * d_s


def focal_class_cost(
    logits: torch.Tensor, gt_labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Classification cost of assigning each query to each ground truth (DETR3D's focal cost).

    Args:
        logits: ``(Q, C)`` sigmoid logits.
        gt_labels: ``(M,)`` int64 labels in ``[0, C)``.

    Returns:
        ``(Q, M)`` cost (lower for confident correct classes).
    """
    p = logits.sigmoid()
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p).pow(gamma) * -(p + 1e-8).log()
    return (pos - neg)[:, gt_labels]


def hungarian_match(
    logits: torch.Tensor,
    centre: torch.Tensor,
    size: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    offset_scale_mm: float,
    w_cls: float = 1.0,
    w_centre: float = 1.0,
    w_size: float = 1.0,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of queries to ground-truth boxes.

    Uses :func:`scipy.optimize.linear_sum_assignment` on the cost
    ``w_cls·focal + L1(centre, log size)``.

    Args:
        logits: ``(Q, C)``.
        centre: ``(Q, 3)`` CT mm.
        size: ``(Q, 3)`` mm.
        gt_boxes: ``(M, 6)`` CT mm.
        gt_labels: ``(M,)``.
        offset_scale_mm: centre unit of the regression cost, mm.
        w_cls: weight of the classification cost.
        w_centre: weight of the centre cost.
        w_size: weight of the size cost.
        valid: optional ``(Q,)`` bool — padded queries (False) are never assigned.

    Returns:
        ``(pred_idx, gt_idx)``: two int64 tensors of length ``min(#valid, M)``.

    Raises:
        ShapeError: inconsistent shapes.

    Example:
        >>> gt = torch.tensor([[9.0, 9, 9, 11, 11, 11], [-1.0, -1, -1, 1, 1, 1]])
        >>> c = torch.tensor([[0.0, 0, 0], [10.0, 10, 10], [50.0, 0, 0]])
        >>> q, g = hungarian_match(torch.zeros(3, 1), c, torch.full((3, 3), 2.0), gt,
        ...                        torch.zeros(2, dtype=torch.long), 10.0)
        >>> sorted(zip(q.tolist(), g.tolist()))
        [(0, 1), (1, 0)]
    """
    Q, M = centre.shape[0], gt_boxes.shape[0]
    if logits.shape[0] != Q or size.shape[0] != Q:
        raise ShapeError(
            f"logits, centre, size: expected the same Q, found {logits.shape[0]}, {Q}, {size.shape[0]}"
        )
    if gt_labels.shape != (M,):
        raise ShapeError(f"gt_labels: expected shape ({M},), found {tuple(gt_labels.shape)}")
    empty = torch.zeros(0, dtype=torch.long, device=centre.device)
    if Q == 0 or M == 0:
        return empty, empty
    with torch.no_grad():
        cost = w_cls * focal_class_cost(logits, gt_labels) + box_regression_cost(
            centre, size, gt_boxes, offset_scale_mm, w_centre, w_size
        )
        rows = torch.arange(Q, device=centre.device)
        if valid is not None:
            rows = rows[valid]
            cost = cost[valid]
        r, c = linear_sum_assignment(cost.double().cpu().numpy())
    dev = centre.device
    return rows[torch.as_tensor(r, dtype=torch.long, device=dev)], torch.as_tensor(
        c, dtype=torch.long, device=dev
    )
