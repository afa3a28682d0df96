"""Image encoders of the MV2D lifter: per-image normalization → one stride-s feature map.

* ``small``: four 3×3 convolutions with GroupNorm (stride 4) — trains on a CPU in minutes.
* ``resnet18``: torchvision's ResNet-18 (``weights=None``: nothing is downloaded) up to
  ``layer2``, fused into a stride-4 map by torchvision's ``FeaturePyramidNetwork``.
* ``detector``: the finest feature map of a 2D detector's own backbone
  (:class:`DetectorEncoder`, e.g. ``faster_rcnn``'s FPN) — one backbone for the 2D and the 3D
  task, as in MV2D, trained by both losses in joint 2D+3D training.

X-ray intensities differ between datasets and renderers, so every image is standardized
(zero mean, unit variance) before the encoder — no dataset-specific constant.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import FeaturePyramidNetwork

#: Encoder names accepted by :func:`build_encoder` (``detector`` is built from a detector:
#: :class:`DetectorEncoder`).
ENCODERS = ("small", "resnet18", "detector")


def standardize(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image (and per-channel) zero mean, unit variance: ``(N, C, H, W)`` → same shape.

    Example:
        >>> x = standardize(torch.arange(8.0).reshape(1, 1, 2, 4) * 5 + 3)
        >>> abs(round(float(x.mean()), 6)), round(float(x.std(unbiased=False)), 4)
        (0.0, 1.0)
    """
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (images - mean) / (std + eps)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class SmallEncoder(nn.Module):
    """A stride-4 CNN: ``(N, C, H, W)`` → ``(N, F, H/4, W/4)``."""

    stride = 4

    def __init__(self, in_channels: int = 1, channels: int = 64) -> None:
        super().__init__()
        half = max(channels // 2, 8)
        self.body = nn.Sequential(
            _conv(in_channels, half // 2, 2),
            _conv(half // 2, half, 2),
            _conv(half, channels, 1),
            _conv(channels, channels, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class ResNet18FPN(nn.Module):
    """ResNet-18 ``layer1`` + ``layer2`` fused by an FPN into a stride-4 map of F channels."""

    stride = 4

    def __init__(self, in_channels: int = 1, channels: int = 64) -> None:
        super().__init__()
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.fpn = FeaturePyramidNetwork([64, 128], channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c1 = self.layer1(self.stem(images))
        c2 = self.layer2(c1)
        return self.fpn(OrderedDict([("c1", c1), ("c2", c2)]))["c1"]


class DetectorEncoder(nn.Module):
    """A 2D detector's backbone as MV2D's encoder: its finest map, projected to F channels.

    The detector's network becomes a sub-module, so the lifter's optimizer, checkpoints and
    state dict cover it; the stride is read from the map (image rows / map rows).

    Args:
        detector: a :class:`~mvxray.detectors2d.base.FeatureDetector2D` with a ``module``
            (``faster_rcnn``).
        channels: F.

    Raises:
        TypeError: the detector exposes no feature maps.
    """

    def __init__(self, detector: Any, channels: int) -> None:
        super().__init__()
        if not (callable(getattr(detector, "features", None)) and hasattr(detector, "module")):
            raise TypeError(
                f"encoder 'detector': {getattr(detector, 'name', type(detector).__name__)!r} "
                "exposes no feature maps; use a detector with features() (faster_rcnn)"
            )
        self.detector = detector.module  # registered: trained and saved with the lifter
        self._features = detector.features
        with torch.no_grad():
            probe = torch.rand(1, 1, 64, 64, device=next(detector.module.parameters()).device)
            width = next(iter(detector.features(probe)[0].values())).shape[1]
        self.proj = nn.Conv2d(width, channels, 1)
        self.stride: float = 4.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats, strides = self._features(images)
        finest = min(strides, key=lambda k: strides[k])
        self.stride = images.shape[-2] / feats[finest].shape[-2]
        return self.proj(feats[finest])


def build_encoder(name: str, in_channels: int, channels: int) -> nn.Module:
    """An encoder by name (see :data:`ENCODERS`); it has a ``stride`` attribute (px).

    Example:
        >>> enc = build_encoder("small", 1, 16)
        >>> tuple(enc(torch.zeros(2, 1, 32, 32)).shape), enc.stride
        ((2, 16, 8, 8), 4)
    """
    if name == "small":
        return SmallEncoder(in_channels, channels)
    if name == "resnet18":
        return ResNet18FPN(in_channels, channels)
    if name == "detector":
        raise ValueError("encoder 'detector' is built from a detector: DetectorEncoder(det, F)")
    raise KeyError(f"encoder {name!r}: unknown; expected one of {list(ENCODERS)}")
