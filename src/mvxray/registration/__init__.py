"""2D/3D registration: the pose of an X-ray given its CT (RayEmb + PnP/RANSAC), baselines,
metrics (mTRE, GFR) and rig self-calibration.

Modules: :mod:`.pnp` (robust PnP), :mod:`.register` (:func:`register_xray`),
:mod:`.baselines` (intensity-only and fixed-landmark), :mod:`.metrics`, :mod:`.calibrate`
(:func:`calibrate_rig`).
"""

from __future__ import annotations

from mvxray.registration.metrics import landmark_error_px, mtre, summarize
from mvxray.registration.pnp import PnPResult, RansacConfig, refine_pose, solve_pnp_ransac

__all__ = [
    "PnPResult",
    "RansacConfig",
    "landmark_error_px",
    "mtre",
    "refine_pose",
    "solve_pnp_ransac",
    "summarize",
]
