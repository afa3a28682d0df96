"""``oracle``: the ground-truth 2D boxes, optionally degraded — the upper bound of every ablation.

The oracle needs the ground truth, which ``predict(images)`` does not carry. Call
:meth:`OracleDetector.predict_sample` (what :func:`mvxray.detectors2d.base.predict_sample` and
the benchmarks do), or :meth:`OracleDetector.set_ground_truth` before ``predict``.
Degradations are seeded per case (``seed`` + ``case_id``), so a rerun gives the same boxes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mvxray.detectors2d.base import Detections2D
from mvxray.detectors2d.checkpoint import config_from_dict, read_checkpoint, save_checkpoint
from mvxray.detectors2d.normalize import check_images
from mvxray.geometry._checks import ShapeError


@dataclass(frozen=True)
class OracleConfig:
    """Degradations of the ground truth.

    Attributes:
        jitter_px: std of Gaussian noise on each box edge, px.
        jitter_frac: std of Gaussian noise on each edge as a fraction of the box size.
        miss_rate: probability that a visible box is dropped.
        drop_view_rate: probability that a whole view returns nothing.
        fp_per_image: mean number (Poisson) of false-positive boxes per view, placed uniformly,
            sized like the case's boxes (or 5 % of the image if it has none).
        tp_score: score of a true box.
        fp_score_max: false positives score uniformly in ``[0, fp_score_max]``.
        seed: base seed of the degradations.
    """

    jitter_px: float = 0.0
    jitter_frac: float = 0.0
    miss_rate: float = 0.0
    drop_view_rate: float = 0.0
    fp_per_image: float = 0.0
    tp_score: float = 1.0
    fp_score_max: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("miss_rate", "drop_view_rate", "tp_score", "fp_score_max"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"OracleConfig.{name}: expected a value in [0, 1], found {v}")
        for name in ("jitter_px", "jitter_frac", "fp_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"OracleConfig.{name}: expected >= 0, found {getattr(self, name)}")


class OracleDetector:
    """Returns the ground-truth boxes of the sample (with the configured degradations).

    Example:
        >>> det = OracleDetector()
        >>> det.set_ground_truth(torch.tensor([[[2.0, 2.0, 6.0, 6.0]]]), torch.tensor([[True]]))
        >>> det.predict(torch.zeros(1, 1, 16, 16))[0].boxes
        tensor([[2., 2., 6., 6.]])
    """

    name = "oracle"

    def __init__(self, config: OracleConfig | None = None, **overrides: Any) -> None:
        self.config = config_from_dict(OracleConfig, overrides) if config is None else config
        self._gt: tuple[torch.Tensor, torch.Tensor, str] | None = None

    def set_ground_truth(
        self, boxes2d: torch.Tensor, visible2d: torch.Tensor, case_id: str = ""
    ) -> None:
        """Set the ``(V, M, 4)`` px boxes and ``(V, M)`` visibility the next ``predict`` returns."""
        if boxes2d.dim() != 3 or boxes2d.shape[-1] != 4:
            raise ShapeError(f"boxes2d: expected shape (V, M, 4), found {tuple(boxes2d.shape)}")
        if tuple(visible2d.shape) != tuple(boxes2d.shape[:2]):
            raise ShapeError(
                f"visible2d: expected shape {tuple(boxes2d.shape[:2])}, found {tuple(visible2d.shape)}"
            )
        self._gt = (boxes2d, visible2d.bool(), case_id)

    def predict_sample(self, sample: Any) -> list[Detections2D]:
        """Detections for every view of a :class:`~mvxray.datasets.base.MultiViewSample`."""
        self.set_ground_truth(sample.boxes2d, sample.visible2d, sample.case_id)
        return self.predict(sample.images)

    def predict(self, images: torch.Tensor) -> list[Detections2D]:
        """The ground truth set by :meth:`set_ground_truth` for ``(V, C, H, W)`` images.

        Raises:
            RuntimeError: no ground truth was set.
            ShapeError: the images' V differs from the ground truth's.
        """
        check_images(images, channels=None)
        if self._gt is None:
            raise RuntimeError(
                "oracle: no ground truth; call predict_sample(sample) or set_ground_truth(...) first"
            )
        boxes2d, visible, case_id = self._gt
        V, _, H, W = images.shape
        if boxes2d.shape[0] != V:
            raise ShapeError(f"images: ground truth has {boxes2d.shape[0]} views, images have {V}")
        c = self.config
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + zlib.crc32(case_id.encode()))
        size_ref = (boxes2d[..., 2:] - boxes2d[..., :2])[visible].float()
        out = []
        for v in range(V):
            b = boxes2d[v][visible[v]].float().cpu()
            keep = torch.rand(len(b), generator=g) >= c.miss_rate
            b = b[keep]
            wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
            noise = torch.randn(b.shape, generator=g)
            b = b + noise * (c.jitter_px + c.jitter_frac * wh)
            scores = torch.full((len(b),), c.tp_score)
            n_fp = int(torch.poisson(torch.tensor([float(c.fp_per_image)]), generator=g).item())
            if n_fp:
                if len(size_ref):
                    sz = size_ref[torch.randint(len(size_ref), (n_fp,), generator=g)].cpu()
                else:
                    sz = torch.full((n_fp, 2), 0.05 * min(H, W))
                ctr = torch.rand(n_fp, 2, generator=g) * torch.tensor([W, H])
                fp = torch.cat([ctr - sz / 2, ctr + sz / 2], dim=1)
                b = torch.cat([b, fp])
                scores = torch.cat([scores, torch.rand(n_fp, generator=g) * c.fp_score_max])
            if torch.rand(1, generator=g).item() < c.drop_view_rate:
                b, scores = b[:0], scores[:0]
            # Jitter may swap edges; keep x1 <= x2, y1 <= y2 inside the image.
            lo, hi = torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])
            lim = torch.tensor([W, H], dtype=b.dtype)
            b = torch.cat([lo.clamp(min=0).minimum(lim), hi.clamp(min=0).minimum(lim)], dim=1)
            order = scores.argsort(descending=True)
            out.append(
                Detections2D(
                    b[order].to(images.device),
                    scores[order].to(images.device),
                    torch.zeros(len(b), dtype=torch.long, device=images.device),
                )
            )
        return out

    def fit(self, train: Any, val: Any | None = None, **kwargs: Any) -> dict[str, float]:
        """Nothing to learn: a no-op that returns ``{}``."""
        return {}

    def save(self, path: str | Path) -> None:
        """Write the config (atomically)."""
        save_checkpoint(path, self.name, self.config, {})

    @classmethod
    def load(cls, path: str | Path) -> OracleDetector:
        """Read a detector written by :meth:`save`."""
        ckpt = read_checkpoint(path)
        return cls(config_from_dict(OracleConfig, ckpt["config"]))
