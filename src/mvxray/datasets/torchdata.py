"""A torch ``Dataset`` over an on-disk mvxray dataset, and a collate for batches of cases.

``MultiViewDataset(root, split)`` yields one :class:`~mvxray.datasets.base.MultiViewSample` per
case of the split; splits are by case (a case is in exactly one split, so no view of a test case is
ever seen in training). :func:`collate` stacks cases with the same number of views and image size
into a typed :class:`MultiViewBatch`, padding the boxes (cases have different numbers of
indications) and keeping a ``box_mask``; it also keeps the samples themselves for code that wants
per-case objects (the rig, meta).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import DatasetIndex, read_case, read_dataset
from mvxray.geometry import Rig


class MultiViewDataset(Dataset):
    """The cases of one split of an on-disk dataset.

    Args:
        root: dataset folder (with ``dataset.json``).
        split: ``"train"``, ``"val"``, ``"test"`` (or any split in ``dataset.json``), or ``"all"``.
        transform: optional callable ``MultiViewSample → MultiViewSample`` (e.g.
            :class:`mvxray.datasets.augment.MultiViewAugment`).

    Raises:
        FileNotFoundError: no ``dataset.json`` (see :func:`mvxray.datasets.format.read_dataset`).
        KeyError: unknown split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[MultiViewSample], MultiViewSample] | None = None,
    ) -> None:
        self.index: DatasetIndex = read_dataset(root)
        self.root = Path(root)
        self.split = split
        self.case_ids: list[str] = self.index.split(split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i: int) -> MultiViewSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for split {self.split!r} ({len(self)} cases)")
        sample = read_case(self.root / self.case_ids[i])
        return self.transform(sample) if self.transform is not None else sample

    @property
    def classes(self) -> list[str]:
        """Class names (label ``l`` ↔ ``classes[l]``)."""
        return self.index.classes


@dataclass
class MultiViewBatch:
    """B cases of V views each, stacked; boxes padded to the largest M in the batch.

    Attributes:
        images: ``(B, V, C, H, W)`` float32.
        K: ``(B, V, 3, 3)`` intrinsics, px.
        T_cam_from_ct: ``(B, V, 4, 4)`` extrinsics (CT → camera), mm.
        pixel_mm: ``(B, V)`` detector pitch, mm.
        boxes3d: ``(B, M, 6)`` CT mm (zeros in padding).
        boxes2d: ``(B, V, M, 4)`` px (zeros in padding).
        visible2d: ``(B, V, M)`` bool (False in padding).
        labels: ``(B, M)`` int64 (−1 in padding).
        box_mask: ``(B, M)`` bool — True for real boxes.
        samples: the B samples themselves (rig, case_id, meta).
    """

    images: torch.Tensor
    K: torch.Tensor
    T_cam_from_ct: torch.Tensor
    pixel_mm: torch.Tensor
    boxes3d: torch.Tensor
    boxes2d: torch.Tensor
    visible2d: torch.Tensor
    labels: torch.Tensor
    box_mask: torch.Tensor
    samples: list[MultiViewSample]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def case_ids(self) -> list[str]:
        return [s.case_id for s in self.samples]

    def rig(self, b: int) -> Rig:
        """The rig of case ``b``."""
        return self.samples[b].rig

    def to(self, device: torch.device | str) -> MultiViewBatch:
        """A copy with every tensor on ``device`` (the samples stay where they are)."""
        moved = {
            k: getattr(self, k).to(device)
            for k in (
                "images",
                "K",
                "T_cam_from_ct",
                "pixel_mm",
                "boxes3d",
                "boxes2d",
                "visible2d",
                "labels",
                "box_mask",
            )
        }
        return replace(self, **moved)


def collate(samples: Sequence[MultiViewSample]) -> MultiViewBatch:
    """Stack cases into a :class:`MultiViewBatch` (use as ``DataLoader(collate_fn=collate)``).

    Raises:
        ValueError: empty batch, or cases with different V / C / H / W (use ``collate_fn=list``
            to get a plain list of samples instead).

    Example:
        >>> from mvxray.geometry import Rig
        >>> rig = Rig.seed(8)
        >>> s = MultiViewSample(torch.zeros(10, 1, 8, 8), rig, torch.zeros(2, 6),
        ...                     torch.zeros(10, 2, 4), torch.ones(10, 2, dtype=torch.bool),
        ...                     torch.zeros(2, dtype=torch.long))
        >>> b = collate([s, s])
        >>> tuple(b.images.shape), tuple(b.boxes2d.shape)
        ((2, 10, 1, 8, 8), (2, 10, 2, 4))
    """
    if not samples:
        raise ValueError("collate: empty batch")
    shapes = {tuple(s.images.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"collate: cases differ in images shape (V, C, H, W): {sorted(shapes)}; "
            f"use DataLoader(collate_fn=list) for a list of samples"
        )
    B = len(samples)
    V = samples[0].num_views
    M = max(s.boxes3d.shape[0] for s in samples)
    boxes3d = torch.zeros(B, M, 6, dtype=torch.float64)
    boxes2d = torch.zeros(B, V, M, 4, dtype=torch.float64)
    visible = torch.zeros(B, V, M, dtype=torch.bool)
    labels = torch.full((B, M), -1, dtype=torch.long)
    mask = torch.zeros(B, M, dtype=torch.bool)
    for b, s in enumerate(samples):
        m = s.boxes3d.shape[0]
        boxes3d[b, :m] = s.boxes3d.to(torch.float64)
        boxes2d[b, :, :m] = s.boxes2d.to(torch.float64)
        visible[b, :, :m] = s.visible2d.bool()
        labels[b, :m] = s.labels.long()
        mask[b, :m] = True
    return MultiViewBatch(
        images=torch.stack([s.images.float() for s in samples]),
        K=torch.stack([s.rig.K.to(torch.float64) for s in samples]),
        T_cam_from_ct=torch.stack([s.rig.T_cam_from_ct.to(torch.float64) for s in samples]),
        pixel_mm=torch.stack([s.rig.pixel_mm.to(torch.float64) for s in samples]),
        boxes3d=boxes3d,
        boxes2d=boxes2d,
        visible2d=visible,
        labels=labels,
        box_mask=mask,
        samples=list(samples),
    )
