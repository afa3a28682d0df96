"""The 2D → 3D lifting interface: every lifter in :data:`mvxray.lifting.LIFTERS` follows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D


@dataclass
class Lifted3D:
    """3D indications found in one case.

    Attributes:
        boxes3d: ``(M, 6)`` CT mm (xmin, ymin, zmin, xmax, ymax, zmax).
        scores: ``(M,)`` confidence in [0, 1].
        support: ``(M, V)`` bool — the views whose detections support each box.
    """

    boxes3d: torch.Tensor
    scores: torch.Tensor
    support: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes3d.shape[0])


@runtime_checkable
class Lifter(Protocol):
    """Lift per-view 2D detections of one case to 3D boxes in the CT frame."""

    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """``detections`` has one entry per view of ``sample.rig``."""
        ...


@runtime_checkable
class TrainableLifter(Lifter, Protocol):
    """A lifter with learned weights."""

    def fit(self, train: Any, val: Any | None = None, **kwargs: Any) -> dict[str, float]:
        """Train; returns final metrics."""
        ...

    def save(self, path: str | Path) -> None:
        """Write config + weights atomically."""
        ...
