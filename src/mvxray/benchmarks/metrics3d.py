"""3D detection metrics: AP (centre distance, 3D IoU), mATE / mASE, FROC / CPM, per-nodule errors.

* **AP** (nuScenes-style matching): per case, predictions in decreasing score take the closest
  unmatched ground truth within a centre distance (mm) — or the unmatched ground truth of
  highest 3D IoU at or above an IoU threshold. AP is the area under the precision–recall curve
  pooled over cases, with COCO's 101-point interpolation of the monotone precision envelope.
* **mATE** (mm): mean centre distance of the true positives matched at ``tp_dist_mm``.
  **mASE**: mean ``1 − IoU`` of their boxes after aligning the centres (size error only).
* **FROC** (LUNA16): a prediction hits a nodule when its centre lies within the nodule's
  radius (half the mean extent of its box) of the nodule centre. For each nodule only its best
  hit counts (as a true positive); further hits are ignored; predictions hitting no nodule are
  false positives. Sensitivity at ``r`` false positives per case is that of the lowest score
  threshold giving at most ``r`` FP per case (a reachable operating point, no interpolation);
  **CPM** is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP per case.
* **Per-nodule table**: for each ground-truth box, its nearest prediction's centre error, size
  error, IoU, score and whether it is hit.

Predictions are anything with ``boxes3d (N, 6)`` and ``scores (N,)`` (e.g.
:class:`mvxray.lifting.base.Lifted3D`) or ``(boxes3d, scores)`` tuples; ground truth is
``(M, 6)`` tensors, all in CT mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mvxray.geometry import box3d_center_size, box_iou_3d
from mvxray.geometry._checks import check_shape

#: FP-per-case rates of the LUNA16 FROC / CPM.
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _pred(p: Any) -> tuple[torch.Tensor, torch.Tensor]:
    boxes, scores = (p.boxes3d, p.scores) if hasattr(p, "boxes3d") else p
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 6).cpu()
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).cpu()
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"prediction: {boxes.shape[0]} boxes but {scores.shape[0]} scores (must be equal)"
        )
    return boxes, scores


def _gt(g: Any) -> torch.Tensor:
    g = torch.as_tensor(g, dtype=torch.float64).cpu()
    check_shape(g, "ground truth boxes", (None, 6))
    return g.reshape(-1, 6)


def _centre_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(box3d_center_size(a)[0], box3d_center_size(b)[0])


def froc_hits(centres: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` LUNA16 hits: predicted centre ``n`` (CT mm) lies within the radius of true box
    ``m`` (half its mean extent).

    Example:
        >>> froc_hits(torch.tensor([[0.0, 0, 0], [3.0, 0, 0]]), torch.tensor([[-2.0, -2, -2, 2, 2, 2]])).tolist()
        [[True], [False]]
    """
    c, size = box3d_center_size(gt.double())
    return torch.cdist(centres.double(), c) <= size.mean(-1)[None] / 2


def match_greedy(
    pred_boxes: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    criterion: str = "dist",
    threshold: float = 2.0,
) -> torch.Tensor:
    """nuScenes-style greedy matching of one case's predictions to its ground truth.

    Args:
        pred_boxes: ``(N, 6)`` CT mm.
        pred_scores: ``(N,)``.
        gt_boxes: ``(M, 6)`` CT mm.
        criterion: ``"dist"`` (centre distance ≤ threshold mm, closest first) or ``"iou"``
            (3D IoU ≥ threshold, highest first).
        threshold: mm for ``"dist"``, IoU for ``"iou"``.

    Returns:
        ``(N,)`` int64: the matched ground-truth index per prediction, −1 if unmatched.

    Example:
        >>> gt = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
        >>> p = torch.tensor([[0.5, 0, 0, 2.5, 2, 2], [0.0, 0, 0, 2, 2, 2]])
        >>> match_greedy(p, torch.tensor([0.9, 0.5]), gt, "dist", 1.0).tolist()
        [0, -1]
    """
    if criterion not in ("dist", "iou"):
        raise ValueError(f"criterion: expected 'dist' or 'iou', found {criterion!r}")
    N, M = pred_boxes.shape[0], gt_boxes.shape[0]
    out = torch.full((N,), -1, dtype=torch.long)
    if N == 0 or M == 0:
        return out
    if criterion == "dist":
        cost = _centre_dist(pred_boxes, gt_boxes)
        ok = cost <= threshold
    else:
        cost = -box_iou_3d(pred_boxes, gt_boxes)
        ok = -cost >= threshold
    taken = torch.zeros(M, dtype=torch.bool)
    for i in torch.argsort(pred_scores, descending=True, stable=True).tolist():
        c = torch.where(ok[i] & ~taken, cost[i], torch.full_like(cost[i], math.inf))
        j = int(torch.argmin(c))
        if math.isfinite(float(c[j])):
            out[i] = j
            taken[j] = True
    return out


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """Area under the precision–recall curve, COCO 101-point interpolation.

    Args:
        scores: ``(N,)`` prediction scores pooled over cases.
        tp: ``(N,)`` bool, the prediction is a true positive.
        num_gt: number of ground-truth objects (NaN is returned when 0).

    Example:
        >>> round(average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2), 4)
        0.835
    """
    if num_gt == 0:
        return math.nan
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    t = np.asarray(tp, dtype=bool)[order]
    ctp, cfp = np.cumsum(t), np.cumsum(~t)
    recall = ctp / num_gt
    precision = ctp / np.maximum(ctp + cfp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    levels = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, levels, side="left")
    prec = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)
    return float(prec.mean())


