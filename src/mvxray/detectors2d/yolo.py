"""``yolo``: an ultralytics YOLO detection model, fully offline, trained by mvxray's own loop.

This module is the one adapter for ultralytics' conventions:

- it sets ``YOLO_OFFLINE=1`` and ``YOLO_CONFIG_DIR`` (inside :func:`mvxray.paths.cache_dir`)
  before ultralytics is first imported (:func:`import_ultralytics`), so no settings land in the
  home directory and nothing is fetched;
- models are built from a ``*.yaml`` (default ``yolov8n-p2.yaml``: YOLOv8-nano with a stride-4
  head — at stride 8 an indication of 4–6 px often contains no anchor centre, so the
  task-aligned assigner gives it no positive at all); never from a ``.pt`` download;
- mvxray's boxes become YOLO's label format (class, normalized cx, cy, w, h) in
  :func:`to_yolo_labels`, and its predictions (pixel x1, y1, x2, y2, conf, class after NMS)
  come back as :class:`~mvxray.detectors2d.base.Detections2D`;
- training uses ultralytics' model and loss (``v8DetectionLoss``) inside
  :func:`mvxray.detectors2d.train.fit_detector` — not ultralytics' trainer, whose dataset check
  and plots want fonts and files from the internet. :func:`export_yolo_dataset` writes a
  dataset for users who prefer ``yolo train`` anyway.
"""

from __future__ import annotations

import json
import math
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvxray.detectors2d.checkpoint import config_from_dict, read_checkpoint, save_checkpoint
from mvxray.detectors2d.heatmap import HeatmapConfig, heat_loss
from mvxray.detectors2d.normalize import (
    TorchDetectorMixin,
    check_input_resize,
    robust_normalize,
)
from mvxray.paths import cache_dir


