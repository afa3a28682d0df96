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
binary cross-entropy (a few hundred AdamW steps: seconds on a CPU). With ``patch_px`` the
classifier also sees an X-ray patch of every view around each candidate
(:mod:`mvxray.lifting.patches`) and trains in mini-batch epochs (minutes).
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
from mvxray.detectors2d.base import Detections2D, detector_id, predict_sample
from mvxray.geometry import pixels_to_grid, project_points, visible_mask
from mvxray.lifting.base import Lifted3D
from mvxray.lifting.patches import JITTER_PX, PatchScorer, augment, candidate_patches, centre
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
        seed: seed of the classifier's initialization (and of its batches and augmentation).
        patch_px: with a side > 0 (a multiple of 8), the classifier also looks at the X-rays:
            a CNN on a ``patch_px`` patch of every view around the candidate, pooled over the
            views, with the features (:mod:`mvxray.lifting.patches`); 0: features only.
        patch_epochs: passes over the training candidates of the patch classifier …
        patch_batch: … in batches of this many candidates, …
        patch_lr: … with a one-cycle learning rate peaking here.
    """

    voting: VotingConfig = field(default_factory=lambda: VotingConfig(max_boxes=40))
    window_px: int = 5
    hidden: int = 16
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0
    patch_px: int = 0
    patch_epochs: int = 20
    patch_batch: int = 64
    patch_lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.window_px < 1 or self.window_px % 2 == 0:
            raise ValueError(f"FPRConfig.window_px: expected odd >= 1, found {self.window_px}")
        if self.hidden < 0 or self.epochs < 1:
            raise ValueError(
                f"FPRConfig: expected hidden >= 0 and epochs >= 1, "
                f"found {self.hidden}, {self.epochs}"
            )
        if self.patch_px < 0 or self.patch_px % 8:
            raise ValueError(
                f"FPRConfig.patch_px: expected 0 or a multiple of 8, found {self.patch_px}"
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
    g = pixels_to_grid(uv, H, W)[:, None]
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
        self.model = self._new_model()
        self.fitted = False
        #: :func:`~mvxray.detectors2d.base.detector_id` of the detector it was fitted on.
        self.detector_id: str | None = None

    def _new_model(self) -> nn.Module:
        if self.fpr.patch_px:
            return PatchScorer(len(FEATURES), self.fpr.patch_px)
        return _MLP(len(FEATURES), self.fpr.hidden)

    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """Lift one case; scores are the classifier's probabilities once fitted."""
        c = self.candidates(sample, detections)
        if not self.fitted or len(c.points) == 0:
            return self._lifted(sample, detections, c, self.vote_scores(c.votes))
        with torch.no_grad():
            x, patches, seen = self._inputs(sample, c)
            scores = torch.sigmoid(self._logits(self.model, x, patches, seen)).double()
        return self._lifted(sample, detections, c, scores)

    def _inputs(
        self, sample: MultiViewSample, c: Candidates
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The candidates' features and, with ``patch_px``, their patches (cut
        :data:`~mvxray.lifting.patches.JITTER_PX` larger, float16) and visibility."""
        x = candidate_features(sample.rig, c, self.config.eps, self.fpr.window_px)
        if not self.fpr.patch_px:
            return x, None, None
        size = self.fpr.patch_px + 2 * JITTER_PX
        patches, seen = candidate_patches(sample.images, sample.rig, c.points, size)
        return x, patches.half(), seen

    def _logits(
        self,
        model: nn.Module,
        x: torch.Tensor,
        patches: torch.Tensor | None,
        seen: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if patches is None:
            return model(x)
        size = self.fpr.patch_px
        crop = centre(patches, size) if generator is None else augment(patches, size, generator)
        return model(x, crop, seen)

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
        x, patches, seen, y = self._dataset(train, detector, progress)
        if not len(y):
            raise ValueError("FPRVotingLifter.fit: no training candidate (no sample, or no vote)")
        if y.sum() == 0:
            raise ValueError(
                f"FPRVotingLifter.fit: none of the {len(y)} training candidates hits an "
                "indication; check the detector and the ground truth"
            )
        pos_weight = (len(y) - y.sum()) / y.sum()
        with torch.random.fork_rng():  # seeded without touching the caller's RNG
            torch.manual_seed(self.fpr.seed)
            model = self._new_model()
            model.mean.copy_(x.mean(0))
            model.std.copy_(x.std(0).clamp(min=1e-6))
            loss = self._train(model, x, patches, seen, y, pos_weight, progress)
        self.model, self.fitted = model.eval(), True
        self.detector_id = detector_id(detector)
        out = {"loss": loss, "candidates": float(len(y)), "positives": float(y.sum())}
        xv, pv, sv, yv = self._dataset(val or [], detector, progress)
        if len(yv):
            with torch.no_grad():
                logits = self._logits(model, xv, pv, sv)
                out["val_loss"] = float(
                    F.binary_cross_entropy_with_logits(logits, yv, pos_weight=pos_weight)
                )
        return out

    def _train(
        self,
        model: nn.Module,
        x: torch.Tensor,
        patches: torch.Tensor | None,
        seen: torch.Tensor | None,
        y: torch.Tensor,
        pos_weight: torch.Tensor,
        progress: bool,
    ) -> float:
        """The features-only MLP: full-batch AdamW steps. The patch CNN: mini-batch epochs with
        a one-cycle schedule, each batch shifted and flipped. Returns the last loss."""
        from tqdm import tqdm

        cfg = self.fpr
        if patches is None:
            opt = torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
            for _ in range(cfg.epochs):
                opt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight)
                loss.backward()
                opt.step()
            return loss.item()
        g = torch.Generator().manual_seed(cfg.seed)
        batches = [math.ceil(len(y) / cfg.patch_batch)] * cfg.patch_epochs
        opt = torch.optim.AdamW(model.parameters(), cfg.patch_lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.patch_lr, total_steps=sum(batches))
        model.train()
        for _ in tqdm(range(cfg.patch_epochs), desc="voting_fpr patches", disable=not progress):
            for b in torch.randperm(len(y), generator=g).split(cfg.patch_batch):
                logits = self._logits(model, x[b], patches[b], seen[b], generator=g)
                loss = F.binary_cross_entropy_with_logits(logits, y[b], pos_weight=pos_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return loss.item()

    def _dataset(
        self, samples: Iterable[MultiViewSample], detector: Any, progress: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Features, patches (or ``None``), visibility (or ``None``) and labels of the
        candidates of ``samples``."""
        from tqdm import tqdm

        rows = []
        for s in tqdm(samples, desc="voting_fpr candidates", disable=not progress):
            with torch.no_grad():
                c = self.candidates(s, predict_sample(detector, s))
                rows.append((*self._inputs(s, c), candidate_labels(c, s.boxes3d)))
        if not rows:
            return torch.zeros(0, len(FEATURES)), None, None, torch.zeros(0)
        cols = list(zip(*rows))
        x, y = torch.cat(cols[0]), torch.cat(cols[3])
        if not self.fpr.patch_px:
            return x, None, None, y
        return x, torch.cat(cols[1]), torch.cat(cols[2]), y

    def save(self, path: str | Path) -> None:
        """Write config + weights atomically."""
        from mvxray.io import atomic_torch_save

        if not self.fitted:
            raise RuntimeError("FPRVotingLifter.save: not fitted; call fit first")
        atomic_torch_save(
            {
                "lifter": self.name,
                "config": asdict(self.fpr),
                "state": self.model.state_dict(),
                "detector": self.detector_id,
            },
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
        lifter = cls(FPRConfig(**cfg))  # a file without patch fields: features only
        lifter.model.load_state_dict(doc["state"])
        lifter.model.eval()
        lifter.fitted = True
        lifter.detector_id = doc.get("detector")  # None in files saved before it was recorded
        return lifter

    def check_detector(self, detector: Any) -> None:
        """Refuse a detector other than the one this lifter was fitted on: it learned that
        detector's clutter, and another one's scores and boxes mean something else.

        Raises:
            ValueError: fitted on another detector's output.
        """
        found = detector_id(detector)
        if self.detector_id is not None and found != self.detector_id:
            raise ValueError(
                f"{self.name}: fitted on the output of detector {self.detector_id}, given "
                f"{found}; fit it on this detector's output (mvxray train-3d --lifter "
                "voting_fpr, or mvxray detect --multiview --rescore DATA)"
            )


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
