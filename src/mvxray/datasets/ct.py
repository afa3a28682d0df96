"""CT in: DICOM series and NIfTI files → :class:`~mvxray.datasets.base.Volume` (HU, CT frame).

This is the one adapter for DICOM tags and NIfTI affines (``docs/conventions.md``).

DICOM axis choice (exact):
    array axes ``(i, j, k)`` = (**column** index x, **row** index y, **slice** index). Slices are
    sorted by ``ImagePositionPatient`` projected on the slice normal ``n = r × c`` (``r``, ``c`` =
    the row and column direction cosines of ``ImageOrientationPatient``, i.e. its first and last
    three numbers), ascending. Hence the LPS ``direction`` columns are ``(r, c, n)`` — a proper
    rotation (det +1) — and ``spacing_mm = (PixelSpacing[1], PixelSpacing[0], slice step)``
    (``PixelSpacing`` is (row spacing, column spacing)). ``data[i, j, k]`` is
    ``pixel_array[j, i]`` of the ``k``-th sorted slice times ``RescaleSlope`` plus
    ``RescaleIntercept``. The DICOM LPS origin is dropped: the CT origin is the volume centre
    (see :func:`mvxray.geometry.T_ct_from_voxel`); the original position of the centre is kept in
    ``meta["lps_centre_mm"]``.

NIfTI: the RAS+ affine is turned into LPS by negating its first two rows; array axes are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvxray.datasets.base import Volume
from mvxray.geometry import T_ct_from_voxel
from mvxray.geometry._checks import ShapeError

AIR_HU = -1024.0
"""HU used to fill space outside a volume when resampling."""


def _split_direction(A: np.ndarray, what: str, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3×3 voxel→mm block into (spacing (3,), orthonormal direction (3, 3))."""
    spacing = np.linalg.norm(A, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"{what}: voxel spacing must be positive, found {spacing.tolist()}")
    D = A / spacing
    err = np.abs(D.T @ D - np.eye(3)).max()
    if err > tol:
        raise ValueError(
            f"{what}: voxel axes must be orthogonal (sheared grids are not supported), "
            f"found |DᵀD - I| = {err:.2g}"
        )
    return spacing, D


