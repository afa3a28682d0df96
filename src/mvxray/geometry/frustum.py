"""Frustum (2.5D) encoding as in MV2D / PETR: depth bins along pixel or RoI rays, lifted to CT.

Each pixel (or each sample point of a 2D region of interest) and each of D depths gives a 3D
point in the CT frame. The points are normalized to a 3D region of interest (a box in CT mm
mapped to ``[0, 1]^3``) and encoded with sin/cos features, ready for a transformer.

Depth always means **camera z** (mm along the principal axis, see ``docs/conventions.md``),
as in PETR, not the distance along the ray.
"""

from __future__ import annotations

import math

import torch

from mvxray.geometry._checks import ShapeError, check_intrinsics, check_shape, promote

#: Depth-bin spacings: ``"uniform"`` (equal widths) and ``"lid"`` (linear-increasing, PETR).
DEPTH_MODES = ("uniform", "lid")


def depth_bin_edges(
    near_mm: float,
    far_mm: float,
    num_bins: int,
    mode: str = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``D + 1`` edges of D depth bins covering ``[near_mm, far_mm]`` (camera z, mm).

    ``"uniform"``: edge k at ``near + (far - near) · k / D``.
    ``"lid"`` (linear-increasing discretization, PETR / CaDDN): edge k at
    ``near + (far - near) · k (k + 1) / (D (D + 1))``, so bin i is ``2 (i + 1) / (D (D + 1))`` of the
    range wide — fine bins near the source, coarse ones far away.

    Args:
        near_mm: first edge, mm (≥ 0).
        far_mm: last edge, mm (> near_mm).
        num_bins: D ≥ 1.
        mode: ``"uniform"`` or ``"lid"``.
        dtype: result dtype.
        device: result device.

    Returns:
        ``(D + 1,)`` increasing edges, mm.

    Raises:
        ValueError: bad range, bin count or mode.

    Example:
        >>> depth_bin_edges(0.0, 6.0, 3, "lid").tolist()
        [0.0, 1.0, 3.0, 6.0]
    """
    if mode not in DEPTH_MODES:
        raise ValueError(f"mode: expected one of {DEPTH_MODES}, found {mode!r}")
    if num_bins < 1:
        raise ValueError(f"num_bins: expected >= 1, found {num_bins}")
    if not (math.isfinite(near_mm) and math.isfinite(far_mm)) or not 0 <= near_mm < far_mm:
        raise ValueError(
            f"near_mm, far_mm: expected 0 <= near < far (mm), found {near_mm}, {far_mm}"
        )
    k = torch.arange(num_bins + 1, dtype=torch.float64, device=device)
    frac = k / num_bins if mode == "uniform" else k * (k + 1) / (num_bins * (num_bins + 1))
    return (near_mm + (far_mm - near_mm) * frac).to(dtype)


def depth_bins(
    near_mm: float,
    far_mm: float,
    num_bins: int,
    mode: str = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The D bin centres between :func:`depth_bin_edges` (camera z, mm).

    For ``"lid"`` the centre of bin i is ``near + (far - near) (i + 1)² / (D (D + 1))``.

    Returns:
        ``(D,)`` increasing depths, mm, strictly inside ``(near_mm, far_mm)``.

    Example:
        >>> depth_bins(100.0, 500.0, 4).tolist()
        [150.0, 250.0, 350.0, 450.0]
    """
    edges = depth_bin_edges(near_mm, far_mm, num_bins, mode, torch.float64, device)
    return ((edges[:-1] + edges[1:]) / 2).to(dtype)


def lift_pixels(
    uv: torch.Tensor, depths: torch.Tensor, K: torch.Tensor, T_cam_from_ct: torch.Tensor
) -> torch.Tensor:
    """Lift each pixel to D points at the given camera depths along its ray, in CT mm.

    Args:
        uv: ``(*, V, N, 2)`` pixels (u right, v down).
        depths: ``(D,)`` depths shared by all pixels, or ``(*, V, N, D)`` per pixel; camera z, mm.
        K: ``(*, V, 3, 3)`` intrinsics.
        T_cam_from_ct: ``(*, V, 4, 4)`` extrinsics.

    Returns:
        ``(*, V, N, D, 3)`` points in the CT frame, mm: ``Rᵀ (d · K⁻¹ (u, v, 1) − t)``.

    Raises:
        ShapeError: wrong shapes.

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=64)
        >>> uv = torch.tensor([[32.0, 32.0]], dtype=torch.float64).expand(10, 1, 2)
        >>> p = lift_pixels(uv, torch.tensor([300.0], dtype=torch.float64), rig.K, rig.T_cam_from_ct)
        >>> p.shape, bool(p.abs().max() < 1e-9)  # the principal ray at SID hits the isocentre
        (torch.Size([10, 1, 1, 3]), True)
    """
    check_shape(uv, "uv", (None, None, 2))
    check_intrinsics(K)
    check_shape(T_cam_from_ct, "T_cam_from_ct", (None, 4, 4))
    if depths.dim() != 1:
        check_shape(depths, "depths", (*uv.shape[-3:-1], None))
    uv, depths, K, T_cam_from_ct = promote(uv, depths, K, T_cam_from_ct)
    ones = torch.ones_like(uv[..., :1])
    rays_cam = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(K).transpose(-1, -2)  # z = 1
    R = T_cam_from_ct[..., :3, :3]
    t = T_cam_from_ct[..., :3, 3]
    rays_ct = rays_cam @ R  # (*, V, N, 3): Rᵀ K⁻¹ (u, v, 1), the ray per unit camera depth
    source = -(t.unsqueeze(-2) @ R)  # (*, V, 1, 3): −Rᵀ t
    d = depths if depths.dim() != 1 else depths.expand(*uv.shape[:-1], depths.shape[0])
    return source.unsqueeze(-2) + d.unsqueeze(-1) * rays_ct.unsqueeze(-2)


def roi_points(boxes2d: torch.Tensor, grid: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Sample points of 2D boxes on a regular ``(gh, gw)`` grid of cell centres.

    ``grid=(1, 1)`` gives the box centre. Point ``(i, j)`` of a box ``(x1, y1, x2, y2)`` is at
    ``(x1 + (j + 0.5) (x2 − x1) / gw, y1 + (i + 0.5) (y2 − y1) / gh)``, as RoIAlign samples bins.

    Args:
        boxes2d: ``(*, M, 4)`` boxes, px.
        grid: rows and columns of sample points.

    Returns:
        ``(*, M, gh · gw, 2)`` pixels, row-major over the grid.

    Example:
        >>> roi_points(torch.tensor([[0.0, 0.0, 4.0, 2.0]]), (1, 2)).tolist()
        [[[1.0, 1.0], [3.0, 1.0]]]
    """
    check_shape(boxes2d, "boxes2d", (None, 4))
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise ValueError(f"grid: expected two positive sizes, found {grid}")
    fy = (torch.arange(gh, dtype=boxes2d.dtype, device=boxes2d.device) + 0.5) / gh
    fx = (torch.arange(gw, dtype=boxes2d.dtype, device=boxes2d.device) + 0.5) / gw
    fy, fx = torch.meshgrid(fy, fx, indexing="ij")
    frac = torch.stack([fx.reshape(-1), fy.reshape(-1)], dim=-1)  # (G, 2)
    lo, hi = boxes2d[..., None, :2], boxes2d[..., None, 2:]
    return lo + frac * (hi - lo)


def lift_rois(
    boxes2d: torch.Tensor,
    depths: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    grid: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Lift the grid points of 2D RoIs in every view to D depths, in CT mm (MV2D's RoI frustum).

    Args:
        boxes2d: ``(*, V, M, 4)`` RoIs, px.
        depths: ``(D,)`` camera depths, mm.
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        grid: sample grid per RoI (see :func:`roi_points`); ``(1, 1)`` is the RoI centre.

    Returns:
        ``(*, V, M, G, D, 3)`` CT points, mm, with ``G = gh · gw``.
    """
    check_shape(boxes2d, "boxes2d", (None, None, 4))
    pts = roi_points(boxes2d, grid)  # (*, V, M, G, 2)
    M, G = pts.shape[-3], pts.shape[-2]
    lifted = lift_pixels(pts.flatten(-3, -2), depths, K, T_cam_from_ct)
    return lifted.unflatten(-3, (M, G))


def normalize_to_roi(
    points_ct: torch.Tensor, roi_ct: torch.Tensor, clamp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map CT points into a 3D region of interest: ``roi`` corner ``min → 0``, ``max → 1``.

    Args:
        points_ct: ``(*, 3)`` CT mm.
        roi_ct: ``(6,)`` or broadcastable ``(*, 6)`` box (xmin, ymin, zmin, xmax, ymax, zmax), mm.
        clamp: clamp the result to ``[0, 1]``.

    Returns:
        coords: ``(*, 3)`` normalized coordinates (outside ``[0, 1]`` for points outside the RoI
            unless ``clamp``).
        inside: ``(*,)`` bool, the point lies in the closed RoI.

    Raises:
        ShapeError: wrong shapes.
        ValueError: an empty or inverted RoI.

    Example:
        >>> c, ok = normalize_to_roi(torch.tensor([[0.0, 5.0, 20.0]]), torch.tensor([-10.0, 0, 0, 10, 10, 10]))
        >>> c.tolist(), ok.tolist()
        ([[0.5, 0.5, 2.0]], [False])
    """
    check_shape(points_ct, "points_ct", (3,))
    check_shape(roi_ct, "roi_ct", (6,))
    points_ct, roi_ct = promote(points_ct, roi_ct)
    lo, size = roi_ct[..., :3], roi_ct[..., 3:] - roi_ct[..., :3]
    if bool((size <= 0).any()):
        raise ValueError(f"roi_ct: expected max > min on every axis, found {roi_ct.tolist()}")
    coords = (points_ct - lo) / size
    inside = ((coords >= 0) & (coords <= 1)).all(-1)
    return (coords.clamp(0, 1) if clamp else coords), inside


def sincos_encoding(
    x: torch.Tensor,
    num_feats: int = 64,
    freqs: str = "transformer",
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    include_input: bool = False,
) -> torch.Tensor:
    """Sin/cos positional encoding of coordinates (PETR's ``pos2posemb3d`` or NeRF's γ).

    Each of the C coordinates gets ``num_feats`` channels: ``num_feats / 2`` frequencies ω_k,
    each as the pair ``(sin(ω_k x), cos(ω_k x))``; the C blocks are concatenated in input order.

    * ``freqs="transformer"`` (PETR / DETR): ``ω_k = scale / temperature^(2k / num_feats)``.
    * ``freqs="nerf"``: ``ω_k = 2^k · π`` (``temperature`` and ``scale`` unused).

    Args:
        x: ``(*, C)`` coordinates, typically normalized to ``[0, 1]`` by :func:`normalize_to_roi`.
        num_feats: channels per coordinate, even.
        freqs: ``"transformer"`` or ``"nerf"``.
        temperature: frequency base for ``"transformer"``.
        scale: multiplier of the input for ``"transformer"``.
        include_input: prepend ``x`` itself (NeRF).

    Returns:
        ``(*, C · num_feats)`` (``+ C`` with ``include_input``).

    Example:
        >>> sincos_encoding(torch.zeros(5, 3), num_feats=8).shape
        torch.Size([5, 24])
        >>> x = torch.tensor([[0.25]], dtype=torch.float64)
        >>> sincos_encoding(x, num_feats=4, freqs="nerf").round(decimals=4).tolist()
        [[0.7071, 0.7071, 1.0, 0.0]]
    """
    if x.dim() < 1:
        raise ShapeError(f"x: expected shape (*, C), found {tuple(x.shape)}")
    if num_feats < 2 or num_feats % 2:
        raise ValueError(f"num_feats: expected a positive even number, found {num_feats}")
    half = num_feats // 2
    k = torch.arange(half, dtype=x.dtype, device=x.device)
    if freqs == "transformer":
        omega = scale / temperature ** (2 * k / num_feats)
    elif freqs == "nerf":
        omega = math.pi * 2.0**k
    else:
        raise ValueError(f"freqs: expected 'transformer' or 'nerf', found {freqs!r}")
    arg = x.unsqueeze(-1) * omega  # (*, C, half)
    enc = torch.stack([arg.sin(), arg.cos()], dim=-1).flatten(-3)  # (*, C * num_feats)
    return torch.cat([x, enc], dim=-1) if include_input else enc


def frustum_coords(
    uv: torch.Tensor,
    K: torch.Tensor,
    T_cam_from_ct: torch.Tensor,
    roi_ct: torch.Tensor,
    near_mm: float,
    far_mm: float,
    num_bins: int,
    mode: str = "lid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PETR's 3D position coordinates: pixels × D depth bins, lifted and normalized to a RoI.

    Args:
        uv: ``(*, V, N, 2)`` pixels (e.g. feature-map cell centres scaled to image px).
        K: ``(*, V, 3, 3)``.
        T_cam_from_ct: ``(*, V, 4, 4)``.
        roi_ct: ``(6,)`` 3D region of interest, CT mm.
        near_mm: nearest camera depth, mm.
        far_mm: farthest camera depth, mm.
        num_bins: D.
        mode: depth spacing, ``"uniform"`` or ``"lid"``.

    Returns:
        coords: ``(*, V, N, D, 3)`` in RoI units (``[0, 1]`` inside it).
        inside: ``(*, V, N, D)`` bool.

    Example:
        >>> from mvxray.geometry.rig import Rig
        >>> rig = Rig.seed(size=32)
        >>> uv = torch.rand(10, 7, 2, dtype=torch.float64) * 32
        >>> roi = torch.tensor([-100.0, -100, -100, 100, 100, 100], dtype=torch.float64)
        >>> c, ok = frustum_coords(uv, rig.K, rig.T_cam_from_ct, roi, 200.0, 400.0, 8)
        >>> c.shape, ok.shape
        (torch.Size([10, 7, 8, 3]), torch.Size([10, 7, 8]))
    """
    depths = depth_bins(near_mm, far_mm, num_bins, mode, uv.dtype, uv.device)
    return normalize_to_roi(lift_pixels(uv, depths, K, T_cam_from_ct), roi_ct)
