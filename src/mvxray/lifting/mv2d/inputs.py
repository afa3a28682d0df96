"""Batching MV2D's inputs: images, cameras, padded 2D detections and the 3D region of interest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, backproject_pixels, box_iou_2d, closest_point_of_rays, points_depth
from mvxray.geometry._checks import ShapeError


@dataclass
class MV2DInputs:
    """One batch of B cases with V views each and up to Q detections per case.

    Attributes:
        images: ``(B, V, C, H, W)``.
        K: ``(B, V, 3, 3)`` intrinsics.
        T_cam_from_ct: ``(B, V, 4, 4)`` extrinsics.
        rois: ``(B, Q, 4)`` detection boxes, px (zeros when padded).
        roi_view: ``(B, Q)`` int64 view of each detection.
        roi_score: ``(B, Q)`` 2D scores.
        valid: ``(B, Q)`` bool, a real detection.
        roi_ct: ``(B, 6)`` 3D region of interest (CT mm) that reference points are normalized to.
        near: ``(B, V)`` nearest camera depth of the region of interest per view, mm.
        far: ``(B, V)`` farthest camera depth of the region of interest per view, mm.
    """

    images: torch.Tensor
    K: torch.Tensor
    T_cam_from_ct: torch.Tensor
    rois: torch.Tensor
    roi_view: torch.Tensor
    roi_score: torch.Tensor
    valid: torch.Tensor
    roi_ct: torch.Tensor
    near: torch.Tensor
    far: torch.Tensor

    def to(self, device: torch.device | str) -> MV2DInputs:
        """A copy on ``device``."""
        return MV2DInputs(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def rig_roi(rig: Rig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cube every view sees: centred where the principal axes (nearly) meet.

    The centre is the least-squares point nearest to all principal rays (the isocentre of a
    circular or C-arm rig); the half-size is the smallest half field of view at that point.
    This adapts the region of interest to any rig instead of a hard-coded range.

    Returns:
        roi: ``(6,)`` CT mm; near: ``(V,)`` and far: ``(V,)`` camera depths (mm) bounding it.

    Example:
        >>> roi, near, far = rig_roi(Rig.seed(256))
        >>> [round(x, 3) for x in roi.tolist()], round(float(near[0]), 1), round(float(far[0]), 1)
        ([-200.0, -200.0, -200.0, 200.0, 200.0, 200.0], 100.0, 500.0)
    """
    K, T = rig.K.double().cpu(), rig.T_cam_from_ct.double().cpu()
    pp = K[:, :2, 2][:, None]  # (V, 1, 2): principal points
    o, d = backproject_pixels(pp, K, T)
    if rig.num_views >= 2 and float((d[:, 0] @ d[:, 0].T).abs().triu(1).max()) < 0.9999:
        centre, _ = closest_point_of_rays(o[:, 0], d[:, 0])
    else:  # one view (or parallel axes): the point on the axis at the detector's half distance
        centre = o[0, 0] + d[0, 0] * float(rig.sdd_mm[0]) / 2
    depth = points_depth(centre[None], T)[:, 0]  # (V,)
    half_fov = depth * min(rig.width / 2 / K[:, 0, 0].min(), rig.height / 2 / K[:, 1, 1].min())
    half = float(half_fov.min())
    roi = torch.cat([centre - half, centre + half])
    # the depth range of the inscribed ball: where objects seen by every view can lie
    return roi, (depth - half).clamp(min=1.0), depth + half


def detections_from_truth(sample: MultiViewSample) -> list[Detections2D]:
    """The sample's visible ground-truth 2D boxes as detections of score 1 (oracle training)."""
    out = []
    for v in range(sample.num_views):
        b = sample.boxes2d[v][sample.visible2d[v]].float()
        out.append(Detections2D(b, torch.ones(len(b)), sample.labels[sample.visible2d[v]].long()))
    return out


def collate(
    samples: Sequence[MultiViewSample], detections: Sequence[Sequence[Detections2D]]
) -> MV2DInputs:
    """Stack cases (same V, C, H, W) and pad their detections to the largest count.

    Raises:
        ShapeError: cases of different view counts or image sizes, or detections not given
            per view.
    """
    if not samples or len(samples) != len(detections):
        raise ShapeError(
            f"detections: expected one list per sample ({len(samples)}), found {len(detections)}"
        )
    shape = samples[0].images.shape
    for s, dets in zip(samples, detections):
        if s.images.shape != shape:
            raise ShapeError(
                f"images: a batch needs equal (V, C, H, W), found {tuple(shape)} and {tuple(s.images.shape)}"
            )
        if len(dets) != s.num_views:
            raise ShapeError(
                f"detections: expected one entry per view ({s.num_views}), found {len(dets)}"
            )
    B, Q = len(samples), max(1, max(sum(len(d) for d in dets) for dets in detections))
    rois = torch.zeros(B, Q, 4)
    view = torch.zeros(B, Q, dtype=torch.long)
    score = torch.zeros(B, Q)
    valid = torch.zeros(B, Q, dtype=torch.bool)
    rois_ct, nears, fars = [], [], []
    for b, dets in enumerate(detections):
        boxes = torch.cat([d.boxes.detach().float().cpu() for d in dets])
        n = boxes.shape[0]
        rois[b, :n] = boxes
        view[b, :n] = torch.cat([torch.full((len(d),), v) for v, d in enumerate(dets)]).long()
        score[b, :n] = torch.cat([d.scores.detach().float().cpu() for d in dets])
        valid[b, :n] = True
        roi, near, far = rig_roi(samples[b].rig)
        rois_ct.append(roi)
        nears.append(near)
        fars.append(far)
    return MV2DInputs(
        torch.stack([s.images.float() for s in samples]),
        torch.stack([s.rig.K.float() for s in samples]),
        torch.stack([s.rig.T_cam_from_ct.float() for s in samples]),
        rois,
        view,
        score,
        valid,
        torch.stack(rois_ct).float(),
        torch.stack(nears).float(),
        torch.stack(fars).float(),
    )


def query_targets(
    samples: Sequence[MultiViewSample], inp: MV2DInputs, min_iou: float = 0.3
) -> torch.Tensor:
    """The ground-truth object each query's 2D box belongs to: ``(B, Q)`` int64, −1 for none.

    A query belongs to object m when its box overlaps m's visible ground-truth 2D box in the
    query's view best, with IoU ≥ ``min_iou``.
    """
    B, Q = inp.roi_view.shape
    out = torch.full((B, Q), -1, dtype=torch.long)
    for b, s in enumerate(samples):
        if s.boxes3d.shape[0] == 0:
            continue
        rois, view = inp.rois[b].cpu(), inp.roi_view[b].cpu()
        gt = s.boxes2d.float().cpu()[view]  # (Q, M, 4)
        iou = box_iou_2d(rois[:, None], gt)[:, 0]  # (Q, M)
        iou = torch.where(s.visible2d.cpu()[view], iou, torch.zeros_like(iou))
        best, arg = iou.max(-1)
        ok = (best >= min_iou) & inp.valid[b].cpu()
        out[b, ok] = arg[ok]
    return out.to(inp.rois.device)