def load_nifti(path: str | Path, labels: str | Path | None = None) -> Volume:
    """Load a NIfTI CT (``.nii`` / ``.nii.gz``) in HU into the CT frame.

    Args:
        path: NIfTI file whose voxels are HU (scaling ``scl_slope``/``scl_inter`` applied).
        labels: optional label-map NIfTI on the same grid (stored in ``Volume.labels``).

    Returns:
        Volume ``(I, J, K)`` float32 HU; ``T_ct_from_voxel`` with the LPS direction of the
        file's axes (RAS+ affine with its first two rows negated), centred on the volume.

    Raises:
        FileNotFoundError: missing file. ValueError: not 3D, sheared affine, grid mismatch.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: NIfTI file not found: {path}")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ShapeError(f"{path}: expected a 3D volume, found shape {data.shape}")
    A_lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(img.affine, dtype=np.float64)[:3, :3]
    spacing, D = _split_direction(A_lps, str(path))
    lab = None
    if labels is not None:
        limg = nib.load(str(labels))
        larr = np.asarray(limg.dataobj)
        while larr.ndim > 3 and larr.shape[-1] == 1:
            larr = larr[..., 0]
        if larr.shape != data.shape or not np.allclose(limg.affine, img.affine, atol=1e-3):
            raise ValueError(f"labels: {labels} is not on the grid of {path}")
        lab = torch.from_numpy(np.rint(larr).astype(np.int64))
    centre = (
        np.asarray(img.affine)[:3, :3] @ ((np.array(data.shape) - 1) / 2)
        + np.asarray(img.affine)[:3, 3]
    )
    return Volume(
        data=torch.from_numpy(np.ascontiguousarray(data)),
        T_ct_from_voxel=T_ct_from_voxel(data.shape, spacing.tolist(), torch.from_numpy(D)),
        labels=lab,
        meta={
            "source": str(path),
            "format": "nifti",
            "lps_centre_mm": (centre * np.array([-1.0, -1.0, 1.0])).tolist(),
        },
    )


def sample_voxels(
    data: torch.Tensor,
    ijk: torch.Tensor,
    mode: str = "bilinear",
    fill: float = 0.0,
    chunk: int = 2_000_000,
) -> torch.Tensor:
    """Sample a volume at continuous voxel indices (trilinear or nearest), outside = ``fill``.

    Args:
        data: ``(I, J, K)`` volume.
        ijk: ``(*S, 3)`` continuous voxel indices (i, j, k) into ``data``.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        fill: value returned outside the volume.
        chunk: points per ``grid_sample`` call (bounds memory).

    Returns:
        ``(*S,)`` sampled values, dtype of ``data`` if floating else float32.

    Example:
        >>> d = torch.arange(8.0).reshape(2, 2, 2)
        >>> sample_voxels(d, torch.tensor([[0.5, 0.0, 0.0], [5.0, 0.0, 0.0]]), fill=-1.0)
        tensor([ 2., -1.])
    """
    if data.dim() != 3 or ijk.shape[-1] != 3:
        raise ShapeError(
            f"data/ijk: expected (I, J, K) and (*, 3), found {tuple(data.shape)}, {tuple(ijk.shape)}"
        )
    vol = data if data.is_floating_point() else data.float()
    sizes = torch.tensor(data.shape, dtype=ijk.dtype, device=ijk.device)
    # grid_sample wants (x, y, z) = (k, j, i) normalized to [-1, 1] (align_corners=True);
    # sampling data - fill with zero padding gives `fill` outside.
    norm = (2.0 * ijk / (sizes - 1).clamp(min=1) - 1.0).flip(-1).reshape(-1, 3).to(vol.dtype)
    src = (vol - fill if fill != 0.0 else vol)[None, None]
    out = torch.empty(norm.shape[0], dtype=vol.dtype, device=vol.device)
    for s in range(0, norm.shape[0], chunk):
        g = norm[s : s + chunk].reshape(1, 1, 1, -1, 3)
        out[s : s + chunk] = F.grid_sample(
            src, g, mode=mode, padding_mode="zeros", align_corners=True
        ).reshape(-1)
    return (out + fill).reshape(ijk.shape[:-1])


def resample(volume: Volume, spacing_mm: float | tuple[float, float, float]) -> Volume:
    """Resample a volume to a new voxel spacing, keeping direction and the CT origin (centre).

    HU are trilinear (with a Gaussian anti-alias prefilter when downsampling); labels nearest.
    The new shape is ``round(I · s_old / s_new)`` per axis, so the physical extent is kept to
    within one voxel and the volume centre stays at the CT origin.

    Args:
        volume: input volume.
        spacing_mm: new spacing, mm (scalar or per array axis).

    Returns:
        The resampled :class:`Volume` (same ``meta`` plus ``"resampled_from_mm"``).

    Example:
        >>> v = Volume(torch.zeros(4, 4, 4), T_ct_from_voxel((4, 4, 4), (1.0, 1.0, 1.0)))
        >>> tuple(resample(v, 2.0).data.shape)
        (2, 2, 2)
    """
    from scipy.ndimage import gaussian_filter

    new_sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if np.any(new_sp <= 0):
        raise ValueError(f"spacing_mm: must be positive (mm), found {new_sp.tolist()}")
    old_sp = volume.spacing_mm.double().cpu().numpy()
    D = volume.T_ct_from_voxel[:3, :3].double() / torch.from_numpy(old_sp)
    old_shape = np.array(volume.data.shape)
    new_shape = np.maximum(1, np.rint(old_shape * old_sp / new_sp).astype(int))
    ratio = new_sp / old_sp
    data = volume.data.float()
    if np.any(ratio > 1.0):
        sigma = np.where(ratio > 1.0, 0.4 * ratio, 0.0)
        data = torch.from_numpy(gaussian_filter(data.cpu().numpy(), sigma=sigma, mode="nearest"))
    # Both grids are centred: old index = (new index - c_new) · ratio + c_old, per axis.
    axes = [
        (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * r + (m - 1) / 2
        for n, r, m in zip(new_shape, ratio, old_shape, strict=True)
    ]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    # Clamp to the old grid: both grids span the same extent up to rounding.
    ijk = torch.maximum(torch.minimum(ijk, torch.tensor(old_shape - 1.0)), torch.zeros(3))
    out = sample_voxels(data, ijk, mode="bilinear")
    labels = None
    if volume.labels is not None:
        labels = sample_voxels(volume.labels, ijk, mode="nearest").round().to(torch.int64)
    return Volume(
        data=out.float(),
        T_ct_from_voxel=T_ct_from_voxel(tuple(new_shape.tolist()), new_sp.tolist(), D),
        labels=labels,
        meta={**volume.meta, "resampled_from_mm": old_sp.tolist()},
    )


def to_canonical(volume: Volume, tol: float = 1e-4) -> Volume:
    """Permute/flip array axes so that the direction becomes the identity (axes = +X, +Y, +Z LPS).

    Exact (no interpolation); only for grids whose direction is a signed permutation.

    Raises:
        ValueError: the direction is oblique.
    """
    D = volume.T_ct_from_voxel[:3, :3] / volume.spacing_mm
    P = D.round()
    if (D - P).abs().max() > tol or not torch.equal(P.abs().sum(0), torch.ones(3, dtype=P.dtype)):
        raise ValueError("volume: direction is oblique; resample it instead of to_canonical")
    perm = [int(P[:, a].abs().argmax()) for a in range(3)]  # world axis of array axis a
    order = [perm.index(w) for w in range(3)]  # array axis along world axis w
    data, labels = volume.data.permute(order), volume.labels
    labels = None if labels is None else labels.permute(order)
    flips = [w for w in range(3) if P[w, order[w]] < 0]
    if flips:
        data = data.flip(flips)
        labels = None if labels is None else labels.flip(flips)
    sp = volume.spacing_mm[order]
    return Volume(
        data=data.contiguous(),
        T_ct_from_voxel=T_ct_from_voxel(tuple(data.shape), sp.tolist()),
        labels=None if labels is None else labels.contiguous(),
        meta=dict(volume.meta),
    )
