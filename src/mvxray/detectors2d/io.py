"""Per-case detection files: ``<case_id>.json`` with, per view, boxes (px), scores and labels.

The layout follows the dataset's ``case.json`` style (plain JSON, px, x1 y1 x2 y2)::

    {"format": "mvxray-detections", "version": 1, "case_id": "chest_0000",
     "detector": "yolo", "views": [{"boxes2d_px": [[x1, y1, x2, y2], ...],
                                    "scores": [...], "labels": [...]}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mvxray.detectors2d.base import Detections2D
from mvxray.io import atomic_write_text

FORMAT = "mvxray-detections"
VERSION = 1


def detections_to_json(
    detections: Sequence[Detections2D], case_id: str = "", **meta: Any
) -> dict[str, Any]:
    """A JSON-ready dict of one case's per-view detections (``meta`` keys are added on top)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "case_id": case_id,
        **meta,
        "views": [
            {
                "boxes2d_px": d.boxes.detach().double().cpu().tolist(),
                "scores": d.scores.detach().double().cpu().tolist(),
                "labels": d.labels.detach().long().cpu().tolist(),
            }
            for d in detections
        ],
    }


def detections_from_json(doc: dict[str, Any], source: str = "detections") -> list[Detections2D]:
    """Inverse of :func:`detections_to_json`.

    Raises:
        ValueError: not a detections document, or a view with inconsistent lengths.

    Example:
        >>> d = Detections2D(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.5]), torch.tensor([0]))
        >>> back = detections_from_json(detections_to_json([d], "c0"))
        >>> back[0].boxes.tolist(), back[0].scores.tolist()
        ([[1.0, 2.0, 3.0, 4.0]], [0.5])
    """
    if doc.get("format") != FORMAT or "views" not in doc:
        raise ValueError(
            f"{source}: expected format {FORMAT!r} with 'views', found {doc.get('format')!r}"
        )
    out = []
    for v, view in enumerate(doc["views"]):
        boxes = torch.tensor(view.get("boxes2d_px", []), dtype=torch.float32).reshape(-1, 4)
        scores = torch.tensor(view.get("scores", []), dtype=torch.float32).reshape(-1)
        labels = torch.tensor(view.get("labels", [0] * len(boxes)), dtype=torch.long).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"{source}: view {v}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        out.append(Detections2D(boxes, scores, labels))
    return out


def write_detections(
    path: str | Path, detections: Sequence[Detections2D], case_id: str = "", **meta: Any
) -> Path:
    """Write one case's detections as JSON, atomically."""
    return atomic_write_text(
        path, json.dumps(detections_to_json(detections, case_id, **meta), indent=1)
    )


def read_detections(path: str | Path) -> list[Detections2D]:
    """Read a file written by :func:`write_detections` (one :class:`Detections2D` per view)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detections file not found: {path}")
    return detections_from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
