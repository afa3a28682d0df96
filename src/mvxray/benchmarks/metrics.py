"""All metrics in one place: 2D detection (:mod:`.metrics2d`) and 3D localization (:mod:`.metrics3d`).

>>> from mvxray.benchmarks.metrics import DetectionEvaluator, evaluate_3d, froc
"""

from __future__ import annotations

from mvxray.benchmarks.metrics2d import DetectionEvaluator, match_image
from mvxray.benchmarks.metrics2d import summarize as summarize_2d
from mvxray.benchmarks.metrics3d import (
    FROC_RATES,
    average_precision,
    evaluate_3d,
    froc,
    match_greedy,
    per_nodule_table,
)

__all__ = [
    "FROC_RATES",
    "DetectionEvaluator",
    "average_precision",
    "evaluate_3d",
    "froc",
    "match_greedy",
    "match_image",
    "per_nodule_table",
    "summarize_2d",
]