def import_ultralytics() -> Any:
    """Import ultralytics offline, with its settings inside mvxray's cache (the one place)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics

    return ultralytics


@dataclass(frozen=True)
class YoloConfig:
    """YOLO options.

    Attributes:
        model: an ultralytics detection ``*.yaml`` (scale letter in the name, e.g.
            ``yolov8n-p2.yaml``, ``yolov8n.yaml``, ``yolo11n.yaml``) or a path to one.
        num_classes: indication classes.
        score_thresh: drop detections scoring below.
        nms_iou: NMS IoU.
        detections_per_img: at most this many boxes per view.
        input_size: resize square views to this size (multiple of 32; ``None``: as given, padded
            to a multiple of 32).
        input_scale: resize views by this factor before the network (``None``: as given; not
            with ``input_size``). 2 makes a 5-px indication cover 4× the stride-4 cells.
        box_gain: box-loss weight (ultralytics' ``box``).
        cls_gain: classification-loss weight (``cls``).
        dfl_gain: distribution-focal-loss weight (``dfl``).
        aux_heat_weight: weight of an auxiliary training loss (0: off). A small head on the
            features the finest output level sees predicts the ``heatmap`` detector's per-pixel
            centre heatmap, upsampled to the input's pixels, under its focal loss: every
            indication supervises its own pixels, not only the few anchor points the assigner
            picks. The boxes and scores do not use the head; its centre probabilities come
            with them as each view's dense heatmap (``Detections2D.heatmap``), which the
            ``voting`` lifter and ``--multiview`` take as evidence instead of splatted boxes.
        bg_sigma_frac: input background-subtraction σ / image height.
        object_px_mm: the training views' mm per pixel at the object, and ``filter_height``
            their height, px: recorded by training, used by
            :func:`~mvxray.detectors2d.base.predict_sample` (``None``: views as given).
        max_box_px: boxes whose longer side exceeds this (px of the views at the trained
            scale) are dropped; training on crops records the crop's size (``None``: no limit).
        batch_size: views per forward pass at inference.
    """

    model: str = "yolov8n-p2.yaml"
    num_classes: int = 1
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_img: int = 100
    input_size: int | None = None
    input_scale: float | None = None
    box_gain: float = 7.5
    cls_gain: float = 0.5
    dfl_gain: float = 1.5
    aux_heat_weight: float = 0.0
    bg_sigma_frac: float = 1 / 32
    batch_size: int = 8
    object_px_mm: float | None = None
    filter_height: int | None = None
    max_box_px: float | None = None

    def __post_init__(self) -> None:
        if not str(self.model).endswith((".yaml", ".yml")):
            raise ValueError(
                f"YoloConfig.model: expected an ultralytics *.yaml (no .pt downloads), found {self.model!r}"
            )
        if self.input_size is not None and self.input_size % 32:
            raise ValueError(
                f"YoloConfig.input_size: expected a multiple of 32, found {self.input_size}"
            )
        if self.aux_heat_weight < 0:
            raise ValueError(
                f"YoloConfig.aux_heat_weight: expected >= 0, found {self.aux_heat_weight}"
            )
        check_input_resize(self)


def to_yolo_labels(boxes: list[torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """mvxray boxes → ultralytics' batch labels (normalized cx, cy, w, h; class 0).

    Args:
        boxes: per image ``(N_b, 4)`` px (x1, y1, x2, y2).
        height: image height, px.
        width: image width, px.

    Returns:
        ``{"batch_idx": (N,), "cls": (N, 1), "bboxes": (N, 4)}``.

    Example:
        >>> to_yolo_labels([torch.tensor([[10.0, 20, 30, 60]])], 100, 200)["bboxes"]
        tensor([[0.1000, 0.4000, 0.1000, 0.4000]])
    """
    idx, xywh = [], []
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    for i, b in enumerate(boxes):
        b = b.float().reshape(-1, 4).cpu()
        c = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], dim=1)
        xywh.append(c / scale)
        idx.append(torch.full((len(b),), float(i)))
    bb = torch.cat(xywh) if xywh else torch.zeros(0, 4)
    return {
        "batch_idx": torch.cat(idx) if idx else torch.zeros(0),
        "cls": torch.zeros(len(bb), 1),
        "bboxes": bb,
    }


def build_model(cfg: YoloConfig, yaml: dict[str, Any] | None = None) -> nn.Module:
    """An ultralytics ``DetectionModel`` from ``cfg.model`` (or a stored yaml dict), random init."""
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(
        yaml if yaml is not None else cfg.model, ch=3, nc=cfg.num_classes, verbose=False
    )
    model.args = types.SimpleNamespace(box=cfg.box_gain, cls=cfg.cls_gain, dfl=cfg.dfl_gain)
    if cfg.aux_heat_weight > 0:
        c = model.model[-1].cv2[0][0].conv.in_channels  # the finest level's input channels
        model.aux_head = nn.Sequential(nn.Conv2d(c, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 1, 1))
        nn.init.constant_(model.aux_head[-1].bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01
    return model


class YoloDetector(TorchDetectorMixin):
    """YOLO on ``(V, 1, H, W)`` X-ray views (any intensity scale).

    Example:
        >>> det = YoloDetector(model="yolov8n.yaml")
        >>> [tuple(d.boxes.shape[1:]) for d in det.predict(torch.rand(2, 1, 64, 64))]
        [(4,), (4,)]
    """

    name = "yolo"
    config_class = YoloConfig

    def __init__(
        self,
        config: YoloConfig | None = None,
        _yaml: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.config = config_from_dict(YoloConfig, overrides) if config is None else config
        self.model = build_model(self.config, _yaml)
        self.model.eval()
        # the finest level's input feeds the aux head; a dict, so that shallow copies (see
        # MultiViewDetector) read what the shared network's hook writes
        self._features: dict[str, torch.Tensor] = {}
        if self.config.aux_heat_weight > 0:
            finest = self.model.model[self.model.model[-1].f[0]]
            finest.register_forward_hook(lambda m, i, o: self._features.__setitem__("finest", o))

    @staticmethod
    def _pad(x: torch.Tensor) -> torch.Tensor:
        """Zero-pad bottom / right to multiples of 32 (YOLO's largest stride)."""
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % 32, 0, -h % 32))

    def _aux_logits(self, size: tuple[int, int]) -> torch.Tensor:
        """The aux head's centre logits ``(B, 1, *size)`` from the last forward pass's finest
        features, upsampled to the (padded) input's pixels; the features are released."""
        finest = self._features.pop("finest")
        return F.interpolate(
            self.model.aux_head(finest), size, mode="bilinear", align_corners=False
        )

    def training_loss(self, x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """ultralytics' detection loss (box + cls + dfl, × batch size) for :meth:`prepare`-d
        ``(B, 3, h, w)`` inputs (or crops of them) and their ``(N_b, 4)`` px boxes."""
        x = self._pad(x)
        batch = to_yolo_labels(list(boxes), x.shape[-2], x.shape[-1])
        batch = {k: v.to(x.device) for k, v in batch.items()}
        batch["img"] = x
        loss, _ = self.model.loss(batch)
        if self.config.aux_heat_weight == 0:
            return loss.sum()
        logits = self._aux_logits(x.shape[-2:])
        # the heatmap detector's own targets (its default Gaussian widths)
        aux = heat_loss(logits.float(), boxes, HeatmapConfig.sigma_frac, HeatmapConfig.min_sigma_px)
        # ultralytics' loss is a sum over the batch: scale the per-image aux loss the same way
        return loss.sum() + self.config.aux_heat_weight * len(x) * aux

    def _detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """ultralytics' NMS on the padded input → boxes (px of ``x``), confidences, classes,
        and with the aux head its dense centre heatmap (px of ``x``)."""
        from ultralytics.utils.nms import non_max_suppression

        c = self.config
        padded = self._pad(x)
        preds = self.model(padded)
        preds = preds[0] if isinstance(preds, (tuple, list)) else preds
        nms = non_max_suppression(
            preds, conf_thres=c.score_thresh, iou_thres=c.nms_iou, max_det=c.detections_per_img
        )
        out = [(r[:, :4], r[:, 4], r[:, 5]) for r in nms]
        if c.aux_heat_weight == 0:
            return out
        h, w = x.shape[-2:]
        heat = torch.sigmoid(self._aux_logits(padded.shape[-2:]).float())[:, 0, :h, :w]
        return [(*r, heat[i]) for i, r in enumerate(out)]

    def save(self, path: str | Path) -> None:
        """Write config, model yaml and weights to one file, atomically."""
        state = {
            "yaml": json.loads(json.dumps(self.model.yaml)),
            "weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        save_checkpoint(path, self.name, self.config, state)

    @classmethod
    def load(cls, path: str | Path) -> YoloDetector:
        """Read a detector written by :meth:`save`."""
        ckpt = read_checkpoint(path)
        det = cls(config_from_dict(YoloConfig, ckpt["config"]), _yaml=ckpt["state"]["yaml"])
        det.model.load_state_dict(ckpt["state"]["weights"])
        det.model.eval()
        return det


def export_yolo_dataset(dataset: Any, out: str | Path, split: str = "train") -> Path:
    """Write a dataset of :class:`~mvxray.datasets.base.MultiViewSample` in ultralytics' layout:
    ``out/images/<split>/<case>_v<k>.png`` (8-bit, per-image robust-normalized) and
    ``out/labels/<split>/<case>_v<k>.txt`` (``0 cx cy w h``, normalized), plus ``out/data.yaml``.

    Returns:
        the ``data.yaml`` path.
    """
    from PIL import Image

    out = Path(out)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for n, sample in enumerate(dataset):
        case = sample.case_id or f"case{n:05d}"
        V, _, H, W = sample.images.shape
        img8 = (robust_normalize(sample.images[:, :1]).clamp(0, 1) * 255).round().to(torch.uint8)
        for v in range(V):
            stem = f"{case}_v{v:02d}"
            Image.fromarray(np.asarray(img8[v, 0])).save(out / "images" / split / f"{stem}.png")
            lab = to_yolo_labels([sample.boxes2d[v][sample.visible2d[v].bool()]], H, W)["bboxes"]
            lines = "".join(f"0 {a:.6f} {b:.6f} {c:.6f} {d:.6f}\n" for a, b, c, d in lab.tolist())
            (out / "labels" / split / f"{stem}.txt").write_text(lines)
    data = out / "data.yaml"
    data.write_text(
        f"path: {out.resolve()}\n{split}: images/{split}\nval: images/{split}\nnames:\n  0: indication\n"
    )
    return data
