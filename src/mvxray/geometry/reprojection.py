"""Reprojection IoU: 3D boxes or point sets against 2D boxes, and frustum overlap between views.

* :func:`reprojection_iou` — project 3D boxes (CT mm) into every view and compare with the
  2D boxes found there: the score that ties a 3D candidate to 2D detections.
* :func:`frustum_boxes` / :func:`frustum_overlap` — the frustum of a 2D box in view a (its
  rays between two camera depths) seen in view b: the primitive behind MV2D's relevant-feature
  selection and cross-view association.

All functions broadcast leading dims, so every ordered pair of views is one call, e.g.
``frustum_boxes(boxes[:, None], K[:, None], T[:, None], K[None], T[None], ...)`` → ``(V, V, M, 4)``.
"""

from __future__ import annotations

import torch

from mvxray.geometry._checks import check_intrinsics, check_shape, promote
from mvxray.geometry.boxes import box_iou_2d, project_boxes3d
from mvxray.geometry.camera import project_points

# Frustum vertices: near face 0..3, far face 4..7, same corner order on both faces.
_FRUSTUM_EDGES = torch.tensor(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def _clip_to_image(
    boxes2d: torch.Tensor, height: int | None, width: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip ``(*, 4)`` boxes to ``[0, W] × [0, H]`` when a size is given; flag positive area."""
    if height is not None and width is not None:
        limits = boxes2d.new_tensor([width, height, width, height])
        boxes2d = torch.minimum(boxes2d.clamp(min=0), limits)
    ok = (boxes2d[..., 2] > boxes2d[..., 0]) & (boxes2d[..., 3] > boxes2d[..., 1])
    return boxes2d, ok


def project_point_sets(
    points_ct: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
    min_depth_mm: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2D box enclosing each projected point set, in every view.

    Args:
        points_ct: ``(*, N, P, 3)`` N sets of P points, CT mm (e.g. a segmentation's surface).
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        height: image rows; with ``width``, clip the boxes to the image.
        width: image columns.
        min_depth_mm: a set is visible only if all its points are this far in front of the source.

    Returns:
        boxes2d: ``(*, V, N, 4)`` px.
        visible: ``(*, V, N)`` bool — all points in front of the source, positive clipped area.
    """
    check_shape(points_ct, "points_ct", (None, None, 3))
    N, P = points_ct.shape[-3], points_ct.shape[-2]
    if P == 0:
        raise ValueError("points_ct: every point set needs at least one point, found P = 0")
    uv, z = project_points(points_ct.flatten(-3, -2), K, T_cam_from_ct)  # (*, V, N·P, ·)
    uv, z = uv.unflatten(-2, (N, P)), z.unflatten(-1, (N, P))
    boxes2d = torch.cat([uv.amin(-2), uv.amax(-2)], dim=-1)
    boxes2d, ok = _clip_to_image(boxes2d, height, width)
    return boxes2d, ok & (z > min_depth_mm).all(-1)


def reprojection_iou(
    boxes3d: torch.Tensor,
    boxes2d: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """IoU of every 3D box's projection with every 2D box, in every view, in one pass.

    A 3D box projects to the 2D box enclosing its 8 projected corners (clipped to the image
    when its size is given); a box not entirely in front of a view's source scores 0 there.

    Args:
        boxes3d: ``(*, N, 6)`` CT mm, (xmin, ymin, zmin, xmax, ymax, zmax).
        boxes2d: ``(*, V, M, 4)`` px, (x1, y1, x2, y2) per view.
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        height: image rows (clip projections to the image when given with ``width``).
        width: image columns.

    Returns:
        ``(*, V, N, M)`` IoU in ``[0, 1]``.

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=64)
        >>> b3 = torch.tensor([[-10.0, -10, -10, 10, 10, 10]], dtype=torch.float64)
        >>> b2, _ = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, 64, 64)
        >>> reprojection_iou(b3, b2, rig.K, rig.T_cam_from_ct, 64, 64).squeeze().tolist() == [1.0] * 10
        True
    """
    check_shape(boxes3d, "boxes3d", (None, 6))
    check_shape(boxes2d, "boxes2d", (None, None, 4))
    projected, visible = project_boxes3d(boxes3d, K, T_cam_from_ct, height, width)  # (*, V, N, ·)
    # An invisible projection becomes an empty box, so its IoU is 0 without masking (V, N, M).
    projected = projected.masked_fill(~visible.unsqueeze(-1), 0.0)
    return box_iou_2d(projected, boxes2d.to(projected.dtype))  # (*, V, N, M)


def reprojection_iou_points(
    points_ct: torch.Tensor,
    boxes2d: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """As :func:`reprojection_iou` for point sets ``(*, N, P, 3)`` → ``(*, V, N, M)``."""
    check_shape(boxes2d, "boxes2d", (None, None, 4))
    projected, visible = project_point_sets(points_ct, K, T_cam_from_ct, height, width)
    return box_iou_2d(projected, boxes2d.to(projected.dtype)) * visible.unsqueeze(-1)


def frustum_boxes(
    boxes_a: torch.Tensor,
    K_a: torch.Tensor,
    T_a: torch.Tensor,
    K_b: torch.Tensor,
    T_b: torch.Tensor,
    near_mm: float | torch.Tensor,
    far_mm: float | torch.Tensor,
    height: int | None = None,
    width: int | None = None,
    min_depth_mm: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2D box in view b enclosing the frustum of each 2D box of view a.

    The frustum of box ``(x1, y1, x2, y2)`` in view a is the truncated pyramid of its rays
    between camera-a depths ``near_mm`` and ``far_mm``. It is clipped to the half-space in
    front of b's source (camera-b z ≥ ``min_depth_mm``) — a frustum crossing b's source plane
    keeps only its visible part — and the clipped polyhedron's vertices (the corners in front
    plus the edge / plane intersections) are projected into b. The enclosing box of those
    projections is the exact enclosing box of the frustum's image in b (a convex body projects
    to the convex hull of its vertices), then clipped to the image when its size is given.

    Args:
        boxes_a: ``(*, M, 4)`` boxes in view a, px.
        K_a: ``(*, 3, 3)`` intrinsics of view a.
        T_a: ``(*, 4, 4)`` ``T_cam_from_ct`` of view a.
        K_b: ``(*, 3, 3)`` intrinsics of view b.
        T_b: ``(*, 4, 4)`` ``T_cam_from_ct`` of view b.
        near_mm: camera-a depth where the frustum starts, mm (scalar or ``(*, M)``).
        far_mm: camera-a depth where it ends, mm (scalar or ``(*, M)``), > ``near_mm``.
        height: rows of image b; with ``width``, clip to it.
        width: columns of image b.
        min_depth_mm: clipping plane in front of b's source, mm.

    Returns:
        boxes_b: ``(*, M, 4)`` px in view b (zeros where nothing is visible).
        valid: ``(*, M)`` bool — some of the frustum is in front of b and the box has area.

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=64)
        >>> box = torch.tensor([[30.0, 30.0, 34.0, 34.0]], dtype=torch.float64)
        >>> fb, ok = frustum_boxes(box, rig.K[0], rig.T_cam_from_ct[0], rig.K[0], rig.T_cam_from_ct[0], 200.0, 400.0)
        >>> torch.allclose(fb, box), ok.tolist()  # seen from its own view, a frustum is the box
        (True, [True])
    """
    check_shape(boxes_a, "boxes_a", (None, 4))
    check_intrinsics(K_a, "K_a")
    check_intrinsics(K_b, "K_b")
    check_shape(T_a, "T_a", (4, 4))
    check_shape(T_b, "T_b", (4, 4))
    boxes_a, K_a, T_a, K_b, T_b = promote(boxes_a, K_a, T_a, K_b, T_b)
    near = torch.as_tensor(near_mm, dtype=boxes_a.dtype, device=boxes_a.device)
    far = torch.as_tensor(far_mm, dtype=boxes_a.dtype, device=boxes_a.device)
    if bool((near < 0).any()) or bool((far <= near).any()):
        raise ValueError("near_mm, far_mm: expected 0 <= near < far (camera-a depth, mm)")
    x1, y1, x2, y2 = boxes_a.unbind(-1)
    quad = torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], dim=-1).unflatten(-1, (4, 2))
    rays = torch.cat([quad, torch.ones_like(quad[..., :1])], -1) @ torch.linalg.inv(K_a).transpose(
        -1, -2
    ).unsqueeze(-3)  # (*, M, 4, 3) camera-a rays with z = 1
    depth = torch.stack([near.expand_as(x1), far.expand_as(x1)], dim=-1)  # (*, M, 2)
    pts_a = (depth[..., :, None, None] * rays.unsqueeze(-3)).flatten(-3, -2)  # (*, M, 8, 3)
    # camera a → camera b: T_b · T_a⁻¹ (rigid, no general inverse needed).
    R_a, t_a = T_a[..., :3, :3], T_a[..., :3, 3]
    R_b, t_b = T_b[..., :3, :3], T_b[..., :3, 3]
    R_ba = R_b @ R_a.transpose(-1, -2)
    t_ba = t_b - (R_ba @ t_a.unsqueeze(-1)).squeeze(-1)
    pts_b = pts_a @ R_ba.unsqueeze(-3).transpose(-1, -2) + t_ba[..., None, None, :]
    # Clip the convex frustum against camera-b z >= min_depth: keep the corners in front and
    # add where each of the 12 edges crosses the plane.
    z = pts_b[..., 2]
    p0, p1 = pts_b[..., _FRUSTUM_EDGES[:, 0], :], pts_b[..., _FRUSTUM_EDGES[:, 1], :]
    z0, z1 = z[..., _FRUSTUM_EDGES[:, 0]], z[..., _FRUSTUM_EDGES[:, 1]]
    crosses = (z0 - min_depth_mm) * (z1 - min_depth_mm) < 0
    dz = torch.where(crosses, z1 - z0, torch.ones_like(z0))
    s = torch.where(crosses, (min_depth_mm - z0) / dz, torch.zeros_like(z0))
    cut = p0 + s.unsqueeze(-1) * (p1 - p0)
    cand = torch.cat([pts_b, cut], dim=-2)  # (*, M, 20, 3)
    keep = torch.cat([z >= min_depth_mm, crosses], dim=-1)
    zc = torch.where(keep, cand[..., 2], torch.ones_like(cand[..., 2])).clamp(min=min_depth_mm)
    xy = cand[..., :2] / zc.unsqueeze(-1)
    uv = xy @ K_b[..., None, :2, :2].transpose(-1, -2) + K_b[..., None, None, :2, 2]
    big = torch.finfo(uv.dtype).max
    lo = torch.where(keep.unsqueeze(-1), uv, torch.full_like(uv, big)).amin(-2)
    hi = torch.where(keep.unsqueeze(-1), uv, torch.full_like(uv, -big)).amax(-2)
    any_kept = keep.any(-1)
    boxes_b = torch.where(any_kept.unsqueeze(-1), torch.cat([lo, hi], -1), 0.0)
    boxes_b, ok = _clip_to_image(boxes_b, height, width)
    return boxes_b, ok & any_kept


def frustum_overlap(
    boxes_a: torch.Tensor,
    boxes_b: torch.Tensor,
    K_a: torch.Tensor,
    T_a: torch.Tensor,
    K_b: torch.Tensor,
    T_b: torch.Tensor,
    near_mm: float | torch.Tensor,
    far_mm: float | torch.Tensor,
    height: int | None = None,
    width: int | None = None,
    metric: str = "iob",
) -> torch.Tensor:
    """Overlap of each view-a box's frustum (seen in b, :func:`frustum_boxes`) with b's boxes.

    A frustum seen from another view is a long band along the epipolar line, so its IoU with
    a small box is small even when the box lies inside it; ``metric="iob"`` (intersection over
    the area of b's box, 1 when b's box lies inside the band) is the association score,
    ``"iou"`` the symmetric one.

    Args:
        boxes_a: ``(*, Ma, 4)`` px in view a.
        boxes_b: ``(*, Mb, 4)`` px in view b.
        K_a: ``(*, 3, 3)``.
        T_a: ``(*, 4, 4)``.
        K_b: ``(*, 3, 3)``.
        T_b: ``(*, 4, 4)``.
        near_mm: camera-a depth range start, mm.
        far_mm: camera-a depth range end, mm.
        height: rows of image b (clip when given with ``width``).
        width: columns of image b.
        metric: ``"iob"`` or ``"iou"``.

    Returns:
        ``(*, Ma, Mb)`` in ``[0, 1]`` (0 where the frustum is invisible in b).
    """
    if metric not in ("iob", "iou"):
        raise ValueError(f"metric: expected 'iob' or 'iou', found {metric!r}")
    check_shape(boxes_b, "boxes_b", (None, 4))
    fb, ok = frustum_boxes(boxes_a, K_a, T_a, K_b, T_b, near_mm, far_mm, height, width)
    boxes_b = boxes_b.to(fb.dtype)
    if metric == "iou":
        return box_iou_2d(fb, boxes_b) * ok.unsqueeze(-1)
    lo = torch.maximum(fb[..., :, None, :2], boxes_b[..., None, :, :2])
    hi = torch.minimum(fb[..., :, None, 2:], boxes_b[..., None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_b = (boxes_b[..., 2:] - boxes_b[..., :2]).clamp(min=0).prod(-1)
    return inter / area_b.unsqueeze(-2).clamp(min=torch.finfo(fb.dtype).tiny) * ok.unsqueeze(-1)
