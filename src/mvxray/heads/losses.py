"""Set losses of the 3D head: Hungarian assignment, focal classification, L1 regression.

The total MV2D loss (seed 000) is ``L = L2d + λ3d · (λcls · Lcls3d + Lreg3d)`` with
``λ3d = 0.1`` and ``λcls = 0.25``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import sigmoid_focal_loss

from mvxray.geometry import box3d_center_size
from mvxray.heads.box3d import Box3DPrediction
from mvxray.heads.matching import hungarian_match


@dataclass(frozen=True)
class LossConfig:
    """Weights of the 3D set loss.

    Attributes:
        lambda_3d: weight of the 3D loss against the 2D loss.
        lambda_cls: weight of the 3D classification loss against the regression loss.
        focal_alpha: focal-loss alpha.
        focal_gamma: focal-loss gamma.
        w_centre: weight of the centre L1 term (in ``offset_scale_mm`` units).
        w_size: weight of the log-size L1 term.
        match_w_cls: weight of the classification cost in the assignment.
        offset_scale_mm: centre unit of the regression, mm (as the head's).
        w_one_to_many: weight of the auxiliary regression of every query that has a known
            target (e.g. the object its 2D detection belongs to), in addition to the Hungarian
            one; 0 disables it. It speeds up learning the geometry: with one query per
            detection and V views, Hungarian matching supervises the box of only one of ~V
            queries of an object per step.
    """

    lambda_3d: float = 0.1
    lambda_cls: float = 0.25
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    w_centre: float = 1.0
    w_size: float = 1.0
    match_w_cls: float = 1.0
    offset_scale_mm: float = 20.0
    w_one_to_many: float = 0.0


def _l1(
    pred_c: torch.Tensor, pred_s: torch.Tensor, gt: torch.Tensor, cfg: LossConfig
) -> torch.Tensor:
    gc, gs = box3d_center_size(gt)
    d_c = (pred_c - gc).abs().sum(-1) / cfg.offset_scale_mm
    d_s = (pred_s.clamp(min=1e-6).log() - gs.clamp(min=1e-6).log()).abs().sum(-1)
    return cfg.w_centre * d_c + cfg.w_size * d_s


def set_loss_3d(
    pred: Box3DPrediction,
    valid: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    config: LossConfig | None = None,
    query_targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Classification and regression losses of a batch of query predictions.

    Each sample's valid queries are assigned one-to-one to its ground truth
    (:func:`~mvxray.heads.matching.hungarian_match`); assigned queries are positives of the
    ground-truth class, all other valid queries negatives. Both losses are normalized by the
    number of ground-truth boxes in the batch (at least 1), as in DETR.

    Args:
        pred: predictions with ``(B, Q, ...)`` tensors.
        valid: ``(B, Q)`` bool — real (not padded) queries.
        gt_boxes: B tensors ``(M_b, 6)``, CT mm.
        gt_labels: B tensors ``(M_b,)`` int64.
        config: loss weights.
        query_targets: optional ``(B, Q)`` int64 — the ground-truth index each query is known
            to belong to (−1 if none); used by the one-to-many regression when
            ``config.w_one_to_many > 0``.

    Returns:
        ``{"cls": Lcls3d, "reg": Lreg3d, "reg_o2m": auxiliary regression,
        "loss_3d": λcls·Lcls3d + Lreg3d + w_o2m·reg_o2m, "num_matched": n}``.
    """
    cfg = config or LossConfig()
    B = pred.logits.shape[0]
    target = torch.zeros_like(pred.logits)
    reg_terms = []
    num_gt = 0
    for b in range(B):
        gtb, glb = gt_boxes[b].to(pred.centre), gt_labels[b].to(pred.centre.device).long()
        num_gt += int(gtb.shape[0])
        qi, gi = hungarian_match(
            pred.logits[b],
            pred.centre[b],
            pred.size[b],
            gtb,
            glb,
            cfg.offset_scale_mm,
            cfg.match_w_cls,
            cfg.w_centre,
            cfg.w_size,
            valid[b],
        )
        if qi.numel() == 0:
            continue
        target[b, qi, glb[gi]] = 1.0
        reg_terms.append(_l1(pred.centre[b, qi], pred.size[b, qi], gtb[gi], cfg))
    norm = max(num_gt, 1)
    focal = sigmoid_focal_loss(
        pred.logits, target, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="none"
    )
    cls = (focal * valid[..., None]).sum() / norm
    reg = torch.cat(reg_terms).sum() / norm if reg_terms else pred.centre.sum() * 0.0
    o2m = pred.centre.sum() * 0.0
    if query_targets is not None and cfg.w_one_to_many > 0:
        has = (query_targets >= 0) & valid
        if bool(has.any()):
            b_idx, q_idx = torch.nonzero(has, as_tuple=True)
            gt = torch.stack(
                [
                    gt_boxes[int(b)][int(query_targets[b, q])].to(pred.centre)
                    for b, q in zip(b_idx, q_idx)
                ]
            )
            o2m = _l1(pred.centre[b_idx, q_idx], pred.size[b_idx, q_idx], gt, cfg).mean()
    return {
        "cls": cls,
        "reg": reg,
        "reg_o2m": o2m,
        "loss_3d": cfg.lambda_cls * cls + reg + cfg.w_one_to_many * o2m,
        "num_matched": torch.tensor(sum(int(t.numel()) for t in reg_terms)),
    }


def total_loss(
    loss_3d: torch.Tensor, loss_2d: torch.Tensor | float = 0.0, config: LossConfig | None = None
) -> torch.Tensor:
    """``L = L2d + λ3d · L3d`` where ``L3d = λcls·Lcls3d + Lreg3d`` (from :func:`set_loss_3d`).

    Example:
        >>> round(float(total_loss(torch.tensor(2.0), 1.0)), 4)
        1.2
    """
    cfg = config or LossConfig()
    return loss_2d + cfg.lambda_3d * loss_3d
