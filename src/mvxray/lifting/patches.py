"""The image branch of ``voting_fpr``: X-ray patches around each vote candidate, and a CNN on them.

The vote's features (:func:`mvxray.lifting.fpr.candidate_features`) see only the detector's
evidence, so a faint nodule and the clutter a detector confuses with it can look alike there
while they differ in the X-rays themselves. :func:`candidate_patches` cuts, from every view, a
patch of the detector's input channels (:func:`~mvxray.detectors2d.normalize.xray_channels`:
robust-normalized, so any intensity scale) centred on the candidate's projection;
:class:`PatchScorer` runs one small CNN on every view's patch and pools over the views that see
the candidate (masked mean and max), then scores that with the vote's features.

Written by hand: pooling one CNN over views is MVCNN's view pooling; no library ships it for a
varying set of visible views, and it is a few lines of ``torch.nn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvxray.detectors2d.normalize import xray_channels
from mvxray.geometry import Rig, pixels_to_grid, project_points, visible_mask

#: Training shifts each patch by up to this many px (the projections' own error); patches are
#: cut this much larger on every side and centre-cropped for scoring.
JITTER_PX = 2


def candidate_patches(
    images: torch.Tensor, rig: Rig, points: torch.Tensor, size_px: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of every view around the projections of ``points``.

    Args:
        images: ``(V, 1, H, W)`` X-ray views, any intensity scale.
        rig: their rig.
        points: ``(P, 3)`` CT mm.
        size_px: patch side, px (pixel centres at ±0.5, ±1.5, … around the projection).

    Returns:
        ``(P, V, 3, size_px, size_px)`` patches of the three
        :func:`~mvxray.detectors2d.normalize.xray_channels` (zero outside the view), and
        ``(P, V)`` whether each view sees each point.

    Example:
        >>> rig = Rig.circular(2, 300.0, 600.0, 32, 32, 1.0)
        >>> p, seen = candidate_patches(torch.rand(2, 1, 32, 32), rig, torch.zeros(1, 3), 8)
        >>> tuple(p.shape), seen.tolist()
        ((1, 2, 3, 8, 8), [[True, True]])
    """
    V, _, H, W = images.shape
    channels = xray_channels(images.detach().float().cpu())
    uv, z = project_points(
        points.float().cpu(), rig.K.float().cpu(), rig.T_cam_from_ct.float().cpu()
    )
    seen = visible_mask(uv, z, H, W)  # (V, P)
    P, S = points.shape[0], size_px
    offset = torch.arange(S, dtype=torch.float32) - S / 2 + 0.5
    gx = (uv[..., 0, None, None] + offset[None, :]).expand(V, P, S, S)
    gy = (uv[..., 1, None, None] + offset[:, None]).expand(V, P, S, S)
    grid = pixels_to_grid(torch.stack([gx, gy], -1), H, W).reshape(V, P * S, S, 2)
    out = F.grid_sample(channels, grid, align_corners=False, padding_mode="zeros")
    return out.reshape(V, 3, P, S, S).permute(2, 0, 1, 3, 4), seen.T


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class PatchScorer(nn.Module):
    """Per-view CNN on the candidate's patches, pooled over the views, + the vote's features →
    one logit. The features' standardization is part of the saved state.

    Example:
        >>> net = PatchScorer(n_features=4, patch_px=16)
        >>> x, p = torch.zeros(3, 4), torch.zeros(3, 5, 3, 16, 16)
        >>> tuple(net(x, p, torch.ones(3, 5, dtype=torch.bool)).shape)
        (3,)
    """

    def __init__(self, n_features: int, patch_px: int, width: int = 16) -> None:
        super().__init__()
        if patch_px < 8 or patch_px % 8:
            raise ValueError(f"patch_px: expected a multiple of 8 (>= 8), found {patch_px}")
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        w = width
        self.cnn = nn.Sequential(
            *_block(3, w), *_block(w, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * w * (patch_px // 8) ** 2, 4 * w), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Linear(8 * w + n_features, 4 * w), nn.ReLU(), nn.Dropout(0.2), nn.Linear(4 * w, 1)
        )

    def forward(self, x: torch.Tensor, patches: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """``x`` ``(P, F)`` features, ``patches`` ``(P, V, 3, S, S)``, ``seen`` ``(P, V)`` →
        ``(P,)`` logits."""
        P, V = patches.shape[:2]
        h = self.cnn(patches.flatten(0, 1).float()).reshape(P, V, -1)
        m = seen[..., None].to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
        top = torch.where(seen[..., None], h, torch.finfo(h.dtype).min).amax(1)
        top = torch.where(seen.any(1, keepdim=True), top, 0.0)  # seen by no view: no image evidence
        return self.head(torch.cat([mean, top, (x - self.mean) / self.std], 1))[:, 0]


def augment(patches: torch.Tensor, size_px: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``size_px`` crop (shift ≤ :data:`JITTER_PX`) and random flips of a batch of
    patches cut :data:`JITTER_PX` larger on every side (one draw for the batch)."""
    ox, oy = torch.randint(0, 2 * JITTER_PX + 1, (2,), generator=generator).tolist()
    out = patches[..., oy : oy + size_px, ox : ox + size_px]
    flips = torch.rand(2, generator=generator) < 0.5
    dims = [d for d, f in zip((-1, -2), flips.tolist()) if f]
    return out.flip(dims) if dims else out


def centre(patches: torch.Tensor, size_px: int) -> torch.Tensor:
    """The centre ``size_px`` crop of patches cut :data:`JITTER_PX` larger on every side."""
    j = JITTER_PX
    return patches[..., j : j + size_px, j : j + size_px]
