"""2D detection metrics: AP@0.5 and FROC recall at fixed false positives per image.

Matching is the VOC / COCO greedy rule: within one image, detections are taken in decreasing
score order; each is a true positive if its best-IoU ground-truth box (IoU ≥ ``iou``) is not
yet matched, else a false positive. Over a set of images all detections are then ranked by
score: AP is the area under the precision envelope (all-point interpolation), and the FROC
point at ``f`` false positives per image is the highest recall reached while the false
positives per image stay ≤ ``f``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from mvxray.geometry._checks import ShapeError

#: False positives per image at which recall is reported.
FPPI_POINTS = (0.5, 1.0, 2.0, 4.0)


def match_image(
    boxes: torch.Tensor, scores: torch.Tensor, gt: torch.Tensor, iou: float = 0.5
) -> np.ndarray:
    """Greedy matching in one image → ``(N,)`` bool, True for true positives.

    Args:
        boxes: ``(N, 4)`` detections, px (x1, y1, x2, y2).
        scores: ``(N,)`` scores.
        gt: ``(M, 4)`` ground-truth boxes, px.
        iou: minimum IoU of a match.

    Example:
        >>> gt = torch.tensor([[0.0, 0, 10, 10]])
        >>> det = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [50.0, 50, 60, 60]])
        >>> match_image(det, torch.tensor([0.5, 0.9, 0.8]), gt).tolist()  # 2nd box comes first
        [False, True, False]
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ShapeError(f"boxes: expected shape (N, 4), found {tuple(boxes.shape)}")
    if gt.dim() != 2 or gt.shape[-1] != 4:
        raise ShapeError(f"gt: expected shape (M, 4), found {tuple(gt.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ShapeError(f"scores: expected shape ({boxes.shape[0]},), found {tuple(scores.shape)}")
    tp = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(gt) == 0:
        return tp
    ious = box_iou(boxes.detach().cpu().double(), gt.detach().cpu().double()).numpy()
    taken = np.zeros(len(gt), dtype=bool)
    for i in np.argsort(-scores.detach().cpu().numpy(), kind="stable"):
        cand = np.where(taken, -1.0, ious[i])
        j = int(cand.argmax())
        if cand[j] >= iou:
            tp[i], taken[j] = True, True
    return tp


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP from a ranked list's cumulative recall / precision.

    Example:
        >>> average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
        0.8333333333333333
    """
    r = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum((r[1:] - r[:-1]) * p[1:]))


def froc_curve(
    scores: np.ndarray, tp: np.ndarray, n_gt: int, n_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (false positives per image, recall, precision) down the ranked detections."""
    order = np.argsort(-scores, kind="stable")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / max(n_gt, 1)
    precision = tps / np.maximum(tps + fps, 1)
    return fps / max(n_images, 1), recall, precision


def summarize(
    scores: np.ndarray,
    tp: np.ndarray,
    n_gt: int,
    n_images: int,
    points: Sequence[float] = FPPI_POINTS,
) -> dict[str, float]:
    """AP@IoU and recall at each FPPI point for pooled detections of ``n_images`` images."""
    fppi, recall, precision = froc_curve(scores, tp, n_gt, n_images)
    out = {
        "ap50": average_precision(recall, precision) if n_gt else float("nan"),
        "n_gt": float(n_gt),
        "n_images": float(n_images),
        "n_detections": float(len(scores)),
        "recall": float(recall[-1]) if len(recall) and n_gt else 0.0,
    }
    for f in points:
        ok = fppi <= f + 1e-12
        out[f"recall@{f:g}fp"] = float(recall[ok].max()) if n_gt and ok.any() else 0.0
    return out


@dataclass
class DetectionEvaluator:
    """Accumulate per-image matches, then report overall and per-view metrics.

    Example:
        >>> ev = DetectionEvaluator()
        >>> ev.add(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([[0.0, 0, 10, 10]]))
        >>> ev.add(torch.zeros(0, 4), torch.zeros(0), torch.tensor([[5.0, 5, 9, 9]]))
        >>> m = ev.compute()
        >>> m["recall"], m["recall@1fp"], m["ap50"]
        (0.5, 0.5, 0.5)
    """

    iou: float = 0.5
    points: tuple[float, ...] = FPPI_POINTS
    _rows: dict[Any, list[tuple[np.ndarray, np.ndarray, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def add(
        self, boxes: torch.Tensor, scores: torch.Tensor, gt: torch.Tensor, view: Any = 0
    ) -> None:
        """Add one image: detections ``(N, 4)`` + ``(N,)`` and visible ground truth ``(M, 4)`` px."""
        tp = match_image(boxes, scores, gt, self.iou)
        self._rows[view].append((scores.detach().cpu().double().numpy(), tp, len(gt)))

    def add_sample(
        self, detections: Sequence[Any], boxes2d: torch.Tensor, visible2d: torch.Tensor
    ) -> None:
        """Add all views of one case: ``detections[v]`` (:class:`Detections2D`), boxes ``(V, M, 4)``."""
        if len(detections) != boxes2d.shape[0]:
            raise ShapeError(
                f"detections: expected one entry per view ({boxes2d.shape[0]}), found {len(detections)}"
            )
        for v, det in enumerate(detections):
            self.add(det.boxes, det.scores, boxes2d[v][visible2d[v].bool()], view=v)

    def _pool(self, rows: list[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, float]:
        if not rows:
            return summarize(np.zeros(0), np.zeros(0, bool), 0, 0, self.points)
        scores = np.concatenate([r[0] for r in rows])
        tp = np.concatenate([r[1] for r in rows])
        return summarize(scores, tp, sum(r[2] for r in rows), len(rows), self.points)

    def compute(self, per_view: bool = False) -> dict[str, Any]:
        """Overall metrics (keys ``ap50``, ``recall``, ``recall@{f}fp``, counts); with
        ``per_view`` also ``{"per_view": {view: metrics}}``."""
        out: dict[str, Any] = self._pool([r for rows in self._rows.values() for r in rows])
        if per_view:
            out["per_view"] = {v: self._pool(rows) for v, rows in sorted(self._rows.items())}
        return out
