"""``rayemb`` lifting head: localize each detection in depth by ray-embedding consistency.

For a detection in view *a*, candidate 3D points are sampled along the ray through its box
centre. A candidate is scored by the RayEmb similarity of the detection's ray embedding
``e_a(c)`` to the subspace spanned by the embeddings where the candidate projects in the T
views closest in angle to *a* — high only where the rays really meet — plus, optionally, the
fraction of other views in which the candidate falls inside a detected box. The best
candidate of every detection is then clustered across views (one view per cluster at most),
and each cluster's 3D box is fitted to the supporting 2D boxes
(:func:`mvxray.lifting.boxfit.fit_box3d`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, backproject_pixels
from mvxray.lifting.base import Lifted3D
from mvxray.lifting.rayemb.model import RayEmbConfig, RayEmbModel
from mvxray.lifting.rayemb.subspace import sample_embeddings, subspace_basis
from mvxray.lifting.rayemb.train import TrainConfig, ViewBank, fit_rayemb, points_in_views


@dataclass(frozen=True)
class RayEmbLifterConfig:
    """Settings of the ``rayemb`` lifter.

    Attributes:
        model: the RayEmb model settings (used when no weights are loaded).
        train: training schedule for :meth:`RayEmbLifter.fit`.
        num_templates: T views (closest in angle) spanning each candidate's subspace.
        depth_samples: candidates along each detection's central ray.
        depth_half_range_mm: candidates span the CT origin's depth ± this, mm.
        geometric_weight: weight of the "falls inside a detected box" fraction in the score.
        min_det_score: detections below this score are ignored.
        merge_mm: candidates closer than this merge into one indication, mm.
        min_views: clusters supported by fewer views are dropped.
        min_score: clusters scoring below this are dropped.
        default_size_mm: size of a box with a single supporting view, mm.
    """

    model: RayEmbConfig = field(default_factory=RayEmbConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_template_angle_deg=80.0))
    num_templates: int = 4
    depth_samples: int = 96
    depth_half_range_mm: float = 150.0
    geometric_weight: float = 0.5
    min_det_score: float = 0.05
    merge_mm: float = 15.0
    min_views: int = 2
    min_score: float = 0.0
    default_size_mm: float = 10.0


class RayEmbLifter:
    """The ``rayemb`` lifting head (Lifter protocol: ``lift(sample, detections) → Lifted3D``).

    Args:
        config: settings.
        model: a trained :class:`RayEmbModel` (default: an untrained one from ``config.model``).
        **overrides: :class:`RayEmbLifterConfig` fields (when ``config`` is None).
    """

    name = "rayemb"

    def __init__(
        self,
        config: RayEmbLifterConfig | None = None,
        model: RayEmbModel | None = None,
        **overrides: Any,
    ) -> None:
        self.config = config or RayEmbLifterConfig(**overrides)
        self.model = model if model is not None else RayEmbModel(self.config.model)
        self.model.eval()

    # ------------------------------------------------------------------ training / persistence
    def fit(self, train: Any, val: Any | None = None, **kwargs: Any) -> dict[str, float]:
        """Train the embedding on an iterable of :class:`MultiViewSample` (one bank per case).

        3D training points are drawn inside the imaged object (:func:`points_in_views`); no CT
        is needed. ``kwargs`` override :class:`TrainConfig` fields.
        """
        g = torch.Generator().manual_seed(self.config.model.seed)
        banks = []
        for s in train:
            pts = points_in_views(s.images, s.rig, 2048, generator=g)
            if pts.shape[0] >= 16:
                banks.append(ViewBank(s.images.float(), s.rig, pts))
        if not banks:
            raise ValueError("RayEmbLifter.fit: no training sample with enough in-object points")
        cfg = TrainConfig(**{**self.config.train.__dict__, **kwargs})
        out = fit_rayemb(self.model, banks, cfg)
        self.model.eval()
        return out

    def save(self, path: str | Path) -> None:
        """Write the model (config + weights) atomically."""
        self.model.save(path, extra={"lifter": "rayemb"})

    @classmethod
    def load(
        cls, path: str | Path, config: RayEmbLifterConfig | None = None, **overrides: Any
    ) -> RayEmbLifter:
        """A lifter around a saved :class:`RayEmbModel` (``overrides``: config fields)."""
        model = RayEmbModel.load(path)
        if config is None:
            config = RayEmbLifterConfig(model=model.config, **overrides)
        return cls(config, model)

    # ------------------------------------------------------------------ lifting
    def _candidates(self, rig: Rig, view: int, uv: torch.Tensor) -> torch.Tensor:
        """``(n, K, 3)`` CT points along the rays through ``uv (n, 2)`` of ``view``."""
        cfg = self.config
        o, d = backproject_pixels(
            uv[None].to(rig.K.dtype), rig.K[view : view + 1], rig.T_cam_from_ct[view : view + 1]
        )
        o, d = o[0], d[0]  # (n, 3)
        z_axis = rig.T_cam_from_ct[view, 2, :3]
        depth0 = float(rig.T_cam_from_ct[view, 2, 3])  # camera z of the CT origin
        z = torch.linspace(
            depth0 - cfg.depth_half_range_mm,
            depth0 + cfg.depth_half_range_mm,
            cfg.depth_samples,
            dtype=rig.K.dtype,
        ).clamp_min(1.0)
        t = z[None, :] / (d @ z_axis).clamp_min(1e-6)[:, None]  # distance along each ray
        return o[:, None, :] + t[..., None] * d[:, None, :]

    def _score(
        self,
        emb: torch.Tensor,
        rig: Rig,
        view: int,
        uv: torch.Tensor,
        cand: torch.Tensor,
        boxes: list[torch.Tensor],
    ) -> torch.Tensor:
        """``(n, K)`` score of each candidate."""
        cfg = self.config
        V, _, h, w = emb.shape
        n, K, _ = cand.shape
        pts = cand.reshape(-1, 3)
        puv, _, vis = rig.project(pts)  # (V, nK, 2)
        axes = rig.T_cam_from_ct[:, 2, :3]
        order = torch.argsort(-(axes @ axes[view]))
        others = [int(v) for v in order if int(v) != view][: cfg.num_templates]
        scale = torch.tensor([w / rig.width, h / rig.height], dtype=puv.dtype)
        e_t = sample_embeddings(emb[others], (puv[others] * scale).float())  # (T, nK, D)
        basis, _ = subspace_basis(e_t.permute(1, 2, 0), self.model.config.rtol)  # (nK, D, T)
        e_a = sample_embeddings(emb[view : view + 1], (uv[None] * scale).float())[0]  # (n, D)
        e_a = e_a.repeat_interleave(K, 0)
        coeff = torch.einsum("ndt,nd->nt", basis, e_a)
        sim = coeff.norm(dim=-1) / e_a.norm(dim=-1).clamp_min(1e-8)
        sim = torch.where(vis[others].all(0), sim, torch.zeros_like(sim))
        if cfg.geometric_weight > 0 and V > 1:
            inside = torch.zeros(V, pts.shape[0], dtype=torch.bool)
            for v in range(V):
                if v == view or boxes[v].numel() == 0:
                    continue
                b = boxes[v].to(puv.dtype)
                u_, v_ = puv[v, :, :1], puv[v, :, 1:]
                inside[v] = (
                    (u_ >= b[:, 0]) & (u_ <= b[:, 2]) & (v_ >= b[:, 1]) & (v_ <= b[:, 3])
                ).any(-1)
            frac = inside.sum(0).float() / max(1, V - 1)
            sim = sim + cfg.geometric_weight * frac
        return sim.reshape(n, K)

    @torch.no_grad()
    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """Lift per-view detections of one case to 3D boxes (CT mm).

        Raises:
            ValueError: ``detections`` does not have one entry per view.
        """
        from mvxray.lifting.boxfit import fit_box3d

        rig, cfg = sample.rig, self.config
        V = rig.num_views
        if len(detections) != V:
            raise ValueError(
                f"detections: expected {V} entries (one per view), found {len(detections)}"
            )
        empty = Lifted3D(torch.zeros(0, 6), torch.zeros(0), torch.zeros(0, V, dtype=torch.bool))
        keep = [d.scores >= cfg.min_det_score for d in detections]
        boxes = [d.boxes[k].double().cpu() for d, k in zip(detections, keep)]
        scores = [d.scores[k].double().cpu() for d, k in zip(detections, keep)]
        if sum(b.shape[0] for b in boxes) == 0:
            return empty
        emb = self.model.embed(sample.images).float().cpu()
        seeds = []  # (score, view, det index, point)
        for v in range(V):
            if boxes[v].shape[0] == 0:
                continue
            uv = (boxes[v][:, :2] + boxes[v][:, 2:]) / 2
            cand = self._candidates(rig, v, uv)
            sc = self._score(emb, rig, v, uv, cand, boxes)
            best = sc.argmax(-1)
            for i in range(uv.shape[0]):
                seeds.append((float(sc[i, best[i]]) * float(scores[v][i]), v, i, cand[i, best[i]]))
        seeds.sort(key=lambda s: -s[0])
        clusters: list[dict[str, Any]] = []
        for s, v, i, p in seeds:
            for c in clusters:
                if v not in c["views"] and float((c["centre"] - p).norm()) < cfg.merge_mm:
                    c["members"].append((s, v, i, p))
                    c["views"].add(v)
                    w = torch.tensor([m[0] for m in c["members"]], dtype=p.dtype).clamp_min(1e-6)
                    c["centre"] = (torch.stack([m[3] for m in c["members"]]) * w[:, None]).sum(
                        0
                    ) / w.sum()
                    break
            else:
                clusters.append({"members": [(s, v, i, p)], "views": {v}, "centre": p.clone()})
        out_boxes, out_scores, out_support = [], [], []
        for c in clusters:
            if len(c["views"]) < min(cfg.min_views, V):
                continue
            score = sum(m[0] for m in c["members"]) / len(c["members"])
            if score < cfg.min_score:
                continue
            vs = [m[1] for m in c["members"]]
            b2 = torch.stack([boxes[m[1]][m[2]] for m in c["members"]])
            depth = (rig.T_cam_from_ct[vs, 2, :3] @ c["centre"]) + rig.T_cam_from_ct[vs, 2, 3]
            f = rig.K[vs, 0, 0]
            size_mm = float(((b2[:, 2:] - b2[:, :2]).mean(-1) * depth / f).mean())
            size = torch.full(
                (3,),
                size_mm if math.isfinite(size_mm) and size_mm > 0 else cfg.default_size_mm,
                dtype=torch.float64,
            )
            if len(vs) >= 2:
                box, _ = fit_box3d(
                    b2, rig.K[vs], rig.T_cam_from_ct[vs], rig.height, rig.width, c["centre"], size
                )
            else:
                box = torch.cat([c["centre"] - size / 2, c["centre"] + size / 2])
            sup = torch.zeros(V, dtype=torch.bool)
            sup[vs] = True
            out_boxes.append(box.double())
            out_scores.append(min(1.0, max(0.0, score / (1.0 + cfg.geometric_weight))))
            out_support.append(sup)
        if not out_boxes:
            return empty
        sc = torch.tensor(out_scores, dtype=torch.float32)
        order = torch.argsort(sc, descending=True)
        return Lifted3D(
            torch.stack(out_boxes).float()[order], sc[order], torch.stack(out_support)[order]
        )
