"""3D detection heads: box regression + classification, Hungarian matching and set losses.

Shared by the learned lifters (``mv2d``, and any other query-based lifter).
"""

from __future__ import annotations

from mvxray.heads.box3d import Box3DHead, Box3DHeadConfig, Box3DPrediction
from mvxray.heads.losses import LossConfig, set_loss_3d, total_loss
from mvxray.heads.matching import box_regression_cost, focal_class_cost, hungarian_match

__all__ = [
    "Box3DHead",
    "Box3DHeadConfig",
    "Box3DPrediction",
    "LossConfig",
    "box_regression_cost",
    "focal_class_cost",
    "hungarian_match",
    "set_loss_3d",
    "total_loss",
]
