"""Multi-view-consistent 2D detections: any detector, re-scored by what the other views see.

A faint nodule is often no stronger than the anatomy around it in any one view, but it sits at
one 3D point that every view sees, while a rib crossing or a vessel end is a coincidence of one
view. :class:`MultiViewDetector` runs a base detector on all views of a calibrated case, lifts
its evidence to 3D with a lifter (the ``voting`` lifter by default) and returns, in every view,
the projections of the 3D indications, scored by their 3D score — so an indication gets a box
in the views where it was missed too, and single-view clutter gets none.

It needs the case's rig, so it detects through :func:`mvxray.detectors2d.predict_sample` (or
its own :meth:`MultiViewDetector.predict_sample`), not from bare images.

The vote ranks some clutter that is moderately consistent across views above faint indications.
With :func:`rescoring_lifter` (``voting_fpr``: the vote's candidates re-scored by a classifier of
how their evidence is spread and of the X-ray patches around them) and :meth:`MultiViewDetector.fit_lifter` on the training cases,
the base detector's own kind of clutter is learned and ranked down.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from mvxray.detectors2d.base import Detections2D, predict_sample
from mvxray.geometry import project_boxes3d

#: Lifters that :meth:`MultiViewDetector.fit_lifter` fits on the base detector's output.
_TRAINABLE = frozenset({"voting_fpr"})
#: How the default lifters size their boxes: each extent fitted to the supporting 2D boxes, with
#: a weak prior toward equal sides (chosen on validation cases, docs/detectors.md: at 1 FP/image
#: YOLO made multi-view on chest 0.830 -> 0.845, true boxes jittered on chest 0.970 -> 0.983 and
#: on castings 0.378 -> 0.414 with the cracks' 3D IoU kept; a weight of 2 costs the cracks).
BOX_FIT: dict[str, Any] = {"fit_box": True, "fit_box_iso": 1.0}


def rescoring_lifter(**overrides: Any) -> Any:
    """The ``voting_fpr`` lifter for :class:`MultiViewDetector`: the default vote (``fit_box``)
    with its candidates re-scored, once :meth:`MultiViewDetector.fit_lifter` has fitted it, by a
    classifier that looks at the X-rays too — a CNN on a 32-px patch of every view around the
    candidate, pooled over the views, with the vote's features (until fitted it scores like the
    vote).

    Measured on the 30 independent test cases (docs/detector-benchmarks.md, "Re-scoring the
    vote"): the features alone (a logistic regression) helped Faster R-CNN made multi-view and
    hurt YOLO; with the patches both gained.
    """
    from mvxray.lifting import build

    return build("voting_fpr", **{**BOX_FIT, "patch_px": 32, "weight_decay": 1e-2, **overrides})


class MultiViewDetector:
    """Wrap ``base`` (any detector) so its per-view detections agree across the views.

    Args:
        base: a :class:`~mvxray.detectors2d.base.Detector2D`.
        lifter: a :class:`~mvxray.lifting.base.Lifter` (default ``voting`` with :data:`BOX_FIT`:
            each box's extent fitted to its supporting 2D boxes, so its projections have their
            size; a cube of their median back-projected size came out ~1.2× too large, and on
            5–13 px boxes 0.11 of the found indications' view-boxes fell below IoU 0.5 with the
            cube, 0.06 with the fit — 12 validation chest cases).
        base_score_thresh: ``base`` runs with its score threshold lowered to this (never
            raised) and at least ``base_max_boxes`` boxes per view: the vote needs the weak boxes
            a single view would discard (YOLO made multi-view: recall 0.36 → 0.48 at 1 FP/image
            on the validation cases). ``None``: ``base`` as given.
        base_max_boxes: see ``base_score_thresh``.

    Example:
        >>> from mvxray.detectors2d.oracle import OracleDetector
        >>> det = MultiViewDetector(OracleDetector())
        >>> det.name
        'oracle+multiview'
    """

    def __init__(
        self,
        base: Any,
        lifter: Any = None,
        base_score_thresh: float | None = 1e-3,
        base_max_boxes: int = 300,
    ) -> None:
        if lifter is None:
            from mvxray.lifting import build

            lifter = build("voting", **BOX_FIT)
        self.name = f"{getattr(base, 'name', type(base).__name__)}+multiview"
        self.base, self.lifter = base, lifter
        self.base_score_thresh, self.base_max_boxes = base_score_thresh, base_max_boxes
        check = getattr(lifter, "check_detector", None)  # a re-scorer fitted on another one
        if callable(check):
            check(base)  # detector_id ignores the thresholds _relaxed_base lowers

    def predict(self, images: torch.Tensor) -> list[Detections2D]:
        """Not available: multi-view consistency needs the rig of the views."""
        raise TypeError(
            f"{self.name}: needs the calibrated rig; call predict_sample(sample) "
            "(mvxray.detectors2d.predict_sample) instead of predict(images)"
        )

    def predict_sample(self, sample: Any) -> list[Detections2D]:
        """Per view of ``sample``: the projected 3D indications, scored by their 3D score."""
        lifted = self.lifter.lift(sample, predict_sample(self._relaxed_base(), sample))
        rig, device = sample.rig, lifted.boxes3d.device
        boxes2d, visible = project_boxes3d(
            lifted.boxes3d, rig.K.to(device), rig.T_cam_from_ct.to(device), rig.height, rig.width
        )
        return [
            Detections2D(
                boxes2d[v][keep].float(),
                lifted.scores[keep],
                torch.zeros(int(keep.sum()), dtype=torch.long, device=device),
            )
            for v, keep in enumerate(visible)
        ]

    def _relaxed_base(self) -> Any:
        """``base`` with the lower threshold (a copy sharing its network; ``base`` unchanged)."""
        cfg = getattr(self.base, "config", None)
        if self.base_score_thresh is None or not hasattr(cfg, "score_thresh"):
            return self.base
        lowered = {"score_thresh": min(cfg.score_thresh, self.base_score_thresh)}
        if hasattr(cfg, "detections_per_img"):
            lowered["detections_per_img"] = max(cfg.detections_per_img, self.base_max_boxes)
        relaxed = copy.copy(self.base)
        relaxed.config = dataclasses.replace(cfg, **lowered)
        return relaxed

    def fit(self, train: Any, val: Any | None = None, **kwargs: Any) -> dict[str, float]:
        """Train the base detector (then :meth:`fit_lifter` for a lifter that learns)."""
        return self.base.fit(train, val, **kwargs)

    def fit_lifter(
        self, train: Any, val: Any | None = None, progress: bool = False
    ) -> dict[str, float]:
        """Fit the lifter on what the base detector, run as in :meth:`predict_sample`, finds in
        ``train`` (a lifter that learns from detections, e.g. :func:`rescoring_lifter`).

        Raises:
            TypeError: the lifter does not learn from detections.
        """
        fit = getattr(self.lifter, "fit", None)
        if getattr(self.lifter, "name", None) not in _TRAINABLE or not callable(fit):
            raise TypeError(
                f"{self.name}: lifter {getattr(self.lifter, 'name', self.lifter)!r} does not "
                f"learn from detections; use one of {sorted(_TRAINABLE)} (rescoring_lifter())"
            )
        return fit(train, val, detector=self._relaxed_base(), progress=progress)

    def save(self, path: str | Path) -> None:
        """Save the base detector (load it and wrap it again to restore this one)."""
        self.base.save(path)
