"""Per-pixel ray-embedding encoders: image ``(B, 1, H, W)`` → embeddings ``(B, D, h, w)``.

The default is a small convolutional encoder-decoder (a U-Net with three scales) that trains on
a CPU in minutes; ``timm_vit`` wraps a timm ViT (``weights=None`` — nothing is downloaded) whose
patch tokens are decoded by a convolution and bilinear upsampling. Each image is normalized on
its own (robust percentiles), so any intensity scale — line integrals, HU-derived DRRs,
8-bit fluoroscopy — gives the same embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def normalize_images(images: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Per-image robust intensity normalization to roughly [0, 1].

    Args:
        images: ``(B, C, H, W)`` any intensity scale.
        low: lower quantile mapped to 0.
        high: upper quantile mapped to 1.

    Returns:
        ``(B, C, H, W)`` float32, ``(x − q_low) / (q_high − q_low)`` per image.

    Example:
        >>> x = torch.linspace(0, 1000, 101).reshape(1, 1, 1, 101)
        >>> torch.allclose(normalize_images(x), normalize_images(3.0 * x + 7.0), atol=1e-5)
        True
    """
    x = images.float()
    flat = x.reshape(x.shape[0], -1)
    q = torch.quantile(flat, torch.tensor([low, high], device=x.device), dim=1)  # (2, B)
    lo = q[0].reshape(-1, 1, 1, 1)
    span = (q[1] - q[0]).reshape(-1, 1, 1, 1).clamp_min(1e-6)
    return (x - lo) / span


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.SiLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """A small U-Net: ``(B, 1, H, W)`` → ``(B, D, H / 2**out_stride_log2, …)``.

    Args:
        emb_dim: embedding channels D.
        width: channels at the first scale (doubled per scale).
        depth: number of downsampling steps (H and W must be divisible by ``2**depth``).
        out_stride_log2: the output grid is ``H / 2**out_stride_log2`` (0 = full resolution).

    Example:
        >>> UNetEncoder(8, width=4, depth=2)(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self, emb_dim: int = 32, width: int = 16, depth: int = 3, out_stride_log2: int = 0
    ) -> None:
        super().__init__()
        if not 0 <= out_stride_log2 <= depth:
            raise ValueError(f"out_stride_log2 must be in [0, {depth}], found {out_stride_log2}")
        self.depth = depth
        self.out_stride_log2 = out_stride_log2
        chans = [width * 2**i for i in range(depth + 1)]
        # Two coordinate channels let the embedding tell apart rays with similar local texture.
        self.stem = _block(3, chans[0])
        self.downs = nn.ModuleList(_block(chans[i], chans[i + 1]) for i in range(depth))
        n_up = depth - out_stride_log2
        self.ups = nn.ModuleList(
            _block(chans[depth - i] + chans[depth - i - 1], chans[depth - i - 1])
            for i in range(n_up)
        )
        self.head = nn.Conv2d(chans[out_stride_log2], emb_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` normalized images → ``(B, D, h, w)`` embeddings."""
        B, _, H, W = x.shape
        if H % 2**self.depth or W % 2**self.depth:
            raise ValueError(f"images: H and W must be divisible by {2**self.depth}, found {H}x{W}")
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype),
            torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype),
            indexing="ij",
        )
        h = self.stem(torch.cat([x, xx.expand(B, 1, H, W), yy.expand(B, 1, H, W)], 1))
        skips = [h]
        for down in self.downs:
            h = down(F.avg_pool2d(h, 2))
            skips.append(h)
        for i, up in enumerate(self.ups):
            skip = skips[self.depth - i - 1]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skip], 1))
        return self.head(h)


class TimmViTEncoder(nn.Module):
    """A timm ViT backbone (random init, ``weights=None``) with a convolutional decoder.

    Args:
        emb_dim: embedding channels D.
        image_size: square input size, px (must be a multiple of ``patch_size``).
        model_name: a timm ViT name, e.g. ``"vit_tiny_patch16_224"``.
        patch_size: the ViT's patch size, px.
        out_stride_log2: output grid ``image_size / 2**out_stride_log2``.
    """

    def __init__(
        self,
        emb_dim: int = 32,
        image_size: int = 128,
        model_name: str = "vit_tiny_patch16_224",
        patch_size: int = 16,
        out_stride_log2: int = 1,
    ) -> None:
        super().__init__()
        import timm

        self.vit = timm.create_model(
            model_name,
            pretrained=False,
            img_size=image_size,
            patch_size=patch_size,
            in_chans=1,
            num_classes=0,
            global_pool="",
        )
        self.prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        self.grid = image_size // patch_size
        self.out_size = image_size // 2**out_stride_log2
        dim = int(self.vit.num_features)
        self.local = _block(1, 16)
        self.head = nn.Sequential(
            nn.Conv2d(dim + 16, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, emb_dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` → ``(B, D, h, w)``."""
        tok = self.vit.forward_features(x)[:, self.prefix :]  # (B, g*g, C)
        B, _, C = tok.shape
        g = self.grid
        feat = tok.transpose(1, 2).reshape(B, C, g, g)
        feat = F.interpolate(feat, size=(self.out_size,) * 2, mode="bilinear", align_corners=False)
        loc = F.interpolate(self.local(x), size=(self.out_size,) * 2, mode="area")
        return self.head(torch.cat([feat, loc], 1))


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder and how big.

    Attributes:
        name: a key of :data:`ENCODERS` (``"unet"`` or ``"timm_vit"``).
        emb_dim: embedding channels D.
        width: U-Net first-scale channels.
        depth: U-Net downsampling steps.
        out_stride_log2: output grid is the image size / ``2**out_stride_log2``.
        image_size: input size for ``timm_vit`` (square), px.
        vit_name: timm model name for ``timm_vit``.
    """

    name: str = "unet"
    emb_dim: int = 32
    width: int = 16
    depth: int = 3
    out_stride_log2: int = 0
    image_size: int = 128
    vit_name: str = "vit_tiny_patch16_224"


def _unet(cfg: EncoderConfig) -> nn.Module:
    return UNetEncoder(cfg.emb_dim, cfg.width, cfg.depth, cfg.out_stride_log2)


def _vit(cfg: EncoderConfig) -> nn.Module:
    return TimmViTEncoder(
        cfg.emb_dim, cfg.image_size, cfg.vit_name, out_stride_log2=cfg.out_stride_log2
    )


#: Encoder name → factory taking an :class:`EncoderConfig`.
ENCODERS: dict[str, Callable[[EncoderConfig], nn.Module]] = {"unet": _unet, "timm_vit": _vit}


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """Instantiate the encoder named by ``cfg.name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if cfg.name not in ENCODERS:
        raise KeyError(f"encoder: unknown name {cfg.name!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[cfg.name](cfg)
