"""The geometry core: CT, camera and image frames, the multi-view rig, projection,
back-projection, boxes, frustum encoding, reprojection IoU, epipolar geometry and
triangulation. Pure, batched, differentiable torch functions built on kornia.

Imports torch and kornia (and ``torchvision.ops`` for 2D IoU) only.
"""

from __future__ import annotations

from mvxray.geometry._checks import ShapeError, check_shape
from mvxray.geometry.boxes import (
    box3d_center_size,
    box3d_corners,
    box3d_from_center_size,
    box3d_volume,
    box_iou_2d,
    box_iou_3d,
    project_boxes3d,
)
from mvxray.geometry.camera import (
    backproject_pixels,
    intrinsics_from_detector,
    points_depth,
    project_points,
    projection_matrix,
    unproject_points,
    visible_mask,
)
from mvxray.geometry.frames import (
    T_ct_from_voxel,
    ct_to_voxel,
    invert_rigid,
    source_position,
    transform_points,
    voxel_to_ct,
)
from mvxray.geometry.rig import Rig, look_at

__all__ = [
    "Rig",
    "ShapeError",
    "T_ct_from_voxel",
    "backproject_pixels",
    "box3d_center_size",
    "box3d_corners",
    "box3d_from_center_size",
    "box3d_volume",
    "box_iou_2d",
    "box_iou_3d",
    "check_shape",
    "ct_to_voxel",
    "intrinsics_from_detector",
    "invert_rigid",
    "look_at",
    "points_depth",
    "project_boxes3d",
    "project_points",
    "projection_matrix",
    "source_position",
    "transform_points",
    "unproject_points",
    "visible_mask",
    "voxel_to_ct",
]
