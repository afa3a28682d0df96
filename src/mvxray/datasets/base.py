"""The typed multi-view sample every other package consumes.

This is the interface between ``datasets`` and its siblings (detectors2d, lifting, heads,
benchmarks): they import :class:`MultiViewSample` from here and nothing else of datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mvxray.geometry import Rig
from mvxray.geometry._checks import ShapeError


@dataclass
class Volume:
    """A CT volume placed in the CT frame.

    Attributes:
        data: ``(I, J, K)`` float32 Hounsfield units (HU); voxel ``(i, j, k)`` = ``data[i, j, k]``.
        T_ct_from_voxel: ``(4, 4)`` float64 affine voxel index → CT mm (see
            :func:`mvxray.geometry.T_ct_from_voxel`; the CT origin is the volume centre).
        labels: optional ``(I, J, K)`` int64 label map (0 = background; indication ``m`` is
            label ``m + 1`` in the order of the case's ``boxes3d``).
        meta: provenance (source file, series UID, phantom name and seed, ...).
    """

    data: torch.Tensor
    T_ct_from_voxel: torch.Tensor
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.dim() != 3:
            raise ShapeError(f"data: expected shape (I, J, K), found {tuple(self.data.shape)}")
        if self.labels is not None and self.labels.shape != self.data.shape:
            raise ShapeError(
                f"labels: expected shape {tuple(self.data.shape)} (as data), found {tuple(self.labels.shape)}"
            )
        if tuple(self.T_ct_from_voxel.shape) != (4, 4):
            raise ShapeError(
                f"T_ct_from_voxel: expected shape (4, 4), found {tuple(self.T_ct_from_voxel.shape)}"
            )

    @property
    def spacing_mm(self) -> torch.Tensor:
        """``(3,)`` voxel spacing along the array axes, mm."""
        return self.T_ct_from_voxel[:3, :3].norm(dim=0)


@dataclass
class MultiViewSample:
    """One case: V calibrated X-ray views of one object, with its ground truth.

    Attributes:
        images: ``(V, C, H, W)`` float32 line integrals / intensities (C = 1 for X-ray).
        rig: the calibrated rig (V views of H × W px).
        boxes3d: ``(M, 6)`` ground-truth 3D boxes, CT mm (xmin, ymin, zmin, xmax, ymax, zmax).
        boxes2d: ``(V, M, 4)`` ground-truth 2D boxes per view, px (x1, y1, x2, y2), same order
            as ``boxes3d``.
        visible2d: ``(V, M)`` bool — the indication is visible in that view.
        labels: ``(M,)`` int64 class labels (0 = nodule / pore; see the dataset's ``classes``).
        case_id: identifier of the case.
        meta: provenance (source CT, phantom, seed, rig preset, ...).
    """

    images: torch.Tensor
    rig: Rig
    boxes3d: torch.Tensor
    boxes2d: torch.Tensor
    visible2d: torch.Tensor
    labels: torch.Tensor
    case_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        V, H, W = self.rig.num_views, self.rig.height, self.rig.width
        if (
            self.images.dim() != 4
            or tuple(self.images.shape[::2]) != (V, H)
            or self.images.shape[3] != W
        ):
            raise ShapeError(
                f"images: expected shape ({V}, C, {H}, {W}) for this rig, found {tuple(self.images.shape)}"
            )
        M = self.boxes3d.shape[0] if self.boxes3d.dim() == 2 else -1
        if self.boxes3d.dim() != 2 or self.boxes3d.shape[1] != 6:
            raise ShapeError(f"boxes3d: expected shape (M, 6), found {tuple(self.boxes3d.shape)}")
        if tuple(self.boxes2d.shape) != (V, M, 4):
            raise ShapeError(
                f"boxes2d: expected shape ({V}, {M}, 4), found {tuple(self.boxes2d.shape)}"
            )
        if tuple(self.visible2d.shape) != (V, M):
            raise ShapeError(
                f"visible2d: expected shape ({V}, {M}), found {tuple(self.visible2d.shape)}"
            )
        if tuple(self.labels.shape) != (M,):
            raise ShapeError(f"labels: expected shape ({M},), found {tuple(self.labels.shape)}")

    @property
    def num_views(self) -> int:
        """Number of views V."""
        return self.rig.num_views

    def select_views(self, views: Sequence[int]) -> MultiViewSample:
        """The same case seen by a subset of its views (images, rig and 2D ground truth).

        Example:
            >>> from mvxray.geometry import project_boxes3d
            >>> rig = Rig.seed(size=32)
            >>> b3 = torch.tensor([[-5.0, -5, -5, 5, 5, 5]], dtype=torch.float64)
            >>> b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, 32, 32)
            >>> s = MultiViewSample(torch.zeros(10, 1, 32, 32), rig, b3, b2, vis, torch.zeros(1, dtype=torch.long))
            >>> s.select_views([0, 5]).images.shape
            torch.Size([2, 1, 32, 32])
        """
        idx = torch.as_tensor(list(views), dtype=torch.long)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.num_views:
            raise ValueError(
                f"views: expected indices in [0, {self.num_views}), found {list(views)}"
            )
        return MultiViewSample(
            self.images[idx],
            self.rig.subset(idx.tolist()),
            self.boxes3d,
            self.boxes2d[idx],
            self.visible2d[idx],
            self.labels,
            self.case_id,
            {**self.meta, "views": idx.tolist()},
        )
