"""The 3D box head shared by learned lifters: object queries → class logits + 3D boxes.

A query carries a 3D reference point ``ref_ct`` (CT mm) and a prior size ``size_prior_mm``
(e.g. the 2D box size scaled by depth / focal length). The head regresses the centre as an
offset from the reference point, in units of ``offset_scale_mm``, and the size as a log-ratio
to the prior, so the regression targets are O(1) whatever the rig or the object size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mvxray.geometry import box3d_from_center_size
from mvxray.geometry._checks import check_shape

#: Log-size deltas are clamped to ±this so exp() stays finite early in training.
_MAX_LOG_DELTA = 4.0


@dataclass(frozen=True)
class Box3DHeadConfig:
    """Configuration of :class:`Box3DHead`.

    Attributes:
        embed_dim: query width.
        num_classes: number of foreground classes (sigmoid logits, no background class).
        hidden_layers: hidden Linear+ReLU layers in each branch.
        offset_scale_mm: centre offsets are predicted in units of this many mm.
    """

    embed_dim: int = 128
    num_classes: int = 1
    hidden_layers: int = 2
    offset_scale_mm: float = 20.0


@dataclass
class Box3DPrediction:
    """Predictions for a batch of queries.

    Attributes:
        logits: ``(*, Q, num_classes)`` classification logits.
        centre: ``(*, Q, 3)`` box centres, CT mm.
        size: ``(*, Q, 3)`` box sizes, mm (> 0).
    """

    logits: torch.Tensor
    centre: torch.Tensor
    size: torch.Tensor

    @property
    def boxes3d(self) -> torch.Tensor:
        """``(*, Q, 6)`` boxes, CT mm (xmin, ymin, zmin, xmax, ymax, zmax)."""
        return box3d_from_center_size(self.centre, self.size)

    @property
    def scores(self) -> torch.Tensor:
        """``(*, Q)`` best-class probability."""
        return self.logits.sigmoid().amax(-1)


def _mlp(dim: int, out: int, hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(dim, dim), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dim, out))
    return nn.Sequential(*layers)


class Box3DHead(nn.Module):
    """Classification and 3D box regression branches (one FFN each, as in DETR3D / MV2D).

    Example:
        >>> head = Box3DHead(Box3DHeadConfig(embed_dim=8))
        >>> p = head(torch.zeros(2, 5, 8), torch.zeros(2, 5, 3), torch.ones(2, 5, 3))
        >>> tuple(p.logits.shape), tuple(p.boxes3d.shape)
        ((2, 5, 1), (2, 5, 6))
    """

    def __init__(self, config: Box3DHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or Box3DHeadConfig()
        c = self.config
        self.cls_branch = _mlp(c.embed_dim, c.num_classes, c.hidden_layers)
        self.reg_branch = _mlp(c.embed_dim, 6, c.hidden_layers)
        # Start from "box = reference point with prior size" and a low foreground prior
        # (focal-loss initialisation of RetinaNet: p = 0.01).
        nn.init.zeros_(self.reg_branch[-1].weight)
        nn.init.zeros_(self.reg_branch[-1].bias)
        nn.init.constant_(self.cls_branch[-1].bias, -4.595)

    def forward(
        self, queries: torch.Tensor, ref_ct: torch.Tensor, size_prior_mm: torch.Tensor
    ) -> Box3DPrediction:
        """Predict classes and boxes.

        Args:
            queries: ``(*, Q, embed_dim)`` decoded object queries.
            ref_ct: ``(*, Q, 3)`` reference points, CT mm.
            size_prior_mm: ``(*, Q, 3)`` prior box sizes, mm (> 0).

        Returns:
            :class:`Box3DPrediction` with ``(*, Q, ...)`` tensors.
        """
        check_shape(queries, "queries", (None, self.config.embed_dim))
        check_shape(ref_ct, "ref_ct", (None, 3))
        check_shape(size_prior_mm, "size_prior_mm", (None, 3))
        reg = self.reg_branch(queries)
        centre = ref_ct + self.config.offset_scale_mm * reg[..., :3]
        size = size_prior_mm * reg[..., 3:].clamp(-_MAX_LOG_DELTA, _MAX_LOG_DELTA).exp()
        return Box3DPrediction(self.cls_branch(queries), centre, size)
