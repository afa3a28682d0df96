"""MV2D's relevant-feature selection: which RoIs each object query may attend to.

A query always sees its own RoI. In every other view it sees the RoIs its detection's frustum
(the rays of its 2D box between the near and far depth of the region of interest) overlaps,
measured with :func:`mvxray.geometry.reprojection.frustum_overlap` (intersection over the
other box's area, so a small box inside the epipolar band scores 1):

* ``"all"``: every overlapping RoI (MV2D's all-overlap mode);
* ``"top"``: per other view only the RoI of highest overlap (MV2D's top-IoU mode).
"""

from __future__ import annotations

import torch

from mvxray.geometry.reprojection import frustum_overlap
from mvxray.lifting.mv2d.inputs import MV2DInputs

#: Selection modes.
SELECTION_MODES = ("all", "top")


def select_rois(inp: MV2DInputs, mode: str = "all", min_overlap: float = 0.0) -> torch.Tensor:
    """The RoIs each query may attend to.

    Args:
        inp: the batch.
        mode: ``"all"`` or ``"top"``.
        min_overlap: an RoI is relevant when its overlap exceeds this.

    Returns:
        ``(B, Q, Q)`` bool ``allowed[b, q, r]``; the diagonal is always True.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"mode: expected one of {SELECTION_MODES}, found {mode!r}")
    B, Q = inp.roi_view.shape
    V = inp.K.shape[1]
    H, W = inp.images.shape[-2:]
    with torch.no_grad():
        Kq = inp.K.gather(1, inp.roi_view[..., None, None].expand(B, Q, 3, 3))
        Tq = inp.T_cam_from_ct.gather(1, inp.roi_view[..., None, None].expand(B, Q, 4, 4))
        near = inp.near.gather(1, inp.roi_view)
        far = inp.far.gather(1, inp.roi_view)
        # query q's frustum seen in every view w, against every RoI r: (B, V, Q, 1, Q)
        ov = frustum_overlap(
            inp.rois[:, None, :, None].expand(B, V, Q, 1, 4).double(),
            inp.rois[:, None, None].double(),
            Kq[:, None].expand(B, V, Q, 3, 3).double(),
            Tq[:, None].expand(B, V, Q, 4, 4).double(),
            inp.K[:, :, None].expand(B, V, Q, 3, 3).double(),
            inp.T_cam_from_ct[:, :, None].expand(B, V, Q, 4, 4).double(),
            near[:, None, :, None].expand(B, V, Q, 1).double(),
            far[:, None, :, None].expand(B, V, Q, 1).double(),
            int(H),
            int(W),
        )[..., 0, :]  # (B, V, Q, Q)
        # keep the overlap measured in the view each RoI r belongs to
        ov = ov.gather(1, inp.roi_view[:, None, None, :].expand(B, 1, Q, Q))[:, 0]  # (B, Q, Q)
        other = inp.roi_view[:, :, None] != inp.roi_view[:, None, :]
        ok = other & inp.valid[:, None, :] & inp.valid[:, :, None] & (ov > min_overlap)
        if mode == "top":
            best = torch.zeros_like(ok)
            for w in range(V):
                in_w = ok & (inp.roi_view[:, None, :] == w)
                score = torch.where(in_w, ov, torch.full_like(ov, -1.0))
                arg = score.argmax(-1, keepdim=True)
                best |= torch.zeros_like(ok).scatter(-1, arg, in_w.gather(-1, arg))
            ok = best
        eye = torch.eye(Q, dtype=torch.bool, device=ok.device)[None]
        return ok | eye
