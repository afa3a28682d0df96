"""Fit an axis-aligned 3D box to 2D boxes seen in several calibrated views.

The box is the one whose projections (the 2D boxes enclosing its 8 projected corners,
:func:`mvxray.geometry.project_boxes3d`, clipped to the image) best match the detected 2D boxes,
in a robust least-squares sense over its 6 parameters (centre, log size). This uses the box
edges of every view — not only the centres — so the size comes out of the geometry too.
Optionally a weak prior pulls the three log sizes toward their mean: with a few noisy px per
edge, one axis can otherwise grow while another shrinks (on a circular rig the two in-plane
axes trade against each other).

scipy's ``least_squares`` solves it; the Jacobian comes from torch autograd. Written here
because no library fits a box to multi-view 2D boxes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import least_squares

from mvxray.geometry import box3d_from_center_size, project_boxes3d
from mvxray.geometry._checks import ShapeError, check_shape


def _box_from_params(theta: torch.Tensor) -> torch.Tensor:
    return box3d_from_center_size(theta[None, :3], theta[None, 3:].exp())


def fit_box3d(
    boxes2d: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    height: int,
    width: int,
    init_centre: torch.Tensor,
    init_size: torch.Tensor,
    weights: torch.Tensor | None = None,
    f_scale_px: float = 1.0,
    max_nfev: int = 60,
    iso_weight: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """The 3D box whose projections best match 2D boxes in S views.

    Minimizes ``Σ_v w_v · ρ(‖proj_v(box) − b_v‖²)`` over the box centre and log size, with the
    soft-L1 loss ρ (scale ``f_scale_px``), so one bad 2D box does not drag the fit. With
    ``iso_weight`` λ > 0 three residuals ``λ·√(Σ_v w_v)·(log s_k − mean log s)`` (px per unit of
    log size; scaled with the edges' total weight, so the prior's share does not fade as views
    are added) join the edges', pulling the box toward a cube as far as its 2D boxes allow.

    Args:
        boxes2d: ``(S, 4)`` detected boxes, px (x1, y1, x2, y2), one per supporting view.
        K: ``(S, 3, 3)`` intrinsics of those views.
        T_cam_from_ct: ``(S, 4, 4)`` extrinsics of those views.
        height: image rows, px (projections are clipped to the image, as detections are).
        width: image columns, px.
        init_centre: ``(3,)`` initial centre, CT mm.
        init_size: ``(3,)`` initial size, mm (> 0).
        weights: ``(S,)`` non-negative weights (e.g. detection scores); ones if ``None``.
        f_scale_px: residual scale of the robust loss, px.
        max_nfev: maximum number of residual evaluations.
        iso_weight: weight λ of the prior toward equal sides (0: none).

    Returns:
        box: ``(6,)`` CT mm, float64.
        rms_px: root-mean-square residual of the fitted box's edges, px.

    Raises:
        ShapeError: inconsistent shapes.

    Example:
        >>> from mvxray.geometry import Rig
        >>> rig = Rig.circular(3, 300.0, 600.0, 128, 128, 2.0, arc_deg=180.0)
        >>> truth = torch.tensor([[5.0, -3.0, 2.0, 11.0, 1.0, 10.0]], dtype=torch.float64)
        >>> b2d, _ = project_boxes3d(truth, rig.K, rig.T_cam_from_ct, 128, 128)
        >>> box, rms = fit_box3d(b2d[:, 0], rig.K, rig.T_cam_from_ct, 128, 128,
        ...                      torch.tensor([7.0, 0.0, 5.0]), torch.full((3,), 5.0))
        >>> [round(x, 3) for x in box.tolist()], rms < 1e-6
        ([5.0, -3.0, 2.0, 11.0, 1.0, 10.0], True)
    """
    check_shape(boxes2d, "boxes2d", (None, 4))
    if iso_weight < 0:
        raise ValueError(f"iso_weight: expected >= 0, found {iso_weight}")
    S = boxes2d.shape[0]
    if K.shape != (S, 3, 3) or T_cam_from_ct.shape != (S, 4, 4):
        raise ShapeError(
            f"K, T_cam_from_ct: expected ({S}, 3, 3) and ({S}, 4, 4) for {S} boxes, found "
            f"{tuple(K.shape)} and {tuple(T_cam_from_ct.shape)}"
        )
    dt = torch.float64
    b = boxes2d.detach().to("cpu", dt)
    Kd, Td = K.detach().to("cpu", dt), T_cam_from_ct.detach().to("cpu", dt)
    w = torch.ones(S, dtype=dt) if weights is None else weights.detach().to("cpu", dt).clamp(min=0)
    sw = w.sqrt()[:, None]
    iso = iso_weight * float(w.sum().sqrt())

    def residual_t(theta: torch.Tensor) -> torch.Tensor:
        proj, _ = project_boxes3d(_box_from_params(theta), Kd, Td, height, width)
        edges = ((proj[:, 0] - b) * sw).reshape(-1)
        if iso == 0:
            return edges
        return torch.cat([edges, iso * (theta[3:] - theta[3:].mean())])

    def fun(x: np.ndarray) -> np.ndarray:
        return residual_t(torch.from_numpy(x)).numpy()

    def jac(x: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.jacobian(residual_t, torch.from_numpy(x)).numpy()

    x0 = torch.cat(
        [init_centre.detach().to("cpu", dt), init_size.detach().to("cpu", dt).clamp(min=1e-3).log()]
    ).numpy()
    res = least_squares(
        fun, x0, jac=jac, loss="soft_l1", f_scale=f_scale_px, max_nfev=max_nfev, method="trf"
    )
    theta = torch.from_numpy(res.x)
    r = residual_t(theta)[: 4 * S].reshape(S, 4) / sw.clamp(min=1e-12)
    return _box_from_params(theta)[0], float(r.pow(2).mean().sqrt())
