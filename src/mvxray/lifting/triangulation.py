"""``triangulation``: the training-free lifter — associate, triangulate, fit the 3D box.

For one case: detections are associated across views (:mod:`mvxray.lifting.association`),
each group is triangulated, and the 3D box whose projections best match the group's 2D boxes
is fitted (:func:`mvxray.lifting.boxfit.fit_box3d`). The score of a box is the sum of its
supporting 2D scores over the number of views in which it should be seen, so a box seen with
confidence 1 in every view where it projects into the image scores 1, and one supported by 2
of 10 views at most 0.2. Works for any rig with V ≥ 2 views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import box3d_from_center_size
from mvxray.geometry._checks import ShapeError
from mvxray.lifting.association import AssociationConfig, associate
from mvxray.lifting.base import Lifted3D
from mvxray.lifting.boxfit import fit_box3d


@dataclass(frozen=True)
class TriangulationConfig:
    """Configuration of :class:`TriangulationLifter`.

    Attributes:
        association: gates of the cross-view association.
        score_threshold: 2D detections scoring below this are ignored.
        fit_box: fit the box to the 2D boxes (else a cube of the estimated size at the point).
        f_scale_px: robust-loss scale of the box fit, px.
        max_fit_rms_px: boxes whose fitted edges are off by more than this (RMS, px) are dropped.
        min_score: final boxes scoring below this are dropped.
        max_boxes: box-fit at most this many hypotheses per case, in the association's ranking
            order (a fit costs ~50 ms, and ~100 noisy detections per view leave hundreds of
            weak hypotheses; FROC up to 8 false positives per case needs far fewer).
    """

    association: AssociationConfig = field(default_factory=AssociationConfig)
    score_threshold: float = 0.0
    fit_box: bool = True
    f_scale_px: float = 1.0
    max_fit_rms_px: float = 10.0
    min_score: float = 0.0
    max_boxes: int = 50


class TriangulationLifter:
    """Geometry-only lifter (no weights).

    Example:
        >>> lifter = TriangulationLifter()
        >>> from mvxray.geometry import Rig
        >>> rig = Rig.circular(2, 300.0, 600.0, 32, 32, 4.0, arc_deg=180.0)
        >>> s = MultiViewSample(torch.zeros(2, 1, 32, 32), rig, torch.zeros(0, 6),
        ...     torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), torch.zeros(0).long())
        >>> len(lifter.lift(s, [Detections2D.empty(), Detections2D.empty()]))
        0
    """

    name = "triangulation"

    def __init__(self, config: TriangulationConfig | None = None, **overrides: Any) -> None:
        if config is None:
            assoc = {k: overrides.pop(k) for k in list(overrides) if hasattr(AssociationConfig, k)}
            config = TriangulationConfig(association=AssociationConfig(**assoc), **overrides)
        self.config = config

    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """Lift one case's per-view detections to 3D boxes.

        Args:
            sample: the case (only its ``rig`` is used).
            detections: one :class:`Detections2D` per view of ``sample.rig``.

        Returns:
            :class:`Lifted3D` sorted by decreasing score, on the detections' device.

        Raises:
            ShapeError: the number of detection lists differs from the number of views.
        """
        rig = sample.rig
        V = rig.num_views
        if len(detections) != V:
            raise ShapeError(
                f"detections: expected one entry per view ({V}), found {len(detections)}"
            )
        device = detections[0].boxes.device if detections else torch.device("cpu")
        cfg = self.config
        kept = [
            Detections2D(
                d.boxes[d.scores >= cfg.score_threshold],
                d.scores[d.scores >= cfg.score_threshold],
                d.labels[d.scores >= cfg.score_threshold],
            )
            for d in detections
        ]
        hyp, table = associate(kept, rig, cfg.association)
        K, T = rig.K.double().cpu(), rig.T_cam_from_ct.double().cpu()
        boxes, scores, support = [], [], []
        for p in range(hyp.points.shape[0]):
            if len(boxes) >= cfg.max_boxes:
                break
            rows = hyp.support[p]
            views = torch.nonzero(rows >= 0).squeeze(1)
            centre, size = hyp.points[p], hyp.size_mm[p].expand(3)
            box = box3d_from_center_size(centre[None], size[None])[0]
            if cfg.fit_box:
                box, rms = fit_box3d(
                    table.boxes[rows[views]],
                    K[views],
                    T[views],
                    rig.height,
                    rig.width,
                    centre,
                    size,
                    weights=table.scores[rows[views]],
                    f_scale_px=cfg.f_scale_px,
                )
                if rms > cfg.max_fit_rms_px:
                    continue
            if float(hyp.scores[p]) < cfg.min_score:
                continue
            boxes.append(box)
            scores.append(hyp.scores[p])
            support.append(rows >= 0)
        if not boxes:
            return Lifted3D(
                torch.zeros(0, 6, device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, V, dtype=torch.bool, device=device),
            )
        sc = torch.stack(scores)
        order = torch.argsort(sc, descending=True)
        return Lifted3D(
            torch.stack(boxes)[order].float().to(device),
            sc[order].float().clamp(0, 1).to(device),
            torch.stack(support)[order].to(device),
        )
