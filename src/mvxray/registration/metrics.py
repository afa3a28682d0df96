"""Registration metrics as reported by seed 002: mTRE percentiles, gross failure rates, 2D error.

mTRE (mean target registration error) of a pose estimate: the mean distance, in mm, between
target points mapped into the camera frame by the estimated and by the true pose,
``mean_i |T_est x_i − T_gt x_i|`` — zero iff the poses agree on the targets. GFR@τ is the
percentage of registrations with mTRE > τ mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mvxray.geometry import ShapeError, check_shape, transform_points


def mtre(T_est: torch.Tensor, T_gt: torch.Tensor, targets_ct: torch.Tensor) -> torch.Tensor:
    """Mean target registration error, mm.

    Args:
        T_est: ``(*, 4, 4)`` estimated ``T_cam_from_ct``.
        T_gt: ``(*, 4, 4)`` true ``T_cam_from_ct``.
        targets_ct: ``(N, 3)`` target points, CT mm.

    Returns:
        ``(*,)`` mm.

    Example:
        >>> T = torch.eye(4, dtype=torch.float64); S = T.clone(); S[0, 3] = 3.0
        >>> float(mtre(S, T, torch.zeros(5, 3, dtype=torch.float64)))
        3.0
    """
    check_shape(T_est, "T_est", (4, 4))
    check_shape(T_gt, "T_gt", (4, 4))
    check_shape(targets_ct, "targets_ct", (None, 3))
    a = transform_points(T_est.to(torch.float64), targets_ct.to(torch.float64))
    b = transform_points(T_gt.to(torch.float64), targets_ct.to(torch.float64))
    return (a - b).norm(dim=-1).mean(-1)


def landmark_error_px(uv_est: torch.Tensor, uv_gt: torch.Tensor) -> torch.Tensor:
    """Per-landmark 2D error, px: ``(*, N, 2)`` × ``(*, N, 2)`` → ``(*, N)``.

    Example:
        >>> landmark_error_px(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)).tolist()
        [5.0]
    """
    check_shape(uv_est, "uv_est", (None, 2))
    if uv_est.shape != uv_gt.shape:
        raise ShapeError(
            f"uv_gt: expected shape {tuple(uv_est.shape)} (as uv_est), found {tuple(uv_gt.shape)}"
        )
    return (uv_est - uv_gt).norm(dim=-1)


def summarize(
    mtre_mm: Sequence[float] | torch.Tensor,
    percentiles: Sequence[float] = (25.0, 50.0, 95.0),
    gfr_mm: Sequence[float] = (10.0, 5.0),
) -> dict[str, float]:
    """Percentiles (mm) and gross failure rates (%) of a set of mTREs.

    Percentiles use linear interpolation between order statistics (NumPy's default).

    Args:
        mtre_mm: mTRE per registration, mm.
        percentiles: which percentiles.
        gfr_mm: failure thresholds, mm (a registration fails when its mTRE exceeds it).

    Returns:
        ``{"p25": …, "p50": …, "p95": …, "gfr@10": %, "gfr@5": %, "n": count}``.

    Raises:
        ValueError: no values.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0, 4.0, 20.0])
        >>> s["p50"], s["gfr@10"], s["gfr@5"]
        (3.0, 20.0, 20.0)
    """
    x = torch.as_tensor(mtre_mm, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise ValueError("summarize: mtre_mm is empty")
    x = torch.where(torch.isfinite(x), x, torch.full_like(x, float("inf")))
    out: dict[str, float] = {}
    finite = torch.nan_to_num(x, posinf=1e12)
    for p in percentiles:
        out[f"p{p:g}"] = float(torch.quantile(finite, p / 100.0))
    for t in gfr_mm:
        out[f"gfr@{t:g}"] = 100.0 * float((x > t).double().mean())
    out["n"] = float(x.numel())
    return out
