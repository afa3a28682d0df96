"""``mv2d``: the learned lifter (MV2D, "2D detections as object queries") behind the Lifter API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from mvxray.benchmarks.metrics3d import evaluate_3d
from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D, predict_sample
from mvxray.geometry._checks import ShapeError
from mvxray.heads import LossConfig
from mvxray.io import atomic_torch_save
from mvxray.lifting.base import Lifted3D
from mvxray.lifting.mv2d.encoder import DetectorEncoder
from mvxray.lifting.mv2d.inputs import collate, detections_from_truth
from mvxray.lifting.mv2d.model import MV2DNet, MV2DNetConfig
from mvxray.lifting.mv2d.train import MV2DTrainConfig, train_mv2d


@dataclass(frozen=True)
class MV2DConfig:
    """Configuration of :class:`MV2DLifter`.

    Attributes:
        net: the network's architecture.
        loss: loss weights (``offset_scale_mm`` follows the network's). Beyond MV2D, every
            query whose 2D box belongs to an object also regresses that object's box
            (``w_one_to_many = 1``), which makes CPU-sized training runs learn much faster.
        score_threshold: boxes scoring below this are dropped at inference.
        nms_frac: a box whose centre is closer than this × the size of a better box is dropped.
        max_boxes: at most this many boxes per case.
    """

    net: MV2DNetConfig = field(default_factory=MV2DNetConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(w_one_to_many=1.0))
    score_threshold: float = 0.05
    nms_frac: float = 1.0
    max_boxes: int = 100

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MV2DConfig:
        """Inverse of ``dataclasses.asdict``; unknown keys raise."""
        d = dict(d)
        net = MV2DNetConfig(**d.pop("net", {}))
        loss = LossConfig(**d.pop("loss", {}))
        return cls(net=net, loss=loss, **d)


def _split_overrides(overrides: dict[str, Any]) -> MV2DConfig:
    names = {
        "net": {f.name for f in fields(MV2DNetConfig)},
        "loss": {f.name for f in fields(LossConfig)} - {"offset_scale_mm"},
        "top": {f.name for f in fields(MV2DConfig)} - {"net", "loss"},
    }
    unknown = set(overrides) - set().union(*names.values())
    if unknown:
        raise TypeError(f"MV2DLifter: unknown option(s) {sorted(unknown)}")
    pick = lambda k: {n: v for n, v in overrides.items() if n in names[k]}  # noqa: E731
    return MV2DConfig(
        net=MV2DNetConfig(**pick("net")), loss=LossConfig(**pick("loss")), **pick("top")
    )


class MV2DLifter:
    """Learned lifter: MV2D's dynamic queries + relevant-RoI transformer decoder + 3D head.

    Args:
        config: the configuration; or give its fields (of ``net``, ``loss`` or the top level)
            as keyword arguments.
        device: where the network runs (default: CUDA when available, else CPU).
        detector: with ``encoder="detector"``, the 2D detector whose backbone is shared (it can
            also be given later to :meth:`fit` with ``joint=True``).

    Attributes:
        detector: the jointly trained 2D detector (``None`` unless ``fit(..., joint=True)``
            ran, or the lifter shares a detector's backbone); it proposes the boxes to lift.

    Example:
        >>> lifter = MV2DLifter(channels=16, embed_dim=32, num_layers=1)
        >>> lifter.config.net.num_layers, lifter.config.loss.lambda_3d
        (1, 0.1)
    """

    name = "mv2d"

    def __init__(
        self,
        config: MV2DConfig | None = None,
        device: str | torch.device | None = None,
        detector: Any | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config if config is not None else _split_overrides(overrides)
        # matching, loss and head must measure centre offsets in the same unit
        cfg = replace(cfg, loss=replace(cfg.loss, offset_scale_mm=cfg.net.offset_scale_mm))
        self.config = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detector = detector
        self._model: MV2DNet | None = None
        if not self.shares_detector or detector is not None:
            self._model = self._build_model()

    @property
    def shares_detector(self) -> bool:
        """Whether the image encoder is the 2D detector's backbone (``encoder="detector"``)."""
        return self.config.net.encoder == "detector"

    def _build_model(self) -> MV2DNet:
        encoder = None
        if self.shares_detector:
            encoder = DetectorEncoder(self.detector, self.config.net.channels)
        return MV2DNet(self.config.net, encoder).to(self.device)

    @property
    def model(self) -> MV2DNet:
        """The network (built on first use when it waits for the detector it shares)."""
        if self._model is None:
            if self.detector is None:
                raise ValueError(
                    "mv2d: encoder='detector' shares a 2D detector's backbone; give one: "
                    "MV2DLifter(..., detector=det) or fit(..., detector=det, joint=True)"
                )
            self._model = self._build_model()
        return self._model

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def lift(self, sample: MultiViewSample, detections: list[Detections2D]) -> Lifted3D:
        """3D boxes of one case from its per-view detections (sorted by decreasing score).

        Raises:
            ShapeError: the number of detection lists differs from the number of views.
        """
        V = sample.num_views
        if len(detections) != V:
            raise ShapeError(
                f"detections: expected one entry per view ({V}), found {len(detections)}"
            )
        self.model.eval()
        inp = collate([sample], [detections]).to(self.device)
        preds, aux = self.model(inp)
        p = preds[-1]
        scores = p.scores[0]
        keep = inp.valid[0] & (scores >= self.config.score_threshold)
        idx = torch.nonzero(keep).squeeze(1)
        idx = idx[torch.argsort(scores[idx], descending=True)]
        centre, size = p.centre[0], p.size[0]
        kept: list[int] = []
        for q in idx.tolist():
            if len(kept) >= self.config.max_boxes:
                break
            if kept:
                d = (centre[kept] - centre[q]).norm(dim=-1)
                if bool((d < self.config.nms_frac * size[kept].amax(-1)).any()):
                    continue
            kept.append(q)
        k = torch.tensor(kept, dtype=torch.long, device=self.device)
        views = torch.nn.functional.one_hot(inp.roi_view[0], V).bool()  # (Q, V)
        support = (aux["allowed"][0][k, :, None] & views[None] & inp.valid[0][None, :, None]).any(1)
        out_dev = detections[0].boxes.device if detections else torch.device("cpu")
        return Lifted3D(
            p.boxes3d[0, k].float().to(out_dev), scores[k].float().to(out_dev), support.to(out_dev)
        )

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: Any,
        val: Any | None = None,
        *,
        detector: Any | None = None,
        joint: bool = False,
        out_dir: str | Path | None = None,
        resume: bool = True,
        progress: bool = True,
        **train_overrides: Any,
    ) -> dict[str, Any]:
        """Train on cases of ``train`` (a sequence of :class:`MultiViewSample`).

        Args:
            train: training cases.
            val: optional validation cases; their 3D metrics are returned (``val_*``).
            detector: a frozen :class:`~mvxray.detectors2d.base.Detector2D` whose detections
                become the queries; ``None`` uses the ground-truth 2D boxes (oracle).
            joint: train ``detector`` (a torch detector: ``faster_rcnn``, ``yolo``, ``heatmap``)
                with the lifter, ``L = L2d + λ3d·L3d``; the queries are the ground-truth boxes
                during training and the detector's boxes in validation. With
                ``encoder="detector"`` the two share the backbone and :meth:`save` stores both.
            out_dir: checkpoint directory (``mv2d_last.pt``, and ``mv2d.pt`` at the end).
            resume: continue from ``out_dir/mv2d_last.pt`` when present.
            progress: show a progress bar.
            **train_overrides: fields of :class:`MV2DTrainConfig` (epochs, batch_size, lr, ...).

        Returns:
            ``steps``, ``loss`` (last 10 steps' mean 3D loss), ``loss_first``, ``seconds``,
            and the validation metrics of :func:`mvxray.benchmarks.metrics3d.evaluate_3d`
            prefixed ``val_``.
        """
        tcfg = MV2DTrainConfig(**train_overrides)
        if joint:
            missing = [
                a for a in ("module", "prepare", "training_loss") if not hasattr(detector, a)
            ]
            if detector is None or missing:
                found = getattr(detector, "name", type(detector).__name__)
                raise TypeError(
                    f"joint=True trains the 2D detector with the lifter: it must be a torch "
                    f"detector (faster_rcnn, yolo, heatmap), found {found!r}"
                )
            if self.shares_detector and self._model is not None and detector is not self.detector:
                raise ValueError("this lifter already shares another detector's backbone")
            self.detector = detector
        elif self.shares_detector:
            raise ValueError(
                "encoder='detector' shares the detector's backbone: fit with joint=True"
            )
        detect = (
            (lambda s: predict_sample(detector, s)) if detector is not None and not joint else None
        )
        out = train_mv2d(
            self.model,
            self.config.loss,
            train,
            detect,
            tcfg,
            out_dir,
            resume,
            progress,
            extra_state=self._file_state(),
            joint_detector=detector if joint else None,
        )
        if out_dir is not None:
            self.save(Path(out_dir) / "mv2d.pt")
        result: dict[str, Any] = {k: v for k, v in out.items() if k != "history"}
        if val is not None and len(val):
            preds, gts = [], []
            for i in range(len(val)):
                s = val[i]
                dets = (
                    predict_sample(detector, s)
                    if detector is not None
                    else detections_from_truth(s)
                )
                preds.append(self.lift(s, dets))
                gts.append(s.boxes3d)
            result.update({f"val_{k}": v for k, v in evaluate_3d(preds, gts).items()})
        return result

    # ------------------------------------------------------------------ persistence
    def _file_state(self) -> dict[str, Any]:
        """Config (and the shared detector's name and config) stored with the weights."""
        state: dict[str, Any] = {"name": self.name, "config": asdict(self.config)}
        if self.shares_detector and self.detector is not None:
            state["detector"] = {"name": self.detector.name, "config": asdict(self.detector.config)}
        return state

    def save(self, path: str | Path) -> None:
        """Write config + weights atomically (one ``torch.save`` file); with a shared backbone
        the detector's weights are part of the network's and its config is stored too."""
        state = {k: v.cpu() for k, v in self.model.state_dict().items()}
        atomic_torch_save({**self._file_state(), "model": state}, Path(path))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> MV2DLifter:
        """Read a lifter written by :meth:`save` (or a training checkpoint ``mv2d_last.pt``).

        Raises:
            ValueError: the file is not an MV2D lifter.
        """
        state = torch.load(Path(path), map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "config" not in state or "model" not in state:
            raise ValueError(f"{path}: not an mv2d lifter file (no 'config' / 'model' entries)")
        detector = None
        if "detector" in state:  # a shared backbone: rebuild the detector, weights come below
            from mvxray import detectors2d

            detector = detectors2d.build(state["detector"]["name"], **state["detector"]["config"])
        lifter = cls(MV2DConfig.from_dict(state["config"]), device=device, detector=detector)
        lifter.model.load_state_dict(state["model"])
        return lifter
