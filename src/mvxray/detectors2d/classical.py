"""``log_blob``: a training-free Laplacian-of-Gaussian blob detector — the floor to report.

On a robust-normalized, background-subtracted image (:mod:`mvxray.detectors2d.normalize`), the
scale-normalized response ``R = −σ² ∇²G_σ * x`` is maximal at the centre of a bright blob of
radius ≈ √2 σ. Local maxima of ``max_σ R`` above a threshold become boxes of half-size √2 σ,
scored ``R / (R + r_half)`` ∈ [0, 1). ``fit`` only calibrates ``r_half`` (the median response at
the training boxes' centres, so a typical indication scores 0.5). Rib crossings, vessel ends and
organ borders outscore faint nodules, which is why this is a baseline and not a solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import nms

from mvxray.detectors2d.base import Detections2D
from mvxray.detectors2d.checkpoint import config_from_dict, read_checkpoint, save_checkpoint
from mvxray.detectors2d.normalize import background_subtract, check_images


@dataclass(frozen=True)
class LogBlobConfig:
    """Options of the LoG blob detector.

    Attributes:
        sigmas_frac: LoG scales as fractions of the image height (1.5, 2.5, 4 px at 256 px).
        bg_sigma_frac: background-subtraction σ as a fraction of the height.
        polarity: ``"bright"`` (indications attenuate more: line integrals, CT-like) or
            ``"dark"`` (transmission images).
        r_half: response that scores 0.5 (normalized-intensity units; set by ``fit``).
        min_score: detections below this score are dropped.
        nms_iou: IoU of the non-maximum suppression between boxes.
        max_detections: at most this many boxes per view.
    """

    sigmas_frac: tuple[float, ...] = (1.5 / 256, 2.5 / 256, 4.0 / 256)
    bg_sigma_frac: float = 1 / 32
    polarity: str = "bright"
    r_half: float = 0.02
    min_score: float = 0.05
    nms_iou: float = 0.3
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.polarity not in ("bright", "dark"):
            raise ValueError(
                f"LogBlobConfig.polarity: expected 'bright' or 'dark', found {self.polarity!r}"
            )
        if not self.sigmas_frac or min(self.sigmas_frac) <= 0:
            raise ValueError(
                f"LogBlobConfig.sigmas_frac: expected positive scales, found {self.sigmas_frac}"
            )
        if self.r_half <= 0:
            raise ValueError(f"LogBlobConfig.r_half: expected > 0, found {self.r_half}")


class LogBlobDetector:
    """Multi-scale LoG blobs on the background-subtracted image (no training).

    Example:
        >>> yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        >>> blob = torch.exp(-((xx - 40) ** 2 + (yy - 20) ** 2) / 8)  # at pixel row 20, col 40
        >>> img = (xx / 64 + 0.3 * blob)[None, None]
        >>> det = LogBlobDetector().predict(img)[0]
        >>> [float(c) for c in (det.boxes[0, 0::2].mean(), det.boxes[0, 1::2].mean())]
        [40.5, 20.5]
    """

    name = "log_blob"

    def __init__(self, config: LogBlobConfig | None = None, **overrides: Any) -> None:
        self.config = config_from_dict(LogBlobConfig, overrides) if config is None else config

    def response(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(V, H, W)`` max-over-scales response and the ``(V, H, W)`` σ (px) that attains it."""
        check_images(images, channels=1)
        c = self.config
        x = background_subtract(images.detach().cpu(), c.bg_sigma_frac)[:, 0].numpy()
        if c.polarity == "dark":
            x = -x
        H = images.shape[-2]
        sigmas = [max(0.5, f * H) for f in c.sigmas_frac]
        stack = np.stack(
            [np.stack([-(s**2) * ndimage.gaussian_laplace(xi, s) for s in sigmas]) for xi in x]
        )  # (V, S, H, W)
        best = stack.argmax(axis=1)
        return stack.max(axis=1), np.asarray(sigmas)[best]

    def predict(self, images: torch.Tensor) -> list[Detections2D]:
        """Blobs in each ``(V, 1, H, W)`` view → boxes (px), scores in [0, 1), labels 0."""
        c = self.config
        resp, sig = self.response(images)
        H = images.shape[-2]
        win = 2 * math.ceil(max(0.5, min(c.sigmas_frac) * H)) + 1
        r_min = c.r_half * c.min_score / (1.0 - c.min_score)
        out = []
        for R, S in zip(resp, sig):
            peaks = (R == ndimage.maximum_filter(R, size=win, mode="nearest")) & (R > r_min)
            rows, cols = np.nonzero(peaks)
            r = R[rows, cols]
            half = math.sqrt(2.0) * S[rows, cols]
            cx, cy = cols + 0.5, rows + 0.5  # pixel-centre rule
            W = R.shape[1]
            boxes = torch.as_tensor(
                np.stack(
                    [
                        np.clip(cx - half, 0, W),
                        np.clip(cy - half, 0, H),
                        np.clip(cx + half, 0, W),
                        np.clip(cy + half, 0, H),
                    ],
                    axis=1,
                ),
                dtype=torch.float32,
            ).reshape(-1, 4)
            scores = torch.as_tensor(r / (r + c.r_half), dtype=torch.float32)
            keep = nms(boxes, scores, c.nms_iou)[: c.max_detections]
            out.append(
                Detections2D(
                    boxes[keep].to(images.device),
                    scores[keep].to(images.device),
                    torch.zeros(len(keep), dtype=torch.long, device=images.device),
                )
            )
        return out

    def fit(self, train: Any, val: Any | None = None, **kwargs: Any) -> dict[str, float]:
        """Calibrate ``r_half`` to the median response at the training boxes' centres.

        Args:
            train: an iterable of :class:`~mvxray.datasets.base.MultiViewSample`.

        Returns:
            ``{"r_half": ..., "boxes": ...}`` (the number of boxes it was calibrated on).

        Raises:
            ValueError: the training set holds no visible box.
        """
        values, n = [], 0
        for n, sample in enumerate(train, 1):  # noqa: B007 (n counts the samples)
            resp, _ = self.response(sample.images)
            boxes, vis = sample.boxes2d, sample.visible2d
            H, W = resp.shape[1:]
            for v in range(len(resp)):
                for b in boxes[v][vis[v]].tolist():
                    col = min(W - 1, max(0, int((b[0] + b[2]) / 2)))
                    row = min(H - 1, max(0, int((b[1] + b[3]) / 2)))
                    values.append(float(resp[v, row, col]))
        if n == 0:
            raise ValueError("training set is empty: no views to calibrate on")
        if not values:
            raise ValueError("log_blob.fit: the training set holds no visible 2D box")
        r_half = float(max(np.median(values), 1e-4))
        self.config = replace(self.config, r_half=r_half)
        return {"r_half": r_half, "boxes": float(len(values))}

    def save(self, path: str | Path) -> None:
        """Write the config (atomically)."""
        save_checkpoint(path, self.name, self.config, {})

    @classmethod
    def load(cls, path: str | Path) -> LogBlobDetector:
        """Read a detector written by :meth:`save`."""
        return cls(config_from_dict(LogBlobConfig, read_checkpoint(path)["config"]))
