"""mvxray: find and localize small 3D indications from several calibrated X-ray views.

The centre of the library is :mod:`mvxray.geometry`; every other sub-package is composed
against it. Frames, axes, units and pixel rules are written down once in ``docs/conventions.md``.

The API reads like the CLI (names load lazily, so ``import mvxray`` stays light)::

    import mvxray
    rig = mvxray.Rig.seed(size=256)                               # seed 000's 10-view rig
    case = mvxray.datasets.PHANTOMS["chest"](seed=0)              # a chest CT with nodules
    images = mvxray.datasets.render_views(case.volume, rig)       # (10, 1, 256, 256) DRRs
    det = mvxray.detectors2d.build("yolo")                        # or "faster_rcnn", "log_blob", ...
    lifter = mvxray.lifting.build("triangulation")                # or "mv2d", "rayemb"
    lifted = lifter.lift(sample, mvxray.detectors2d.predict_sample(det, sample))  # CT mm
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = (
    "geometry",
    "datasets",
    "detectors2d",
    "lifting",
    "heads",
    "benchmarks",
    "registration",
)
_NAMES = {
    "Rig": "mvxray.geometry",
    "MultiViewSample": "mvxray.datasets.base",
    "Volume": "mvxray.datasets.base",
}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"mvxray.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'mvxray' has no attribute {name!r}")


__all__ = ["MultiViewSample", "Rig", "Volume", "__version__", *_SUBPACKAGES]
