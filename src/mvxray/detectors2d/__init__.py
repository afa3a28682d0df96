"""2D detectors behind one interface (:mod:`mvxray.detectors2d.base`), swappable by name.

>>> sorted(DETECTORS)
['faster_rcnn', 'heatmap', 'log_blob', 'oracle', 'yolo']
>>> det = build("log_blob", min_score=0.1)
>>> det.config.min_score
0.1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mvxray.detectors2d.base import Detections2D, Detector2D, FeatureDetector2D, predict_sample
from mvxray.detectors2d.checkpoint import read_checkpoint
from mvxray.detectors2d.classical import LogBlobConfig, LogBlobDetector
from mvxray.detectors2d.faster_rcnn import FasterRCNNConfig, FasterRCNNDetector
from mvxray.detectors2d.heatmap import HeatmapConfig, HeatmapDetector
from mvxray.detectors2d.oracle import OracleConfig, OracleDetector
from mvxray.detectors2d.yolo import YoloConfig, YoloDetector

#: name → detector class; ``DETECTORS[name](**options)`` builds one with its config's options.
DETECTORS: dict[str, Any] = {
    "faster_rcnn": FasterRCNNDetector,
    "yolo": YoloDetector,
    "heatmap": HeatmapDetector,
    "log_blob": LogBlobDetector,
    "oracle": OracleDetector,
}


def build(name: str, **config: Any) -> Any:
    """Build the detector ``name`` with config options ``config`` (fields of its config class).

    Raises:
        KeyError: unknown name.
        ValueError: unknown option.
    """
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; available: {sorted(DETECTORS)}")
    return DETECTORS[name](**config)


def load_demo_detector() -> Any:
    """The detector shipped with mvxray (rebuilt by ``python -m mvxray.detectors2d.train_demo``).

    Imported lazily so that running that module does not find it already imported.
    """
    from mvxray.detectors2d.train_demo import load_demo_detector as _load

    return _load()


def load(path: str | Path) -> Any:
    """Load any detector saved with ``save(path)`` (the file names its detector).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an mvxray detector checkpoint, or an unknown detector name.
    """
    name = read_checkpoint(path)["detector"]
    if name not in DETECTORS:
        raise ValueError(
            f"{path}: checkpoint of unknown detector {name!r}; available: {sorted(DETECTORS)}"
        )
    return DETECTORS[name].load(path)


__all__ = [
    "DETECTORS",
    "Detections2D",
    "Detector2D",
    "FasterRCNNConfig",
    "FasterRCNNDetector",
    "FeatureDetector2D",
    "HeatmapConfig",
    "HeatmapDetector",
    "LogBlobConfig",
    "LogBlobDetector",
    "OracleConfig",
    "OracleDetector",
    "YoloConfig",
    "YoloDetector",
    "build",
    "load",
    "load_demo_detector",
    "predict_sample",
]
