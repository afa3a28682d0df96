"""The 2D detector interface: every detector in :data:`mvxray.detectors2d.DETECTORS` follows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Detections2D:
    """Detections in one view.

    Attributes:
        boxes: ``(N, 4)`` px (x1, y1, x2, y2), continuous image coordinates.
        scores: ``(N,)`` confidence in [0, 1].
        labels: ``(N,)`` int64 class labels.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections2D:
        """No detections."""
        return cls(
            torch.zeros(0, 4, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@runtime_checkable
class Detector2D(Protocol):
    """A 2D detector: images in, per-view boxes out; trainable ones also fit/save/load."""

    def predict(self, images: torch.Tensor) -> list[Detections2D]:
        """Detect in ``(V, C, H, W)`` images → one :class:`Detections2D` per view."""
        ...

    def fit(self, train: Any, val: Any | None = None, **kwargs: Any) -> dict[str, float]:
        """Train on a dataset of :class:`~mvxray.datasets.base.MultiViewSample`; returns final metrics."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the detector (config + weights) atomically to ``path``."""
        ...
