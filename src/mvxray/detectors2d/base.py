"""The 2D detector interface: every detector in :data:`mvxray.detectors2d.DETECTORS` follows it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@dataclass
class Detections2D:
    """Detections in one view.

    Attributes:
        boxes: ``(N, 4)`` px (x1, y1, x2, y2), continuous image coordinates.
        scores: ``(N,)`` confidence in [0, 1].
        labels: ``(N,)`` int64 class labels.
        heatmap: optional ``(H, W)`` dense evidence in [0, 1] that an indication is centred at
            each pixel (the ``heatmap`` detector's output, ``yolo``'s aux head's; the ``voting``
            lifter uses it).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    heatmap: torch.Tensor | None = None

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


@runtime_checkable
class FeatureDetector2D(Detector2D, Protocol):
    """A detector that also exposes what a two-stage 3D head (MV2D) consumes.

    ``features`` returns the multi-scale feature maps of ``(V, C, H, W)`` images as an ordered
    dict of ``(V, F, H / s, W / s)`` tensors with their strides ``s`` (px);
    ``roi_features`` pools ``(N, F, 7, 7)`` features for boxes ``(N, 5)`` = (view index, x1, y1,
    x2, y2) px, on those maps.
    """

    def features(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Feature maps and their strides (px)."""
        ...

    def roi_features(
        self, features: dict[str, torch.Tensor], rois: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``(N, F, 7, 7)`` RoI features for ``(N, 5)`` boxes (view, x1, y1, x2, y2) px."""
        ...


def predict_sample(detector: Detector2D, sample: Any) -> list[Detections2D]:
    """Detect in all views of one :class:`~mvxray.datasets.base.MultiViewSample`.

    Detectors that need more than the images (the ``oracle`` reads the ground truth) define
    ``predict_sample(sample)``; every other detector sees ``sample.images``. A learned detector
    whose config records the scale it was trained at (``object_px_mm``, mm per pixel at the
    object) sees them resampled to that scale (:func:`predict_rescaled`), and its input filters
    keep their training width (``filter_height``, the training views' height), so a rig with
    another magnification, pitch, image size or field of view shows it indications of the sizes
    it learned. Use this in benchmarks and lifters so any detector can be swapped in.
    """
    own = getattr(detector, "predict_sample", None)
    if callable(own):
        return own(sample)
    trained_px_mm = getattr(getattr(detector, "config", None), "object_px_mm", None)
    if trained_px_mm is None:
        return detector.predict(sample.images)
    return predict_rescaled(detector, sample.images, rig_px_mm(sample.rig) / trained_px_mm)


def rig_px_mm(rig: Any) -> float:
    """A rig's scale, mm per pixel at the object (the median over its views): what training
    records (:func:`~mvxray.detectors2d.train.collect_views`) and inference resamples views to
    (:func:`predict_sample`)."""
    return float(rig.object_pixel_mm.median())


def rescale_views(images: torch.Tensor, factor: float) -> torch.Tensor:
    """``(..., H, W)`` views resampled by ``factor`` (> 1 enlarges) to ``round(H·factor)`` ×
    ``round(W·factor)`` px: bilinear, antialiased, edges kept (``align_corners=False``), so a
    continuous coordinate ``u`` maps to ``u · w / W`` (docs/conventions.md).

    Raises:
        ValueError: ``factor`` ≤ 0.
    """
    if factor <= 0:
        raise ValueError(f"factor: expected > 0, found {factor}")
    H, W = images.shape[-2:]
    h, w = max(1, round(H * factor)), max(1, round(W * factor))
    x = images.float().reshape(-1, 1, H, W)
    x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.reshape(*images.shape[:-2], h, w)


#: Views within this relative scale of a detector's trained one are shown to it as given.
SCALE_TOLERANCE = 0.02


def predict_rescaled(
    detector: Detector2D, images: torch.Tensor, factor: float, tolerance: float = SCALE_TOLERANCE
) -> list[Detections2D]:
    """Detect in ``(V, C, H, W)`` views resampled by ``factor`` (> 1 enlarges), with the boxes
    and heatmaps mapped back to the given views' pixels; within ``tolerance`` of 1, as given.

    Resampling keeps the image's edges (``align_corners=False``), so a continuous coordinate
    ``u`` maps to ``u · w / W`` exactly (docs/conventions.md).

    Example:
        >>> class LeftHalf:   # one box over the left half of whatever it is given
        ...     def predict(self, images):
        ...         h, w = images.shape[-2:]
        ...         return [Detections2D(torch.tensor([[0.0, 0, w / 2, h]]), torch.ones(1),
        ...                              torch.zeros(1).long()) for _ in images]
        >>> predict_rescaled(LeftHalf(), torch.rand(1, 1, 20, 30), 1.5)[0].boxes.tolist()
        [[0.0, 0.0, 15.0, 20.0]]
    """
    if abs(factor - 1.0) <= tolerance:
        return detector.predict(images)
    x = rescale_views(images, factor)
    (H, W), (h, w) = images.shape[-2:], x.shape[-2:]
    out = []
    for d in detector.predict(x):
        back = torch.tensor([W / w, H / h, W / w, H / h], device=d.boxes.device)
        heat = d.heatmap
        if heat is not None:
            heat = F.interpolate(
                heat[None, None].float(),
                (H, W),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0, 0]
        out.append(Detections2D(d.boxes * back, d.scores, d.labels, heat))
    return out


#: Config fields that only filter a detector's output; ``MultiViewDetector`` lowers them.
_THRESHOLDS = frozenset({"score_thresh", "detections_per_img"})


def detector_id(detector: Any) -> str:
    """``name:digest`` of what a detector computes: its name, its weights and its config but
    the output thresholds (``score_thresh``, ``detections_per_img``). A model fitted on a
    detector's output (the ``voting_fpr`` re-scorer) records it, so it is never silently used
    with another detector.

    Example:
        >>> from mvxray.detectors2d.oracle import OracleConfig, OracleDetector
        >>> a, b = OracleDetector(), OracleDetector(OracleConfig(fp_per_image=1.0))
        >>> detector_id(a) == detector_id(OracleDetector()), detector_id(a) == detector_id(b)
        (True, False)
    """
    name = getattr(detector, "name", type(detector).__name__)
    h = hashlib.sha1(name.encode())
    cfg = getattr(detector, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        kept = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _THRESHOLDS}
        h.update(json.dumps(kept, sort_keys=True, default=str).encode())
    model = getattr(detector, "model", None)
    if isinstance(model, torch.nn.Module):
        for key, t in model.state_dict().items():
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{name}:{h.hexdigest()[:12]}"