def _aligned_size_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    sa, sb = box3d_center_size(a)[1].clamp(min=0), box3d_center_size(b)[1].clamp(min=0)
    inter = torch.minimum(sa, sb).prod(-1)
    return inter / (sa.prod(-1) + sb.prod(-1) - inter).clamp(min=1e-12)


def froc(
    predictions: Sequence[Any], ground_truth: Sequence[Any], rates: Sequence[float] = FROC_RATES
) -> dict[str, Any]:
    """LUNA16 FROC: sensitivity at the given false positives per case, and the CPM.

    Args:
        predictions: one per case (``boxes3d``, ``scores``), CT mm.
        ground_truth: one ``(M, 6)`` tensor per case, CT mm.
        rates: false positives per case.

    Returns:
        ``{"sensitivity": [..] (one per rate), "rates": [..], "cpm": float, "curve_fps": [..],
        "curve_sens": [..]}`` (NaN sensitivities when there is no nodule).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"predictions and ground_truth: expected one entry per case each, found "
            f"{len(predictions)} and {len(ground_truth)}"
        )
    entries: list[tuple[float, bool]] = []  # (score, is_tp) — ignored hits are dropped
    n_nodules = 0
    for p, g in zip(predictions, ground_truth):
        boxes, scores = _pred(p)
        gt = _gt(g)
        n_nodules += gt.shape[0]
        if boxes.shape[0] == 0:
            continue
        if gt.shape[0] == 0:
            entries += [(float(s), False) for s in scores]
            continue
        hits = froc_hits(box3d_center_size(boxes)[0], gt)  # (N, M)
        for m in range(gt.shape[0]):
            if bool(hits[:, m].any()):
                entries.append((float(scores[hits[:, m]].max()), True))
        entries += [(float(s), False) for s in scores[~hits.any(1)]]
    n_cases = max(len(ground_truth), 1)
    if entries:
        ent = sorted(entries, key=lambda e: -e[0])
        sc = np.array([e[0] for e in ent])
        t = np.array([e[1] for e in ent])
        # operating points only where the score changes (ties enter together)
        last = np.r_[sc[1:] != sc[:-1], True]
        fps = np.cumsum(~t)[last] / n_cases
        sens = np.cumsum(t)[last] / max(n_nodules, 1)
    else:
        fps, sens = np.zeros(0), np.zeros(0)
    fps = np.r_[0.0, fps]
    sens = np.r_[0.0, sens]
    out_sens = []
    for r in rates:
        ok = fps <= r + 1e-12
        out_sens.append(float(sens[ok].max()) if n_nodules else math.nan)
    return {
        "rates": list(rates),
        "sensitivity": out_sens,
        "cpm": float(np.mean(out_sens)) if n_nodules else math.nan,
        "curve_fps": fps.tolist(),
        "curve_sens": sens.tolist(),
    }


def per_nodule_table(
    predictions: Sequence[Any],
    ground_truth: Sequence[Any],
    case_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per ground-truth box with the error of its nearest prediction.

    Returns:
        Rows with ``case_id``, ``index``, ``diameter_mm`` (mean extent), ``hit`` (LUNA16 rule,
        any score), ``score`` (of the nearest prediction), ``centre_error_mm``,
        ``size_error_mm`` (3 signed values, predicted − true), ``iou``; NaN / None when the
        case has no prediction.
    """
    ids = list(case_ids) if case_ids is not None else [str(i) for i in range(len(ground_truth))]
    rows: list[dict[str, Any]] = []
    for cid, p, g in zip(ids, predictions, ground_truth):
        boxes, scores = _pred(p)
        gt = _gt(g)
        gs = box3d_center_size(gt)[1]
        d = _centre_dist(gt, boxes) if boxes.shape[0] else None
        iou = box_iou_3d(gt, boxes) if boxes.shape[0] else None
        for m in range(gt.shape[0]):
            row: dict[str, Any] = {
                "case_id": cid,
                "index": m,
                "diameter_mm": float(gs[m].mean()),
                "hit": False,
                "score": math.nan,
                "centre_error_mm": math.nan,
                "size_error_mm": [math.nan] * 3,
                "iou": math.nan,
            }
            if d is not None and iou is not None:
                k = int(torch.argmin(d[m]))
                row.update(
                    hit=bool((d[m] <= gs[m].mean() / 2).any()),
                    score=float(scores[k]),
                    centre_error_mm=float(d[m, k]),
                    size_error_mm=(box3d_center_size(boxes[k : k + 1])[1][0] - gs[m]).tolist(),
                    iou=float(iou[m, k]),
                )
            rows.append(row)
    return rows


