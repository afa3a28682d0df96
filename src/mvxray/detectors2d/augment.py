"""Training-time view augmentations for the 2D detectors: crops, flips and 90° turns that move
the boxes with the pixels, and photometric changes on the normalized image.

Photometric changes act after :func:`~mvxray.detectors2d.normalize.robust_normalize`, because
every detector normalizes its input per image anyway (brightness / contrast alone would be
no-ops). All randomness comes from the given ``torch.Generator`` (reproducible runs).
"""

from __future__ import annotations

import torch

from mvxray.detectors2d.normalize import _blur, robust_normalize

#: Default largest blur σ, px of the raw view (``TrainConfig.blur_px``, ``--blur-px``).
BLUR_PX = 0.4


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def random_crop(
    image: torch.Tensor, boxes: torch.Tensor, size: int, positive: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` × ``size`` crop of a ``(C, H, W)`` image and its ``(N, 4)`` px boxes.

    With probability ``positive`` (and if there are boxes) the crop contains a randomly chosen
    box at a random place; otherwise it is uniform. Boxes are shifted, clipped to the crop and
    kept when at least half of their area (and ≥ 1 px per side) remains.

    Example:
        >>> im, b = random_crop(torch.zeros(1, 64, 64), torch.tensor([[40.0, 40, 48, 48]]), 32, 1.0,
        ...                     torch.Generator().manual_seed(0))
        >>> im.shape, len(b), float(b[0, 2] - b[0, 0])
        (torch.Size([1, 32, 32]), 1, 8.0)
    """
    _, H, W = image.shape
    ch, cw = min(size, H), min(size, W)
    if len(boxes) and _u(g) < positive:
        b = boxes[int(torch.randint(len(boxes), (1,), generator=g))]
        # crop origin range that keeps box b inside (when it fits)
        x_lo, x_hi = max(0, int(b[2].ceil()) - cw), min(W - cw, int(b[0].floor()))
        y_lo, y_hi = max(0, int(b[3].ceil()) - ch), min(H - ch, int(b[1].floor()))
        x_lo, y_lo = min(x_lo, x_hi), min(y_lo, y_hi)
        x0 = int(torch.randint(x_lo, x_hi + 1, (1,), generator=g))
        y0 = int(torch.randint(y_lo, y_hi + 1, (1,), generator=g))
    else:
        x0 = int(torch.randint(0, W - cw + 1, (1,), generator=g))
        y0 = int(torch.randint(0, H - ch + 1, (1,), generator=g))
    crop = image[:, y0 : y0 + ch, x0 : x0 + cw]
    if not len(boxes):
        return crop, boxes.reshape(0, 4)
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    lim = torch.tensor([cw, ch, cw, ch], dtype=boxes.dtype)
    clipped = shifted.clamp(min=0).minimum(lim)
    area = lambda b: (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # noqa: E731
    wh = clipped[:, 2:] - clipped[:, :2]
    keep = (area(clipped) >= 0.5 * area(shifted)) & (wh >= 1).all(dim=1)
    return crop, clipped[keep]


def flip_rotate(
    image: torch.Tensor, boxes: torch.Tensor, hflip: bool, vflip: bool, rot90: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (horizontal, vertical) then turn by ``rot90`` quarter turns (counter-clockwise as
    displayed), moving the ``(N, 4)`` px boxes with the pixels.

    Example:
        >>> im = torch.zeros(1, 4, 6); im[0, 1, 4] = 1
        >>> out, b = flip_rotate(im, torch.tensor([[4.0, 1, 5, 2]]), False, False, 1)
        >>> out.shape, out[0].nonzero().tolist(), b.tolist()
        (torch.Size([1, 6, 4]), [[1, 1]], [[1.0, 1.0, 2.0, 2.0]])
    """
    _, H, W = image.shape
    b = boxes.clone()
    if hflip:
        image = image.flip(-1)
        b = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    if vflip:
        image = image.flip(-2)
        b = torch.stack([b[:, 0], H - b[:, 3], b[:, 2], H - b[:, 1]], dim=1)
    for _ in range(rot90 % 4):
        # torch.rot90 (dims -2, -1): new[r, c] = old[c, W - 1 - r] → (u, v) ↦ (v, W − u)
        _h, w = image.shape[-2:]
        image = torch.rot90(image, 1, dims=(-2, -1))
        b = torch.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], dim=1)
    return image, b.reshape(-1, 4)


def photometric(
    image: torch.Tensor, g: torch.Generator, p: float = 0.5, blur_px: float = BLUR_PX
) -> torch.Tensor:
    """Gamma, Gaussian noise and a blur of σ up to ``blur_px`` pixels (each with probability
    ``p``) on the normalized image."""
    x = robust_normalize(image[None])[0].clamp(0, 1)
    if _u(g) < p:
        x = x.pow(_u(g, 0.7, 1.5))
    if _u(g) < p:
        sigma = _u(g, 0.0, blur_px)
        x = _blur(x[None], sigma)[0] if sigma > 0.2 else x
    if _u(g) < p:
        # at most 1 % of the normalized range: a 6-20 mm nodule peaks at 1.7-5 % of it (chest
        # phantom, 10th-90th percentile), so stronger noise would erase the faint ones
        noise = torch.randn(x.shape, generator=g) * _u(g, 0.0, 0.01)
        x = x + noise.to(x.device)
    return x


def random_flip_rotate(
    image: torch.Tensor, boxes: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal / vertical flips and quarter turns (boxes follow) of a ``(C, h, w)`` view.

    Quarter turns are only drawn for square images, so batches keep one shape.
    """
    h, w = image.shape[-2:]
    hflip, vflip = _u(g) < 0.5, _u(g) < 0.5
    rot = int(torch.randint(4, (1,), generator=g)) if h == w else 0
    return flip_rotate(image, boxes, hflip, vflip, rot)


def augment_view(
    image: torch.Tensor, boxes: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`photometric` then :func:`random_flip_rotate` of one ``(1, h, w)`` raw view."""
    return random_flip_rotate(photometric(image, g), boxes, g)
