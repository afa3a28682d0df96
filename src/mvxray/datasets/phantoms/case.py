"""The phantom case record and exact boxes from a label map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import Volume
from mvxray.geometry import transform_points
from mvxray.geometry._checks import ShapeError

CLASSES = ("nodule", "pore", "crack")
"""Class ids of :attr:`PhantomCase.labels`: 0 = nodule, 1 = pore, 2 = crack."""


@dataclass
class PhantomCase:
    """A synthetic CT with known indications.

    Attributes:
        volume: HU volume; ``volume.labels`` ``(I, J, K)`` int64, indication ``m`` is label
            ``m + 1`` (0 = background).
        boxes3d: ``(M, 6)`` float64 CT mm (xmin, ymin, zmin, xmax, ymax, zmax): the tight
            physical extent of each label's voxels (voxel cubes, i.e. centres ± half a voxel).
        labels: ``(M,)`` int64 class ids (see :data:`CLASSES`).
        meta: provenance (phantom, seed, host CT, nodule sources, pseudo-patient parameters).
    """

    volume: Volume
    boxes3d: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        M = self.boxes3d.shape[0] if self.boxes3d.dim() == 2 else -1
        if self.boxes3d.dim() != 2 or self.boxes3d.shape[1] != 6:
            raise ShapeError(f"boxes3d: expected shape (M, 6), found {tuple(self.boxes3d.shape)}")
        if tuple(self.labels.shape) != (M,):
            raise ShapeError(f"labels: expected shape ({M},), found {tuple(self.labels.shape)}")


def boxes_from_labels(
    labels: torch.Tensor, T_ct_from_voxel: torch.Tensor, num: int
) -> torch.Tensor:
    """Tight CT boxes of labels ``1..num``: the extent of their voxel cubes, mm.

    Voxel ``(i, j, k)`` covers indices ``[i - 0.5, i + 0.5]`` (etc.); the 8 corners of each
    label's index bounding box are mapped to CT and their min / max taken (exact for any
    direction, tight for axis-aligned grids).

    Args:
        labels: ``(I, J, K)`` int label map.
        T_ct_from_voxel: ``(4, 4)`` voxel → CT mm.
        num: number of labels M (labels 1..M must all be present).

    Returns:
        ``(M, 6)`` float64 boxes (xmin, ymin, zmin, xmax, ymax, zmax), CT mm.

    Raises:
        ValueError: a label in ``1..num`` has no voxel.

    Example:
        >>> from mvxray.geometry import T_ct_from_voxel
        >>> lab = torch.zeros(4, 4, 4, dtype=torch.int64); lab[1:3, 1, 2] = 1
        >>> boxes_from_labels(lab, T_ct_from_voxel((4, 4, 4), (1.0, 1.0, 1.0)), 1).tolist()
        [[-1.0, -1.0, 0.0, 1.0, 0.0, 1.0]]
    """
    from scipy.ndimage import find_objects

    if labels.dim() != 3:
        raise ShapeError(f"labels: expected shape (I, J, K), found {tuple(labels.shape)}")
    slices = find_objects(labels.cpu().numpy().astype(np.int64), max_label=num) if num else []
    out = torch.zeros(num, 6, dtype=torch.float64)
    corners = torch.tensor(
        [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float64
    )
    T = T_ct_from_voxel.to(torch.float64)
    for m, sl in enumerate(slices):
        if sl is None:
            raise ValueError(f"labels: label {m + 1} has no voxel (expected labels 1..{num})")
        lo = torch.tensor([s.start for s in sl], dtype=torch.float64) - 0.5
        hi = torch.tensor([s.stop for s in sl], dtype=torch.float64) - 0.5
        pts = transform_points(T, lo + corners * (hi - lo))
        out[m, :3] = pts.min(0).values
        out[m, 3:] = pts.max(0).values
    return out