def evaluate_3d(
    predictions: Sequence[Any],
    ground_truth: Sequence[Any],
    dist_thresholds_mm: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    iou_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    tp_dist_mm: float = 4.0,
    rates: Sequence[float] = FROC_RATES,
) -> dict[str, Any]:
    """All 3D metrics of a set of cases.

    Args:
        predictions: one per case, ``boxes3d (N, 6)`` + ``scores (N,)``, CT mm.
        ground_truth: one ``(M, 6)`` tensor per case, CT mm.
        dist_thresholds_mm: centre-distance thresholds of the distance APs, mm.
        iou_thresholds: 3D IoU thresholds of the IoU APs.
        tp_dist_mm: matching distance of the true positives used by mATE / mASE, mm.
        rates: FROC false-positive rates per case.

    Returns:
        A flat dict: ``AP_dist@{t}mm``, ``mAP_dist``, ``AP_iou@{t}``, ``mATE_mm``, ``mASE``,
        ``sens@{r}FP``, ``CPM``, ``median_centre_error_mm`` (nearest prediction per nodule),
        ``n_cases``, ``n_gt``, ``n_pred``.

    Example:
        >>> gt = [torch.tensor([[0.0, 0, 0, 4, 4, 4]])]
        >>> m = evaluate_3d([(torch.tensor([[0.5, 0, 0, 4.5, 4, 4]]), torch.tensor([0.9]))], gt)
        >>> m["AP_dist@1mm"], m["mATE_mm"], m["CPM"]
        (1.0, 0.5, 1.0)
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"predictions and ground_truth: expected one entry per case each, found "
            f"{len(predictions)} and {len(ground_truth)}"
        )
    preds = [_pred(p) for p in predictions]
    gts = [_gt(g) for g in ground_truth]
    n_gt = sum(g.shape[0] for g in gts)
    all_scores = np.concatenate([s.numpy() for _, s in preds]) if preds else np.zeros(0)
    out: dict[str, Any] = {}

    def ap(criterion: str, thr: float) -> float:
        tp = [(match_greedy(b, s, g, criterion, thr) >= 0).numpy() for (b, s), g in zip(preds, gts)]
        return average_precision(all_scores, np.concatenate(tp) if tp else np.zeros(0, bool), n_gt)

    for t in dist_thresholds_mm:
        out[f"AP_dist@{t:g}mm"] = ap("dist", t)
    out["mAP_dist"] = float(np.mean([out[f"AP_dist@{t:g}mm"] for t in dist_thresholds_mm]))
    for t in iou_thresholds:
        out[f"AP_iou@{t:g}"] = ap("iou", t)
    ate, ase = [], []
    for (b, s), g in zip(preds, gts):
        mt = match_greedy(b, s, g, "dist", tp_dist_mm)
        ok = mt >= 0
        if bool(ok.any()):
            ate.append(_centre_dist(b[ok], g[mt[ok]]).diagonal())
            ase.append(1 - _aligned_size_iou(b[ok], g[mt[ok]]))
    out["mATE_mm"] = float(torch.cat(ate).mean()) if ate else math.nan
    out["mASE"] = float(torch.cat(ase).mean()) if ase else math.nan
    fr = froc(preds, gts, rates)
    for r, s in zip(rates, fr["sensitivity"]):
        out[f"sens@{r:g}FP"] = s
    out["CPM"] = fr["cpm"]
    errs = [r["centre_error_mm"] for r in per_nodule_table(preds, gts)]
    out["median_centre_error_mm"] = (
        float(np.nanmedian(errs)) if errs and not all(math.isnan(e) for e in errs) else math.nan
    )
    out.update(n_cases=len(gts), n_gt=n_gt, n_pred=len(all_scores))
    return out
