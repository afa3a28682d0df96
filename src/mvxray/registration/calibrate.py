"""Rig self-calibration: refine the extrinsics of every view of a case against its CT.

Each view is registered on its own with RayEmb (:func:`~.register.register_xray`) from its
nominal pose; an estimate replaces the nominal pose only if PnP found enough inliers and the
correction stays within plausible bounds (a calibrated rig drifts by degrees and millimetres,
not by a whole view). This is the fix for the 2D/3D misalignment that hurt seed 000.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mvxray.datasets.base import Volume
from mvxray.geometry import Rig, ShapeError
from mvxray.lifting.rayemb.model import RayEmbModel
from mvxray.lifting.rayemb.poses import pose_error
from mvxray.registration.register import RegisterConfig, Registration, register_xray


@dataclass(frozen=True)
class CalibrateConfig:
    """Self-calibration settings.

    Attributes:
        register: per-view registration settings.
        min_inliers: fewest RANSAC inliers to accept a view's estimate.
        max_rot_deg: largest accepted rotation correction, degrees.
        max_shift_mm: largest accepted source displacement, mm.
    """

    register: RegisterConfig = field(default_factory=RegisterConfig)
    min_inliers: int = 20
    max_rot_deg: float = 20.0
    max_shift_mm: float = 60.0


@dataclass
class Calibration:
    """The refined rig and what happened per view.

    Attributes:
        rig: the rig with accepted corrections.
        accepted: ``(V,)`` bool.
        rot_deg: ``(V,)`` rotation correction of each estimate, degrees.
        shift_mm: ``(V,)`` source displacement of each estimate, mm.
        registrations: the per-view results.
    """

    rig: Rig
    accepted: torch.Tensor
    rot_deg: torch.Tensor
    shift_mm: torch.Tensor
    registrations: list[Registration]


def calibrate_rig(
    model: RayEmbModel,
    volume: Volume,
    images: torch.Tensor,
    rig: Rig,
    cfg: CalibrateConfig | None = None,
    renderer: Callable[[Volume, Rig], torch.Tensor] | None = None,
) -> Calibration:
    """Refine every view's ``T_cam_from_ct`` (intrinsics are kept).

    Args:
        model: trained RayEmb model.
        volume: the case's CT (HU).
        images: ``(V, C, H, W)`` the case's X-rays.
        rig: the nominal (possibly miscalibrated) rig.
        cfg: settings.
        renderer: template renderer (default :func:`mvxray.datasets.render.render_views`).

    Returns:
        :class:`Calibration`.

    Raises:
        ShapeError: ``images`` does not match the rig.
    """
    cfg = cfg or CalibrateConfig()
    V = rig.num_views
    if (
        images.dim() != 4
        or images.shape[0] != V
        or tuple(images.shape[-2:]) != (rig.height, rig.width)
    ):
        raise ShapeError(
            f"images: expected shape ({V}, C, {rig.height}, {rig.width}), found {tuple(images.shape)}"
        )
    T_new = rig.T_cam_from_ct.clone().to(torch.float64)
    regs: list[Registration] = []
    accepted = torch.zeros(V, dtype=torch.bool)
    rot = torch.zeros(V, dtype=torch.float64)
    shift = torch.zeros(V, dtype=torch.float64)
    for v in range(V):
        r = register_xray(
            model,
            volume,
            images[v, :1],
            rig.K[v],
            rig.T_cam_from_ct[v],
            float(rig.pixel_mm[v]),
            cfg.register,
            renderer,
        )
        regs.append(r)
        rot[v], shift[v] = pose_error(r.T_cam_from_ct, rig.T_cam_from_ct[v].to(torch.float64))
        ok = (
            r.success
            and int(r.inliers.sum()) >= cfg.min_inliers
            and float(rot[v]) <= cfg.max_rot_deg
            and float(shift[v]) <= cfg.max_shift_mm
        )
        if ok:
            T_new[v] = r.T_cam_from_ct
            accepted[v] = True
    new_rig = Rig(rig.K, T_new.to(rig.T_cam_from_ct.dtype), rig.height, rig.width, rig.pixel_mm)
    return Calibration(new_rig, accepted, rot, shift, regs)
