"""``voting_fpr``: the voting lifter with a learned false-positive reduction of its candidates.

The vote (:mod:`mvxray.lifting.voting`) finds most indications among its first few dozen 3D
maxima, but ranks many of them below clutter that is moderately consistent across views. As in
the false-positive-reduction stage of LUNA16 pipelines, a small classifier re-scores every
candidate from how its evidence is distributed, not just from its mean. Its features do not
depend on the number of views, the intensity scale or where the candidate lies in the CT, so a
scorer trained on one rig or phantom is not tied to its anatomy (:func:`candidate_features`).

Training (:meth:`FPRVotingLifter.fit`): the 2D detector runs on every training case, the vote's
candidates are labelled positive when they fall within an indication's radius (the FROC hit
rule of :mod:`mvxray.benchmarks.metrics3d`), and an MLP is fitted full-batch with a class-balanced
binary cross-entropy (a few hundred AdamW steps: seconds on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D, predict_sample
from mvxray.geometry import project_points, visible_mask
from mvxray.lifting.base import Lifted3D
from mvxray.lifting.voting import Candidates, VotingConfig, VotingLifter

#: The feature names of :func:`candidate_features`, in column order.
FEATURES = (
    "vote",
    "evidence_min",
    "evidence_q25",
    "evidence_median",
    "evidence_q75",
    "evidence_max",
    "window_min",
    "window_median",
    "centred",
    "prominence_4mm",
    "prominence_8mm",
    "prominence_12mm",
    "support_frac",
    "log_size_mm",
    "size_spread",
    "vote_below_best",
)


@dataclass(frozen=True)
class FPRConfig:
    """Configuration of :class:`FPRVotingLifter`.

    Attributes:
        voting: the candidate generator; ``max_boxes`` is how many candidates are re-scored.
        window_px: side of the window (px) in which each view's best evidence is read.
        hidden: hidden units of the MLP (0: logistic regression).
        epochs: full-batch AdamW steps.
        lr: learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of the MLP's initialization.
    """

    voting: VotingConfig = field(default_factory=lambda: VotingConfig(max_boxes=40))
    window_px: int = 5
    hidden: int = 16
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window_px < 1 or self.window_px % 2 == 0:
            raise ValueError(f"FPRConfig.window_px: expected odd >= 1, found {self.window_px}")
        if self.hidden < 0 or self.epochs < 1:
            raise ValueError(
                f"FPRConfig: expected hidden >= 0 and epochs >= 1, "
                f"found {self.hidden}, {self.epochs}"
            )


def candidate_features(
    rig: Any, c: Candidates, eps: float = 0.02, window_px: int = 5
) -> torch.Tensor:
    """``(P, F)`` features of the vote candidates ``c`` of one case (columns: :data:`FEATURES`).

    Per candidate: its vote; quantiles over the views of the log evidence at its projection and
    of the best log evidence in a ``window_px`` window around it; how centred that evidence is
    (median of the two's difference); its 3D prominence (vote minus the mean vote 4, 8, 12 mm
    away along the axes); the fraction of views with a supporting detection; the log median and
    relative spread of those detections' back-projected sizes; its vote below the case's best.

    ``eps`` is the vote's (:attr:`VotingConfig.eps`). Views that do not see a candidate are left
    out of its quantiles.
    """
    P = len(c.points)
    if P == 0:
        return torch.zeros(0, len(FEATURES))
    H, W = c.maps.shape[-2:]
    uv, z = project_points(c.points.float(), rig.K.float().cpu(), rig.T_cam_from_ct.float().cpu())
    seen = visible_mask(uv, z, H, W)
    g = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], -1)[:, None]
    log_e = torch.log(c.maps + eps)[:, None]  # the vote's own evidence scale
    window = F.max_pool2d(log_e, window_px, 1, window_px // 2)
    at = F.grid_sample(log_e, g, align_corners=False)[:, 0, 0]  # (V, P)
    best = F.grid_sample(window, g, align_corners=False)[:, 0, 0]
    at = torch.where(seen, at, math.nan)
    best = torch.where(seen, best, math.nan)
    q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    at_q = torch.nanquantile(at, q, dim=0).T
    best_q = torch.nanquantile(best, q[[0, 2]], dim=0).T
    centred = torch.nanmedian(at - best, 0).values[:, None]
    prominence = torch.stack([c.votes - _ring_mean(c, r) for r in (4.0, 8.0, 12.0)], -1)
    support = (c.rows >= 0).float().mean(1, keepdim=True)
    sizes = torch.zeros(P, 2)
    K = rig.K.double().cpu()
    for p in range(P):
        mm = c.support_sizes_mm(p, K)
        if len(mm) >= 2:
            med = mm.median()
            sizes[p] = torch.stack([med.log(), mm.std() / med]).float()
    below = (c.votes - c.votes.max())[:, None]
    out = torch.cat([c.votes[:, None], at_q, best_q, centred, prominence, support, sizes, below], 1)
    return torch.nan_to_num(out.float(), nan=0.0)


def _ring_mean(c: Candidates, radius_mm: float) -> torch.Tensor:
    """``(P,)`` mean vote at the six points ``radius_mm`` from each candidate along the axes
    (nearest voxel; outside the grid or unvoted counts as the lowest candidate's vote)."""
    origin = torch.stack([a[0] for a in c.axes])
    step = torch.stack([a[1] - a[0] if len(a) > 1 else a.new_tensor(1.0) for a in c.axes])
    size = torch.tensor(c.volume.shape)
    total = torch.zeros_like(c.votes)
    for offset in torch.cat([torch.eye(3), -torch.eye(3)]) * radius_mm:
        ijk = ((c.points.float() + offset - origin) / step).round().long()
        inside = ((ijk >= 0) & (ijk < size)).all(1)
        ijk = torch.minimum(ijk.clamp(min=0), size - 1)
        v = c.volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        total += torch.where(inside & v.isfinite(), v, c.votes.min())
    return total / 6


class _MLP(nn.Module):
    """Standardized features → one logit; the standardization is part of the saved state."""

    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        layers: list[nn.Module] = (
            [nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1)]
            if hidden
            else [nn.Linear(n_in, 1)]
        )
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)[:, 0]


