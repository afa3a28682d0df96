"""``mv2d``: MV2D's "2D detections as dynamic object queries" lifter, small enough for a CPU.

Modules: :mod:`.inputs` (batching, region of interest), :mod:`.encoder`, :mod:`.query`
(dynamic queries, frustum memory), :mod:`.select` (relevant RoIs), :mod:`.model` (the
network), :mod:`.train` (training loop), :mod:`.lifter` (the :class:`MV2DLifter`).
"""

from __future__ import annotations

from mvxray.lifting.mv2d.lifter import MV2DConfig, MV2DLifter
from mvxray.lifting.mv2d.model import MV2DNet, MV2DNetConfig
from mvxray.lifting.mv2d.train import MV2DTrainConfig

__all__ = ["MV2DConfig", "MV2DLifter", "MV2DNet", "MV2DNetConfig", "MV2DTrainConfig"]
