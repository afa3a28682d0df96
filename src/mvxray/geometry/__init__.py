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
    pixels_to_grid,
    points_depth,
    project_points,
    projection_matrix,
    unproject_points,
    visible_mask,
)
from mvxray.geometry.epipolar import (
    epipolar_distance,
    epipolar_distance_matrix,
    epipolar_lines,
    fundamental_matrix,
)
from mvxray.geometry.frames import (
    T_ct_from_voxel,
    ct_to_voxel,
    invert_rigid,
    source_position,
    transform_points,
    voxel_to_ct,
)
from mvxray.geometry.frustum import (
    depth_bin_edges,
    depth_bins,
    frustum_coords,
    lift_pixels,
    lift_rois,
    normalize_to_roi,
    roi_points,
    sincos_encoding,
)
from mvxray.geometry.reprojection import (
    frustum_boxes,
    frustum_overlap,
    project_point_sets,
    reprojection_iou,
    reprojection_iou_points,
)
from mvxray.geometry.rig import Rig, look_at
from mvxray.geometry.triangulation import (
    Triangulation,
    closest_point_of_rays,
    triangulate,
    triangulate_robust,
)

__all__ = [
    "Rig",
    "ShapeError",
    "T_ct_from_voxel",
    "Triangulation",
    "backproject_pixels",
    "box3d_center_size",
    "box3d_corners",
    "box3d_from_center_size",
    "box3d_volume",
    "box_iou_2d",
    "box_iou_3d",
    "check_shape",
    "closest_point_of_rays",
    "ct_to_voxel",
    "depth_bin_edges",
    "depth_bins",
    "epipolar_distance",
    "epipolar_distance_matrix",
    "epipolar_lines",
    "frustum_boxes",
    "frustum_coords",
    "frustum_overlap",
    "fundamental_matrix",
    "intrinsics_from_detector",
    "invert_rigid",
    "lift_pixels",
    "lift_rois",
    "look_at",
    "normalize_to_roi",
    "pixels_to_grid",
    "points_depth",
    "project_boxes3d",
    "project_point_sets",
    "project_points",
    "projection_matrix",
    "reprojection_iou",
    "reprojection_iou_points",
    "roi_points",
    "sincos_encoding",
    "source_position",
    "transform_points",
    "triangulate",
    "triangulate_robust",
    "unproject_points",
    "visible_mask",
    "voxel_to_ct",
]