def candidate_labels(c: Candidates, boxes3d: torch.Tensor) -> torch.Tensor:
    """``(P,)`` 1.0 where a candidate lies within an indication's radius (half its mean box
    extent: the FROC hit rule), else 0.0."""
    from mvxray.benchmarks.metrics3d import froc_hits  # the metric's own rule, not a copy

    if len(c.points) == 0 or len(boxes3d) == 0:
        return torch.zeros(len(c.points))
    return froc_hits(c.points, boxes3d.cpu()).any(1).float()


class FPRVotingLifter(VotingLifter):
    """The :class:`VotingLifter`'s candidates, re-scored by a learned classifier.

    Until :meth:`fit` (or :meth:`load`) it scores like the voting lifter.

    Example:
        >>> lifter = FPRVotingLifter(hidden=0)
        >>> lifter.fitted, lifter.fpr.hidden, lifter.config.max_boxes   # config: the vote's
        (False, 0, 40)
    """

    name = "voting_fpr"

    def __init__(self, config: FPRConfig | None = None, **overrides: Any) -> None:
        if config is None:  # FPRConfig fields, plus VotingConfig fields for its candidates
            own = {f.name for f in fields(FPRConfig)}
            voting = overrides.pop("voting", None) or VotingConfig(
                **(
                    {"max_boxes": 40}
                    | {k: overrides.pop(k) for k in list(overrides) if k not in own}
                )
            )
            config = FPRConfig(**overrides, voting=voting)
        self.fpr = config
        super().__init__(config.voting)
        self.model = _MLP(len(FEATURES), config.hidden)
        self.fitted = False

    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """Lift one case; scores are the classifier's probabilities once fitted."""
        c = self.candidates(sample, detections)
        if not self.fitted or len(c.points) == 0:
            return self._lifted(sample, detections, c, self.vote_scores(c.votes))
        with torch.no_grad():
            x = candidate_features(sample.rig, c, self.config.eps, self.fpr.window_px)
            scores = torch.sigmoid(self.model(x)).double()
        return self._lifted(sample, detections, c, scores)

    def fit(
        self,
        train: Iterable[MultiViewSample],
        val: Iterable[MultiViewSample] | None = None,
        *,
        detector: Any,
        progress: bool = False,
    ) -> dict[str, float]:
        """Fit the classifier on the candidates of ``train`` found with ``detector``'s output.

        Returns:
            ``loss`` (final), ``candidates``, ``positives`` (training counts) and, when ``val``
            has candidates, ``val_loss``.

        Raises:
            ValueError: no training candidate, or none is a positive (nothing to learn from).
        """
        x, y = self._dataset(train, detector, progress)
        if not len(y):
            raise ValueError("FPRVotingLifter.fit: no training candidate (no sample, or no vote)")
        if y.sum() == 0:
            raise ValueError(
                f"FPRVotingLifter.fit: none of the {len(y)} training candidates hits an "
                "indication; check the detector and the ground truth"
            )
        cfg = self.fpr
        with torch.random.fork_rng():  # seeded initialization without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            model = _MLP(x.shape[1], cfg.hidden)
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0).clamp(min=1e-6))
        opt = torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
        pos_weight = (len(y) - y.sum()) / y.sum()
        for _ in range(cfg.epochs):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight)
            loss.backward()
            opt.step()
        self.model, self.fitted = model.eval(), True
        out = {"loss": loss.item(), "candidates": float(len(y)), "positives": float(y.sum())}
        xv, yv = self._dataset(val or [], detector, progress)
        if len(yv):
            with torch.no_grad():
                out["val_loss"] = float(
                    F.binary_cross_entropy_with_logits(model(xv), yv, pos_weight=pos_weight)
                )
        return out

    def _dataset(
        self, samples: Iterable[MultiViewSample], detector: Any, progress: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from tqdm import tqdm

        xs, ys = [], []
        for s in tqdm(samples, desc="voting_fpr candidates", disable=not progress):
            with torch.no_grad():
                c = self.candidates(s, predict_sample(detector, s))
            xs.append(candidate_features(s.rig, c, self.config.eps, self.fpr.window_px))
            ys.append(candidate_labels(c, s.boxes3d))
        if not xs:
            return torch.zeros(0, len(FEATURES)), torch.zeros(0)
        return torch.cat(xs), torch.cat(ys)

    def save(self, path: str | Path) -> None:
        """Write config + weights atomically."""
        from mvxray.io import atomic_torch_save

        if not self.fitted:
            raise RuntimeError("FPRVotingLifter.save: not fitted; call fit first")
        atomic_torch_save(
            {"lifter": self.name, "config": asdict(self.fpr), "state": self.model.state_dict()},
            path,
        )

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> FPRVotingLifter:
        """A lifter saved by :meth:`save` (``overrides``: voting config fields, e.g. ``step_mm``).

        Raises:
            ValueError: the file holds another lifter.
        """
        doc = torch.load(path, map_location="cpu", weights_only=True)
        if doc.get("lifter") != cls.name:
            raise ValueError(f"{path}: not a {cls.name} lifter (found {doc.get('lifter')!r})")
        cfg = dict(doc["config"])
        cfg["voting"] = VotingConfig(**{**_tuples(cfg["voting"]), **overrides})
        lifter = cls(FPRConfig(**cfg))
        lifter.model.load_state_dict(doc["state"])
        lifter.model.eval()
        lifter.fitted = True
        return lifter


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
