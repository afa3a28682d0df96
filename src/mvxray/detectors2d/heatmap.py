"""``heatmap``: a CenterNet-style detector — one peak per indication on a full-resolution heatmap.

Small, faint indications are a few pixels wide: anchor- and assigner-based heads (Faster R-CNN,
YOLO) give each of them one or two positive anchors at best. Here a small U-Net predicts, at every
pixel, the probability that an indication is centred there (a Gaussian target, CenterNet's
penalty-reduced focal loss), its log width / height and the sub-pixel offset of its centre. Every
nodule supervises its own pixel at stride 1, so the head fits far faster on a CPU.

Decoding: sigmoid → 3×3 max-pool peak picking → the top ``detections_per_img`` peaks above
``score_thresh`` → boxes from the centre, offset and size at each peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mvxray.detectors2d.checkpoint import config_from_dict
from mvxray.detectors2d.normalize import TorchDetectorMixin, check_input_resize


@dataclass(frozen=True)
class HeatmapConfig:
    """Heatmap detector options.

    Attributes:
        widths: channels of the U-Net levels (full resolution, then each ×½ in size).
        score_thresh: drop peaks scoring below.
        detections_per_img: at most this many boxes per view.
        sigma_frac: Gaussian target σ = max(``min_sigma_px``, ``sigma_frac`` · √(w·h)).
        min_sigma_px: smallest target σ, px.
        size_weight: weight of the log-size L1 loss.
        offset_weight: weight of the centre-offset L1 loss.
        input_size: resize square views to this size (``None``: as given).
        input_scale: resize views by this factor before the network (``None``: as given; not
            with ``input_size``). 2 makes a 5-px indication cover 4× the stride-4 cells.
        bg_sigma_frac: input background-subtraction σ / image height.
        batch_size: views per forward pass at inference.
        tta: at inference, average the heatmap over the view turned by 0, 90, 180 and 270°
            (0 and 180° for non-square views) — the turns training augments with; sizes and
            offsets come from the unturned view. Makes the heatmap equivariant to the turns.
        object_px_mm: the training views' mm per pixel at the object, and ``filter_height``
            their height, px: recorded by training, used by
            :func:`~mvxray.detectors2d.base.predict_sample` (``None``: views as given).
        max_box_px: boxes whose longer side exceeds this (px of the views at the trained
            scale) are dropped; training on crops records the crop's size (``None``: no limit).
    """

    widths: tuple[int, ...] = (16, 32, 64, 128)
    score_thresh: float = 0.01
    detections_per_img: int = 100
    sigma_frac: float = 1 / 6
    min_sigma_px: float = 0.75
    size_weight: float = 1.0
    offset_weight: float = 1.0
    input_size: int | None = None
    input_scale: float | None = None
    bg_sigma_frac: float = 1 / 32
    batch_size: int = 8
    tta: bool = True
    object_px_mm: float | None = None
    filter_height: int | None = None
    max_box_px: float | None = None

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(
                f"HeatmapConfig.widths: expected >= 2 positive widths, found {self.widths}"
            )
        odd = [w for w in self.widths if w % _groups(w)]
        if odd:
            raise ValueError(
                f"HeatmapConfig.widths: each must be below 8 or a multiple of 8 (GroupNorm's "
                f"8 groups), found {odd} in {self.widths}"
            )
        check_input_resize(self)


def _groups(width: int) -> int:
    """GroupNorm's groups for a level of ``width`` channels."""
    return min(8, width)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.GroupNorm(_groups(cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.GroupNorm(_groups(cout), cout),
        nn.ReLU(inplace=True),
    )


class HeatmapNet(nn.Module):
    """U-Net ``(B, 3, H, W)`` → heat logits ``(B, 1, H, W)``, log size and offset ``(B, 2, H, W)``.

    Example:
        >>> out = HeatmapNet((8, 16))(torch.zeros(1, 3, 30, 30))
        >>> [tuple(t.shape) for t in out]
        [(1, 1, 30, 30), (1, 2, 30, 30), (1, 2, 30, 30)]
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            _block(cin, cout, 1 if i == 0 else 2)
            for i, (cin, cout) in enumerate(zip((in_channels, *widths[:-1]), widths))
        )
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1)
        )
        w0 = widths[0]
        self.heat = nn.Conv2d(w0, 1, 1)
        self.size = nn.Conv2d(w0, 2, 1)
        self.offset = nn.Conv2d(w0, 2, 1)
        nn.init.constant_(self.heat.bias, -math.log((1 - 0.01) / 0.01))  # prior p = 0.01

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.heat(x), self.size(x), torch.sigmoid(self.offset(x))


def heatmap_targets(
    boxes: torch.Tensor, height: int, width: int, sigma_frac: float, min_sigma_px: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training targets of one image.

    Args:
        boxes: ``(N, 4)`` px (x1, y1, x2, y2); boxes whose centre lies outside are ignored.
        height: image rows.
        width: image columns.
        sigma_frac: σ of a box's Gaussian as a fraction of √(w·h).
        min_sigma_px: smallest σ, px.

    Returns:
        heat ``(H, W)`` in [0, 1] (exactly 1 at each centre pixel), centre pixels ``(P, 2)``
        (row, col), log sizes ``(P, 2)`` (log w, log h) and offsets ``(P, 2)`` in [0, 1) of
        the kept boxes.

    Example:
        >>> heat, idx, size, off = heatmap_targets(torch.tensor([[2.0, 3, 6, 5]]), 8, 8, 1 / 6, 0.75)
        >>> idx.tolist(), float(heat[4, 4]), off.tolist()
        ([[4, 4]], 1.0, [[0.0, 0.0]])
    """
    b = boxes.float().reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2  # (x, y), continuous px (pixel centres at +0.5)
    col, row = centre[:, 0].floor().long(), centre[:, 1].floor().long()
    keep = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    b, centre, col, row = b[keep], centre[keep], col[keep], row[keep]
    wh = (b[:, 2:] - b[:, :2]).clamp(min=1.0)
    sigma = (sigma_frac * wh.prod(-1).sqrt()).clamp(min=min_sigma_px)
    ys = torch.arange(height, device=b.device, dtype=torch.float32)
    xs = torch.arange(width, device=b.device, dtype=torch.float32)
    d2 = (ys[None, :, None] - row[:, None, None]) ** 2 + (
        xs[None, None, :] - col[:, None, None]
    ) ** 2
    g = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    heat = g.amax(0) if len(b) else torch.zeros(height, width, device=b.device)
    idx = torch.stack([row, col], -1)
    offset = centre - torch.stack([col, row], -1).float()
    return heat, idx, wh.log(), offset


def centernet_focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel focal loss (α = 2, β = 4), summed over pixels.

    Written here because torchvision's ``sigmoid_focal_loss`` has no Gaussian-softened
    negatives: pixels next to a centre must be penalized less than the background.

    Example:
        >>> heat = torch.zeros(1, 1, 4, 4); heat[0, 0, 1, 1] = 1.0
        >>> good, bad = torch.full_like(heat, -6.0), torch.full_like(heat, -6.0)
        >>> good[0, 0, 1, 1] = 6.0
        >>> bool(centernet_focal_loss(good, heat) < centernet_focal_loss(bad, heat))
        True
    """
    p = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    pos = heat >= 1.0
    pos_loss = -((1 - p) ** 2) * torch.log(p)
    neg_loss = -((1 - heat) ** 4) * p**2 * torch.log(1 - p)
    return torch.where(pos, pos_loss, neg_loss).sum()


def heat_loss(
    logits: torch.Tensor, boxes: list[torch.Tensor], sigma_frac: float, min_sigma_px: float
) -> torch.Tensor:
    """:func:`centernet_focal_loss` of ``(B, 1, H, W)`` heat logits against the targets of each
    image's ``(N_b, 4)`` px boxes (:func:`heatmap_targets`), per indication centre.

    Example:
        >>> boxes = [torch.tensor([[2.0, 2, 6, 6]])]
        >>> hit, miss = torch.full((1, 1, 8, 8), -6.0), torch.full((1, 1, 8, 8), -6.0)
        >>> hit[0, 0, 4, 4] = 6.0
        >>> bool(heat_loss(hit, boxes, 1 / 6, 0.75) < heat_loss(miss, boxes, 1 / 6, 0.75))
        True
    """
    H, W = logits.shape[-2:]
    targets = [heatmap_targets(b, H, W, sigma_frac, min_sigma_px) for b in boxes]
    heat = torch.stack([t[0] for t in targets])[:, None].to(logits.device)
    return centernet_focal_loss(logits, heat) / max(sum(len(t[1]) for t in targets), 1)


class HeatmapDetector(TorchDetectorMixin):
    """CenterNet-style heatmap detector on ``(V, 1, H, W)`` X-ray views (any intensity scale).

    Example:
        >>> det = HeatmapDetector(widths=(8, 16))
        >>> [tuple(d.boxes.shape[1:]) for d in det.predict(torch.rand(2, 1, 32, 32))]
        [(4,), (4,)]
    """

    name = "heatmap"
    config_class = HeatmapConfig

    def __init__(self, config: HeatmapConfig | None = None, **overrides: Any) -> None:
        self.config = config_from_dict(HeatmapConfig, overrides) if config is None else config
        self.model = HeatmapNet(tuple(self.config.widths))
        self.model.eval()

    def training_loss(self, x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Focal heat loss + weighted L1 on log size and offset, per centre, for
        :meth:`prepare`-d ``(B, 3, h, w)`` inputs (or crops) and their ``(N_b, 4)`` px boxes."""
        c = self.config
        heat_logits, size, offset = self.model(x)
        H, W = x.shape[-2:]
        heat_t, size_l1, off_l1, n_pos = [], x.new_zeros(()), x.new_zeros(()), 0
        for i, b in enumerate(boxes):
            heat, idx, log_wh, off = heatmap_targets(b, H, W, c.sigma_frac, c.min_sigma_px)
            heat_t.append(heat)
            if len(idx):
                r, col = idx[:, 0], idx[:, 1]
                size_l1 = size_l1 + (size[i, :, r, col].T - log_wh).abs().sum()
                off_l1 = off_l1 + (offset[i, :, r, col].T - off).abs().sum()
                n_pos += len(idx)
        focal = centernet_focal_loss(heat_logits, torch.stack(heat_t)[:, None])
        return (focal + c.size_weight * size_l1 + c.offset_weight * off_l1) / max(n_pos, 1)

    def _detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """3×3 local maxima of the heatmap above ``score_thresh`` → boxes (px of ``x``), and
        the dense heatmap itself (for the ``voting`` lifter)."""
        c = self.config
        heat_logits, size, offset = self.model(x)
        heat = torch.sigmoid(heat_logits)[:, 0]
        if c.tta:
            turns = (1, 2, 3) if x.shape[-1] == x.shape[-2] else (2,)
            for k in turns:
                turned = torch.sigmoid(self.model(torch.rot90(x, k, (-2, -1)))[0])[:, 0]
                heat = heat + torch.rot90(turned, -k, (-2, -1))
            heat = heat / (1 + len(turns))
        peaks = heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]
        w = heat.shape[-1]
        out = []
        for i in range(len(x)):
            score = torch.where(peaks[i], heat[i], torch.zeros_like(heat[i])).flatten()
            top, flat = score.topk(min(c.detections_per_img, score.numel()))
            keep = top >= c.score_thresh
            top, flat = top[keep], flat[keep]
            row, col = flat // w, flat % w
            centre = torch.stack([col, row], -1).float() + offset[i, :, row, col].T
            half = size[i, :, row, col].T.exp() / 2
            boxes = torch.cat([centre - half, centre + half], -1)
            out.append((boxes, top, torch.zeros_like(flat), heat[i]))
        return out
