"""``voting``: lift by back-projecting every view's detection evidence into one 3D vote volume.

Per view, an evidence map ``e_v(u, v)`` in [0, 1]: the detector's dense centre heatmap where it
gives one (:attr:`Detections2D.heatmap`: the ``heatmap`` detector; ``yolo`` with its aux head),
else its boxes splatted as Gaussians (σ ∝ box size) scaled by their scores, so every detector
works. Each voxel ``x`` of a grid over the region of interest scores the geometric mean of
``e_v(π_v(x)) + ε`` over the views that see it — a naive-Bayes vote: an indication seen
moderately in every view beats clutter (a rib crossing, a vessel end) that is strong in one
view only, and no view has to reach a detection threshold. The vote's 3D local maxima, refined
below the voxel, are the indications' centres; each is sized from the detections that support
it in each view (their median back-projected size, or with ``fit_box`` the extent of the 3D box
whose projections match them, :func:`mvxray.lifting.boxfit.fit_box3d`).

Written by hand: voxel voting (as in VoxelPose) lives inside framework-bound pose code; here it
is a few lines on the geometry core's projection and ``grid_sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import (
    Rig,
    box3d_from_center_size,
    pixels_to_grid,
    project_points,
    visible_mask,
)
from mvxray.geometry._checks import ShapeError
from mvxray.lifting.association import DetectionTable
from mvxray.lifting.base import Lifted3D
from mvxray.lifting.boxfit import fit_box3d


@dataclass(frozen=True)
class VotingConfig:
    """Configuration of :class:`VotingLifter`.

    Attributes:
        step_mm: voxel pitch of the vote grid, mm.
        eps: added to the evidence before the geometric mean (a view with no evidence at all
            vetoes less than a log of 0 would).
        min_view_frac: voxels seen by fewer than this fraction of the views are not voted on.
        nms_radius_mm: vote maxima closer than this to a higher one are suppressed, mm.
        max_boxes: at most this many hypotheses per case (highest votes first).
        region_mm: ``(xmin, ymin, zmin, xmax, ymax, zmax)`` CT mm to search; ``None``: the
            sample's ``volume_box_ct_mm`` provenance when present, else a cube about the CT
            origin of half the nearest source distance.
        splat_sigma_frac: evidence of box detections: σ = this · √(w·h) …
        min_sigma_px: … and at least this, px.
        gate_px: a detection supports a hypothesis when its centre lies within ``gate_px`` …
        gate_frac: … plus this fraction of its half-diagonal of the hypothesis' projection.
        default_size_mm: size of a box supported by fewer than two detections, mm.
        min_score: hypotheses whose score (the geometric-mean evidence) is below this are
            dropped — with no evidence anywhere, nothing is returned.
        fit_box: fit each box's extent to its supporting 2D boxes (else a cube of their median
            back-projected size; the centre is the vote's in both cases).
        fit_box_iso: with ``fit_box``, the weight of the fit's prior toward equal sides
            (:func:`~mvxray.lifting.boxfit.fit_box3d`'s ``iso_weight``; 0: none).
        chunk: voxels projected per batch (bounds memory).
    """

    step_mm: float = 2.0
    eps: float = 0.02
    min_view_frac: float = 0.9
    nms_radius_mm: float = 4.0
    max_boxes: int = 30
    region_mm: tuple[float, float, float, float, float, float] | None = None
    splat_sigma_frac: float = 0.25
    min_sigma_px: float = 1.0
    gate_px: float = 4.0
    gate_frac: float = 0.5
    default_size_mm: float = 10.0
    min_score: float = 1e-3
    fit_box: bool = False
    fit_box_iso: float = 0.0
    chunk: int = 1 << 20

    def __post_init__(self) -> None:
        if self.step_mm <= 0 or self.eps <= 0:
            raise ValueError(
                f"VotingConfig: step_mm and eps must be > 0, found {self.step_mm}, {self.eps}"
            )
        if self.fit_box_iso < 0:
            raise ValueError(f"fit_box_iso: expected >= 0, found {self.fit_box_iso}")
        if not 0.0 <= self.min_view_frac <= 1.0:
            raise ValueError(f"min_view_frac: expected in [0, 1], found {self.min_view_frac}")
        if self.region_mm is not None and len(self.region_mm) != 6:
            raise ShapeError(f"region_mm: expected 6 numbers, found {len(self.region_mm)}")


def evidence_maps(
    detections: list[Detections2D],
    height: int,
    width: int,
    sigma_frac: float = 0.25,
    min_sigma_px: float = 1.0,
) -> torch.Tensor:
    """``(V, H, W)`` per-view evidence in [0, 1]: the dense heatmap, else splatted boxes.

    Example:
        >>> d = Detections2D(torch.tensor([[2.0, 2, 6, 6]]), torch.tensor([0.8]), torch.zeros(1).long())
        >>> m = evidence_maps([d], 8, 8)
        >>> round(float(m[0, 4, 4]), 3), float(m.amax()) <= 0.8
        (0.623, True)
    """
    maps = torch.zeros(len(detections), height, width)
    ys = torch.arange(height, dtype=torch.float32) + 0.5  # pixel centres at +0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    for v, d in enumerate(detections):
        if d.heatmap is not None:
            if tuple(d.heatmap.shape) != (height, width):
                raise ShapeError(
                    f"detections[{v}].heatmap: expected ({height}, {width}), "
                    f"found {tuple(d.heatmap.shape)}"
                )
            maps[v] = d.heatmap.detach().float().cpu().clamp(0, 1)
            continue
        if len(d) == 0:
            continue
        b = d.boxes.detach().float().cpu()
        c = (b[:, :2] + b[:, 2:]) / 2
        sigma = (sigma_frac * (b[:, 2:] - b[:, :2]).clamp(min=1).prod(-1).sqrt()).clamp(
            min=min_sigma_px
        )
        for i in range(len(d)):  # one at a time: (N, H, W) is 400 MB for 100 boxes at 1024 px
            g = torch.exp(
                -((ys[:, None] - c[i, 1]) ** 2 + (xs[None, :] - c[i, 0]) ** 2) / (2 * sigma[i] ** 2)
            )
            maps[v] = torch.maximum(maps[v], float(d.scores[i].clamp(0, 1)) * g)
    return maps


def _region(sample: MultiViewSample, cfg: VotingConfig) -> torch.Tensor:
    if cfg.region_mm is not None:
        return torch.tensor(cfg.region_mm, dtype=torch.float32)
    box = sample.meta.get("provenance", {}).get("volume_box_ct_mm")
    if box is not None:
        return torch.tensor(box, dtype=torch.float32)
    half = 0.5 * float(sample.rig.source_ct.norm(dim=-1).min())
    return torch.tensor([-half] * 3 + [half] * 3)


def vote_volume(
    maps: torch.Tensor, rig: Rig, region: torch.Tensor, cfg: VotingConfig
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The mean log evidence per voxel: ``(X, Y, Z)`` (−inf where too few views see it) and
    the voxel-centre coordinates along x, y, z (mm)."""
    V, H, W = maps.shape
    axes = [
        torch.arange(float(region[a]) + cfg.step_mm / 2, float(region[a + 3]), cfg.step_mm)
        for a in range(3)
    ]
    if min(len(a) for a in axes) == 0:
        raise ValueError(f"region_mm {region.tolist()}: empty at step {cfg.step_mm} mm")
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    K, T = rig.K.float().cpu(), rig.T_cam_from_ct.float().cpu()
    need = max(1, math.ceil(cfg.min_view_frac * V))
    log_e = torch.log(maps + cfg.eps)[:, None]  # (V, 1, H, W)
    out = torch.empty(grid.shape[0])
    for s in range(0, grid.shape[0], cfg.chunk):
        uv, z = project_points(grid[s : s + cfg.chunk], K, T)  # (V, n, 2), (V, n)
        seen = visible_mask(uv, z, H, W)
        g = pixels_to_grid(uv, H, W)[:, None]
        e = F.grid_sample(log_e, g, align_corners=False)[:, 0, 0]  # (V, n)
        n = seen.sum(0)
        mean = torch.where(seen, e, 0).sum(0) / n.clamp(min=1)
        out[s : s + cfg.chunk] = torch.where(n >= need, mean, -math.inf)
    return out.reshape(*(len(a) for a in axes)), axes


def vote_peaks(
    score: torch.Tensor, axes: list[torch.Tensor], radius_vox: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest 3D local maxima (within ``radius_vox``): ``(P, 3)`` mm and their votes."""
    pooled = F.max_pool3d(score[None, None], 2 * radius_vox + 1, 1, radius_vox)[0, 0]
    flat = torch.where((score == pooled) & score.isfinite(), score, -math.inf).flatten()
    top, idx = flat.topk(min(k, flat.numel()))
    keep = top.isfinite()
    top, idx = top[keep], idx[keep]
    X, Y, Z = score.shape
    ijk = torch.stack([idx // (Y * Z), (idx // Z) % Y, idx % Z], -1)
    pts = torch.stack([axes[a][ijk[:, a]] for a in range(3)], -1)
    # Sub-voxel: the vertex of the parabola through each peak and its two neighbours per axis.
    for a, n in enumerate((X, Y, Z)):
        lo, hi = ijk.clone(), ijk.clone()
        lo[:, a] = (ijk[:, a] - 1).clamp(min=0)
        hi[:, a] = (ijk[:, a] + 1).clamp(max=n - 1)
        s0, s1 = score[tuple(lo.T)], score[tuple(hi.T)]
        curv = s0 - 2 * top + s1
        ok = (
            s0.isfinite()
            & s1.isfinite()
            & (curv < 0)
            & (lo[:, a] < ijk[:, a])
            & (hi[:, a] > ijk[:, a])
        )
        step = float(axes[a][1] - axes[a][0]) if n > 1 else 0.0
        shift = torch.where(ok, 0.5 * (s0 - s1) / torch.where(ok, curv, -1.0), 0.0)
        pts[:, a] += shift.clamp(-0.5, 0.5) * step
    return pts, top


@dataclass
class Candidates:
    """The vote maxima of one case, what they were found in, and their 2D support.

    Attributes:
        points: ``(P, 3)`` CT mm (float64), by decreasing vote.
        votes: ``(P,)`` mean log evidence.
        maps: ``(V, H, W)`` per-view evidence (:func:`evidence_maps`).
        volume: the vote volume and ``axes`` its voxel-centre coordinates (:func:`vote_volume`).
        table: the case's detections; ``rows`` ``(P, V)`` the supporting row of each view (−1:
            none) and ``depth`` ``(V, P)`` the points' camera depths, mm.
    """

    points: torch.Tensor
    votes: torch.Tensor
    maps: torch.Tensor
    volume: torch.Tensor
    axes: list[torch.Tensor]
    table: DetectionTable
    rows: torch.Tensor
    depth: torch.Tensor

    def support_sizes_mm(self, p: int, K: torch.Tensor) -> torch.Tensor:
        """The sizes of candidate ``p``'s supporting detections back-projected to its depth
        (2D size × depth / focal, mm), one per supporting view; ``K`` is the rig's ``(V, 3, 3)``."""
        views = torch.nonzero(self.rows[p] >= 0).squeeze(1)
        return self.table.sizes[self.rows[p, views]] * self.depth[views, p] / K[views, 0, 0]


class VotingLifter:
    """Training-free lifter: a 3D vote of the per-view evidence; boxes sized from the 2D support.

    Example:
        >>> from mvxray.geometry import Rig
        >>> rig = Rig.circular(4, 300.0, 600.0, 64, 64, 4.0)
        >>> lifter = VotingLifter(region_mm=(-20.0, -20.0, -20.0, 20.0, 20.0, 20.0))
        >>> s = MultiViewSample(torch.zeros(4, 1, 64, 64), rig, torch.zeros(0, 6),
        ...     torch.zeros(4, 0, 4), torch.zeros(4, 0, dtype=torch.bool), torch.zeros(0).long())
        >>> len(lifter.lift(s, [Detections2D.empty() for _ in range(4)]))   # no evidence, no box
        0
    """

    name = "voting"

    def __init__(self, config: VotingConfig | None = None, **overrides: Any) -> None:
        self.config = config if config is not None else VotingConfig(**overrides)

    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """Lift one case's per-view detections to 3D boxes, sorted by decreasing score.

        Raises:
            ShapeError: not one detection list per view, or a heatmap of the wrong size.
        """
        c = self.candidates(sample, detections)
        return self._lifted(sample, detections, c, self.vote_scores(c.votes))

    def vote_scores(self, votes: torch.Tensor) -> torch.Tensor:
        """The geometric mean of (evidence + eps) of each vote, back to the evidence scale [0, 1]."""
        return (votes.double().exp() - self.config.eps).clamp(0, 1)

    def candidates(self, sample: MultiViewSample, detections: list[Detections2D]) -> Candidates:
        """The vote's local maxima of one case (at most ``max_boxes``, above ``min_score``) and
        their supporting detections.

        Raises:
            ShapeError: not one detection list per view, or a heatmap of the wrong size.
        """
        rig, cfg = sample.rig, self.config
        V = rig.num_views
        if len(detections) != V:
            raise ShapeError(
                f"detections: expected one entry per view ({V}), found {len(detections)}"
            )
        maps = evidence_maps(
            detections, rig.height, rig.width, cfg.splat_sigma_frac, cfg.min_sigma_px
        )
        score, axes = vote_volume(maps, rig, _region(sample, cfg), cfg)
        radius = max(1, round(cfg.nms_radius_mm / cfg.step_mm))
        points, votes = vote_peaks(score, axes, radius, cfg.max_boxes)
        keep = self.vote_scores(votes) >= cfg.min_score
        points, votes = points[keep].double(), votes[keep]
        table = DetectionTable.from_detections(detections, max(map(len, detections), default=0))
        rows, depth = self._support(
            points, table, rig.K.double().cpu(), rig.T_cam_from_ct.double().cpu()
        )
        return Candidates(points, votes, maps, score, axes, table, rows, depth)

    def _lifted(
        self,
        sample: MultiViewSample,
        detections: list[Detections2D],
        c: Candidates,
        scores: torch.Tensor,
    ) -> Lifted3D:
        """Boxes of the candidates ``c`` with ``scores`` ``(P,)``, sorted by decreasing score."""
        rig = sample.rig
        device = detections[0].boxes.device if detections else torch.device("cpu")
        if len(c.points) == 0:
            return Lifted3D(
                torch.zeros(0, 6, device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, rig.num_views, dtype=torch.bool, device=device),
            )
        K, T = rig.K.double().cpu(), rig.T_cam_from_ct.double().cpu()
        order = scores.argsort(descending=True)
        boxes = [self._box(c, int(p), K, T, rig) for p in order]
        return Lifted3D(
            torch.stack(boxes).float().to(device),
            scores[order].float().to(device),
            (c.rows[order] >= 0).to(device),
        )

    def _support(
        self, points: torch.Tensor, table: DetectionTable, K: torch.Tensor, T: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per point and view, the best-scoring detection whose centre lies within its gate of
        the point's projection: rows ``(P, V)`` of ``table`` (−1: none) and depths ``(V, P)``."""
        uv, depth = project_points(points, K, T)  # (V, P, 2), (V, P)
        gate = table.gates(self.config.gate_px, self.config.gate_frac)
        rows = torch.full((points.shape[0], K.shape[0]), -1, dtype=torch.long)
        for v in range(K.shape[0]):
            r = torch.nonzero(table.view == v).squeeze(1)
            if r.numel() == 0:
                continue
            ok = (torch.cdist(uv[v], table.centres[r]) <= gate[r]) & (depth[v, :, None] > 0)
            best = torch.where(ok, table.scores[r], -1.0).argmax(1)
            rows[:, v] = torch.where(ok.any(1), r[best], -1)
        return rows, depth

    def _box(
        self, c: Candidates, p: int, K: torch.Tensor, T: torch.Tensor, rig: Rig
    ) -> torch.Tensor:
        """The box of vote peak ``p`` from its supporting detections."""
        cfg, point, table = self.config, c.points[p], c.table
        views = torch.nonzero(c.rows[p] >= 0).squeeze(1)
        r = c.rows[p, views]
        sizes = c.support_sizes_mm(p, K)
        est = cfg.default_size_mm if len(views) < 2 else float(sizes.median())
        size = torch.full((3,), est, dtype=torch.float64)
        if not cfg.fit_box or len(views) < 2:
            return box3d_from_center_size(point[None], size[None])[0]
        box, _ = fit_box3d(
            table.boxes[r],
            K[views],
            T[views],
            rig.height,
            rig.width,
            point,
            size,
            weights=table.scores[r],
            iso_weight=cfg.fit_box_iso,
        )
        # The centre comes from the dense vote (all views, no threshold), the extent from the
        # supporting 2D boxes: a wrong supporting box must not move the indication.
        return box3d_from_center_size(point[None], (box[3:] - box[:3])[None])[0]
