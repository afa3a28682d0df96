"""MV2D's dynamic query generator and the frustum-encoded RoI memory.

Query generator (one object query per 2D detection): RoIAlign features of the detection and
its box-conditioned intrinsics → a 2.5D point (u, v, depth) → the 3D reference point
``p_ref = [R|t]⁻¹ K⁻¹ (u·d, v·d, d)`` (:func:`mvxray.geometry.unproject_points`), normalized
to the region of interest, sin/cos encoded → MLP → the query's position embedding; the RoI
features give its content.

Memory (what queries cross-attend to): every detection's RoI features, pooled to ``m × m``
tokens, each carrying the 3D positional encoding of its frustum — the token's pixel lifted to
D depths across the region of interest (PETR / MV2D), normalized and passed through an MLP.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mvxray.geometry import unproject_points
from mvxray.geometry.frustum import lift_pixels, normalize_to_roi, roi_points, sincos_encoding
from mvxray.lifting.mv2d.inputs import MV2DInputs


def _gather_views(x: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """``(B, V, ...)`` indexed by ``(B, Q)`` view ids → ``(B, Q, ...)``."""
    idx = view.reshape(*view.shape, *([1] * (x.dim() - 2))).expand(*view.shape, *x.shape[2:])
    return x.gather(1, idx)


class QueryGenerator(nn.Module):
    """RoI features + box-conditioned intrinsics → reference point, position and content.

    Args:
        channels: RoI feature channels F.
        roi_size: RoIAlign output side (7 in MV2D).
        embed_dim: query width.
        pe_feats: sin/cos channels per coordinate.
    """

    def __init__(self, channels: int, roi_size: int, embed_dim: int, pe_feats: int) -> None:
        super().__init__()
        self.pe_feats = pe_feats
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU()
        )
        self.fc = nn.Sequential(nn.Linear(channels * roi_size * roi_size, embed_dim), nn.ReLU())
        # 4 box-conditioned intrinsics: log(fx / w), log(fy / h) and the box centre's ray slope
        self.point = nn.Sequential(
            nn.Linear(embed_dim + 4, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 3)
        )
        nn.init.zeros_(self.point[-1].weight)
        nn.init.zeros_(self.point[-1].bias)
        self.content = nn.Linear(embed_dim, embed_dim)
        self.pos = nn.Sequential(
            nn.Linear(3 * pe_feats, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, roi_feats: torch.Tensor, inp: MV2DInputs) -> dict[str, torch.Tensor]:
        """Queries of a batch.

        Args:
            roi_feats: ``(B, Q, F, r, r)`` RoIAlign features.
            inp: the batch (boxes, views, cameras, region of interest).

        Returns:
            ``content``, ``pos`` ``(B, Q, D)``; ``ref_ct`` ``(B, Q, 3)`` CT mm; ``depth``
            ``(B, Q)`` mm; ``size_prior`` ``(B, Q, 3)`` mm.
        """
        B, Q = roi_feats.shape[:2]
        h = self.fc(self.conv(roi_feats.flatten(0, 1)).flatten(1)).unflatten(0, (B, Q))
        Kq = _gather_views(inp.K, inp.roi_view)  # (B, Q, 3, 3)
        Tq = _gather_views(inp.T_cam_from_ct, inp.roi_view)
        box = inp.rois
        wh = (box[..., 2:] - box[..., :2]).clamp(min=1.0)
        ctr = (box[..., :2] + box[..., 2:]) / 2
        f = torch.stack([Kq[..., 0, 0], Kq[..., 1, 1]], -1)
        c = Kq[..., :2, 2]
        cond = torch.cat([(f / wh).log(), (ctr - c) / f], -1)
        out = self.point(torch.cat([h, cond], -1))
        uv = ctr + 0.5 * torch.tanh(out[..., :2]) * wh
        near = inp.near.gather(1, inp.roi_view)
        far = inp.far.gather(1, inp.roi_view)
        depth = near + torch.sigmoid(out[..., 2]) * (far - near)
        ref = unproject_points(uv[..., None, :], depth[..., None], Kq, Tq)[..., 0, :]
        coords, _ = normalize_to_roi(ref, inp.roi_ct[:, None], clamp=True)
        size = (wh.prod(-1).sqrt() * depth / f.mean(-1))[..., None].expand(B, Q, 3)
        return {
            "content": self.content(h),
            "pos": self.pos(sincos_encoding(coords, self.pe_feats)),
            "ref_ct": ref,
            "depth": depth,
            "size_prior": size,
        }


class FrustumMemory(nn.Module):
    """RoI features pooled to ``m × m`` tokens + the 3D encoding of each token's frustum.

    Args:
        channels: RoI feature channels F.
        embed_dim: token width D.
        tokens: m, tokens per RoI side.
        depth_bins: depths per token ray.
    """

    def __init__(self, channels: int, embed_dim: int, tokens: int, depth_bins: int) -> None:
        super().__init__()
        self.tokens, self.depth_bins = tokens, depth_bins
        self.proj = nn.Linear(channels, embed_dim)
        self.pe = nn.Sequential(
            nn.Linear(3 * depth_bins, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, roi_feats: torch.Tensor, inp: MV2DInputs) -> torch.Tensor:
        """``(B, Q, F, r, r)`` → memory ``(B, Q · m², D)`` (RoI-major token order)."""
        B, Q = roi_feats.shape[:2]
        m, nb = self.tokens, self.depth_bins
        pooled = F.adaptive_avg_pool2d(roi_feats.flatten(0, 1), m)  # (BQ, F, m, m)
        feats = self.proj(pooled.flatten(2).transpose(1, 2)).unflatten(0, (B, Q))  # (B,Q,m²,D)
        uv = roi_points(inp.rois, (m, m))  # (B, Q, m², 2)
        near = inp.near.gather(1, inp.roi_view)
        far = inp.far.gather(1, inp.roi_view)
        frac = (torch.arange(nb, device=uv.device, dtype=uv.dtype) + 0.5) / nb
        depths = near[..., None] + frac * (far - near)[..., None]  # (B, Q, nb)
        depths = depths[:, :, None].expand(B, Q, m * m, nb)
        Kq = _gather_views(inp.K, inp.roi_view)
        Tq = _gather_views(inp.T_cam_from_ct, inp.roi_view)
        pts = lift_pixels(uv, depths, Kq, Tq)  # (B, Q, m², nb, 3)
        coords, _ = normalize_to_roi(pts, inp.roi_ct[:, None, None, None], clamp=True)
        pe = self.pe(coords.flatten(-2))  # (B, Q, m², D)
        return (feats + pe).flatten(1, 2)
