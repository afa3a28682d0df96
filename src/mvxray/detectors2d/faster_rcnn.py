"""``faster_rcnn``: torchvision's Faster R-CNN, sized for small indications in X-rays.

This module is the one adapter for torchvision's conventions: its target dicts
(``{"boxes", "labels"}`` with 0 = background, so mvxray class ``k`` is torchvision class
``k + 1``), its ``GeneralizedRCNNTransform`` (replaced by one that does not resize — no silent
upscaling to 800 px; ``input_size`` resizes explicitly and boxes are mapped back) and its
ImageNet mean / std (unused: the input is :func:`~mvxray.detectors2d.normalize.xray_channels`,
three channels built from the one X-ray channel, already normalized per image).

Backbones are built with ``weights=None`` (nothing is downloaded) and plain, trainable
batch norm by default (from scratch, a FrozenBatchNorm has nothing to freeze, and its
denormal floats slow a CPU down ~2.5×; we also call ``torch.set_flush_denormal(True)``).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, misc
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from mvxray.detectors2d.base import Detections2D
from mvxray.detectors2d.checkpoint import config_from_dict
from mvxray.detectors2d.normalize import TorchDetectorMixin, check_input_resize

BACKBONES = ("resnet50_fpn", "resnet34_fpn", "resnet18_fpn", "mobilenet_v3")


@dataclass(frozen=True)
class FasterRCNNConfig:
    """Faster R-CNN options (defaults: the seed's, except the CPU-friendly backbone choice is yours).

    Attributes:
        backbone: one of :data:`BACKBONES`.
        strides: FPN level strides, px (seed: 8, 16, 32, 64, 128; use 4, … for tiny objects).
            Levels above 32 come from extra blocks (64 alone: max-pool; 64 and 128: P6/P7).
        anchor_scales: anchor sizes per level = ``scale · anchor_base · stride``, px.
        anchor_ratios: anchor aspect ratios (h / w).
        anchor_base: see ``anchor_scales``.
        rpn_nms: RPN non-maximum-suppression IoU (seed 0.6).
        box_nms: final per-class NMS IoU (seed 0.7).
        score_thresh: drop detections scoring below (seed 0.05).
        detections_per_img: at most this many boxes per view (seed 100).
        rpn_pre_nms_top_n: RPN proposals kept per level before NMS (train, test).
        rpn_post_nms_top_n: RPN proposals kept after NMS (train, test).
        box_batch_size_per_image: RoIs sampled per image to train the box head (the CPU cost
            of a step is mostly here: 128 instead of 512 makes a step ~3× cheaper).
        representation_size: width of the box head's two fully connected layers.
        roi_sampling_ratio: RoIAlign sampling points per bin and axis (torchvision's 2). A
            5–15 px indication spans 1–4 cells of a stride-4 map, so its 7 × 7 bins need no
            more than 1; on a CPU, RoIAlign's backward is then ~4× cheaper (it was a third of
            a ResNet-18-FPN step on 128-px crops).
        input_size: resize views to this square size before the network (``None``: as given).
        input_scale: resize views by this factor before the network (``None``: as given; not
            with ``input_size``). 2 makes a 5-px indication cover 4× the stride-4 cells.
        norm: ``"batch"`` (trainable BatchNorm) or ``"frozen"`` (torchvision's FrozenBatchNorm).
        num_classes: indication classes (without background).
        bg_sigma_frac: input background-subtraction σ / image height.
        object_px_mm: the training views' mm per pixel at the object, and ``filter_height``
            their height, px: recorded by training, used by
            :func:`~mvxray.detectors2d.base.predict_sample` (``None``: views as given).
        max_box_px: boxes whose longer side exceeds this (px of the views at the trained
            scale) are dropped; training on crops records the crop's size (``None``: no limit).
        batch_size: views per forward pass at inference.
    """

    backbone: str = "resnet50_fpn"
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    anchor_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_base: float = 1.0
    rpn_nms: float = 0.6
    box_nms: float = 0.7
    score_thresh: float = 0.05
    detections_per_img: int = 100
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000)
    rpn_post_nms_top_n: tuple[int, int] = (1000, 300)
    box_batch_size_per_image: int = 512
    representation_size: int = 1024
    roi_sampling_ratio: int = 2
    input_size: int | None = None
    input_scale: float | None = None
    norm: str = "batch"
    num_classes: int = 1
    bg_sigma_frac: float = 1 / 32
    batch_size: int = 8
    object_px_mm: float | None = None
    filter_height: int | None = None
    max_box_px: float | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"FasterRCNNConfig.backbone: expected one of {BACKBONES}, found {self.backbone!r}"
            )
        ok = all(s in (4, 8, 16, 32, 64, 128) for s in self.strides) and list(
            self.strides
        ) == sorted(set(self.strides))
        core = [s for s in self.strides if s <= 32]
        if not ok or not core or core != [core[0] * 2**i for i in range(len(core))]:
            raise ValueError(
                f"FasterRCNNConfig.strides: expected increasing consecutive powers of two in 4..128, "
                f"found {self.strides}"
            )
        if [s for s in self.strides if s > 32] not in ([], [64], [64, 128]) or (
            len(self.strides) > len(core) and core[-1] != 32
        ):
            raise ValueError(
                f"FasterRCNNConfig.strides: levels above 32 must be 64 or 64, 128; found {self.strides}"
            )
        if self.norm not in ("batch", "frozen"):
            raise ValueError(
                f"FasterRCNNConfig.norm: expected 'batch' or 'frozen', found {self.norm!r}"
            )
        check_input_resize(self)


@contextlib.contextmanager
def flush_denormal() -> Iterator[None]:
    """Flush denormal floats to zero inside the block (a CPU-global flag, so it is switched back
    off after: other code, e.g. hypothesis, relies on IEEE subnormals)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: mvxray decides the input size itself."""

    def resize(self, image, target=None):  # type: ignore[override]
        return image, target


class _NoExtraLevel(ExtraFPNBlock):
    """No level above the last returned one (torchvision adds a max-pool level when given None)."""

    def forward(self, results, x, names):  # type: ignore[override]
        return results, names


def _backbone(cfg: FasterRCNNConfig) -> nn.Module:
    norm = nn.BatchNorm2d if cfg.norm == "batch" else misc.FrozenBatchNorm2d
    core = [s for s in cfg.strides if s <= 32]
    extras = [s for s in cfg.strides if s > 32]
    extra = (
        LastLevelP6P7(256, 256)
        if len(extras) == 2
        else LastLevelMaxPool()
        if extras
        else _NoExtraLevel()
    )
    if cfg.backbone.startswith("resnet"):
        # resnet layer k (1..4) has stride 2^(k+1)
        layers = [int(math.log2(s)) - 1 for s in core]
        return resnet_fpn_backbone(
            backbone_name=cfg.backbone.removesuffix("_fpn"),
            weights=None,
            norm_layer=norm,
            trainable_layers=5,
            returned_layers=layers,
            extra_blocks=extra,
        )
    # mobilenet_v3_large stages 1..4 have strides 4..32; stage 5 (960 ch) is the last, stride 32
    layers = [{4: 1, 8: 2, 16: 3, 32: 5}[s] for s in core]
    return mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=None,
        fpn=True,
        norm_layer=norm,
        trainable_layers=6,
        returned_layers=layers,
        extra_blocks=extra,
    )


def build_model(cfg: FasterRCNNConfig) -> FasterRCNN:
    """The torchvision model for ``cfg`` (random init, no download)."""
    backbone = _backbone(cfg)
    sizes = tuple(tuple(sc * cfg.anchor_base * s for sc in cfg.anchor_scales) for s in cfg.strides)
    anchors = AnchorGenerator(sizes, (tuple(cfg.anchor_ratios),) * len(cfg.strides))
    n_core = len([s for s in cfg.strides if s <= 32])
    roi_pool = MultiScaleRoIAlign(
        [str(i) for i in range(n_core)], output_size=7, sampling_ratio=cfg.roi_sampling_ratio
    )
    model = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        rpn_nms_thresh=cfg.rpn_nms,
        box_nms_thresh=cfg.box_nms,
        box_score_thresh=cfg.score_thresh,
        box_detections_per_img=cfg.detections_per_img,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n[0],
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n[1],
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_head=TwoMLPHead(256 * 7 * 7, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes + 1),
    )
    model.transform = _NoResizeTransform(1, 1, [0.0] * 3, [1.0] * 3)
    return model


class FasterRCNNDetector(TorchDetectorMixin):
    """Faster R-CNN on ``(V, 1, H, W)`` X-ray views (any intensity scale).

    Example:
        >>> det = FasterRCNNDetector(backbone="resnet18_fpn", strides=(8, 16, 32))
        >>> [d.boxes.shape[1] for d in det.predict(torch.rand(2, 1, 64, 64))]
        [4, 4]
    """

    name = "faster_rcnn"
    config_class = FasterRCNNConfig

    def __init__(self, config: FasterRCNNConfig | None = None, **overrides: Any) -> None:
        self.config = config_from_dict(FasterRCNNConfig, overrides) if config is None else config
        self.model = build_model(self.config)
        self.model.eval()

    @staticmethod
    def _targets(boxes: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """mvxray boxes (px, class 0) → torchvision target dicts (class 1, 0 = background)."""
        return [
            {
                "boxes": b.float().reshape(-1, 4),
                "labels": torch.ones(len(b), dtype=torch.long, device=b.device),
            }
            for b in boxes
        ]

    def training_loss(self, x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Sum of RPN and RoI-head losses for :meth:`prepare`-d ``(B, 3, h, w)`` inputs (or crops
        of them) and their ``(N_b, 4)`` px boxes in the same pixels."""
        losses = self.model(list(x), self._targets([b.to(x.device) for b in boxes]))
        return sum(losses.values())  # type: ignore[return-value]

    def predict(self, images: torch.Tensor) -> list[Detections2D]:
        """:meth:`TorchDetectorMixin.predict` with denormal floats flushed."""
        with flush_denormal():
            return super().predict(images)

    def _detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """torchvision's detections of the prepared views (its class 0 is the background)."""
        # The config is the truth at prediction time (a copy with other thresholds shares
        # the network: MultiViewDetector lowers them).
        heads = self.model.roi_heads
        heads.score_thresh = self.config.score_thresh
        heads.detections_per_img = self.config.detections_per_img
        return [(r["boxes"], r["scores"], r["labels"] - 1) for r in self.model(list(x))]

    # ------------------------------------------------------------------ features for MV2D
    def features(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """FPN maps ``{name: (V, 256, H/s, W/s)}`` and their strides ``{name: s}`` (px of ``images``).

        Differentiable (joint 2D+3D training backpropagates through it); wrap in
        ``torch.no_grad()`` for inference."""
        x, _ = self.prepare(images)
        feats = self.model.backbone(x)
        H = images.shape[-2]
        return feats, {k: round(H / v.shape[-2]) for k, v in feats.items()}

    def roi_features(
        self, features: dict[str, torch.Tensor], rois: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``(N, 256, 7, 7)`` RoIAlign features of ``(N, 5)`` boxes (view index, x1, y1, x2, y2).

        Boxes are in px of the images given to :meth:`features`, ``image_size`` = their (H, W).
        """
        V = next(iter(features.values())).shape[0]
        per_view = [rois[rois[:, 0] == v, 1:].float() for v in range(V)]
        order = torch.cat([torch.nonzero(rois[:, 0] == v).flatten() for v in range(V)])
        pooled = self.model.roi_heads.box_roi_pool(
            OrderedDict(features), per_view, [image_size] * V
        )
        out = torch.empty_like(pooled)
        out[order] = pooled
        return out

    # ------------------------------------------------------------------ train / io
    def fit(
        self, train: Any, val: Any | None = None, config: Any = None, **kwargs: Any
    ) -> dict[str, float]:
        """:meth:`TorchDetectorMixin.fit` with denormal floats flushed (see the module doc)."""
        with flush_denormal():
            return super().fit(train, val, config, **kwargs)

    def load_weights(self, path: str | Path) -> None:
        """Load a user's torchvision-style ``state_dict`` file (e.g. trained elsewhere)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state", state) if isinstance(state, dict) else state
        self.model.load_state_dict(state)
