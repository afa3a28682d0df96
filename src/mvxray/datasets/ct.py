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
from typing import Any

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
    img: Any = nib.load(str(path))  # a Nifti1/2Image (typed as FileBasedImage)
    data = np.asarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ShapeError(f"{path}: expected a 3D volume, found shape {data.shape}")
    A_lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(img.affine, dtype=np.float64)[:3, :3]
    spacing, D = _split_direction(A_lps, str(path))
    lab = None
    if labels is not None:
        limg: Any = nib.load(str(labels))
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


_REQUIRED = (
    "SeriesInstanceUID",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "RescaleSlope",
    "RescaleIntercept",
)


class DicomError(ValueError):
    """A DICOM series that cannot be turned into a volume (the message names file and tag)."""


def _read_series(folder: Path) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    out = []
    for f in files:
        if f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            continue  # not a DICOM file (README, thumbnails, ...)
        out.append((f, ds))
    if not out:
        raise DicomError(f"folder: no DICOM file in {folder}")
    return out


def load_dicom(
    folder: str | Path, spacing_tolerance: float = 0.02, orientation_tolerance: float = 1e-4
) -> Volume:
    """Load one CT series from a folder of DICOM slices into HU in the CT frame.

    See the module docstring for the exact axis convention: ``data[i, j, k]`` = column ``i``,
    row ``j`` of the ``k``-th slice along the normal; direction columns = (row cosine,
    column cosine, normal).

    Args:
        folder: directory holding the slices of exactly one series (non-DICOM files and
            ``DICOMDIR`` are ignored).
        spacing_tolerance: largest relative deviation of a slice step from the median step.
        orientation_tolerance: largest difference of direction cosines between slices.

    Returns:
        :class:`Volume` float32 HU; ``meta`` has ``source``, ``series_uid``, ``files`` (sorted),
        ``slice_positions_mm`` (ImagePositionPatient · normal per sorted slice) and
        ``lps_centre_mm`` (the DICOM patient position of the volume centre).

    Raises:
        DicomError: mixed series, non-CT modality, a missing tag or pixel data, inconsistent
            orientation or size, duplicated / missing slices, non-uniform spacing, gantry tilt —
            each message names the file(s) and the tag.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"folder: not a directory: {folder}")
    series = _read_series(folder)
    for f, ds in series:
        for tag in _REQUIRED:
            if tag not in ds or ds.get(tag) is None or ds.get(tag) == "":
                raise DicomError(f"{f.name}: missing DICOM tag {tag}")
    uids: dict[str, list[str]] = {}
    for f, ds in series:
        uids.setdefault(str(ds.SeriesInstanceUID), []).append(f.name)
    if len(uids) > 1:
        parts = "; ".join(
            f"{u}: {', '.join(n[:3])}{' ...' if len(n) > 3 else ''}" for u, n in uids.items()
        )
        raise DicomError(f"{folder}: mixed SeriesInstanceUID ({len(uids)} series): {parts}")
    for f, ds in series:
        if str(ds.Modality).upper() != "CT":
            raise DicomError(f"{f.name}: Modality is {ds.Modality!r}, expected 'CT'")
    f0, ds0 = series[0]
    iop0 = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    r, c = iop0[:3], iop0[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise DicomError(
            f"{f0.name}: ImageOrientationPatient is not two orthonormal vectors: {iop0.tolist()}"
        )
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    n = np.cross(r, c)
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    ps0 = np.asarray(ds0.PixelSpacing, dtype=np.float64)
    positions = []
    for f, ds in series:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if np.abs(iop - iop0).max() > orientation_tolerance:
            raise DicomError(
                f"{f.name}: ImageOrientationPatient {iop.tolist()} differs from {f0.name}'s {iop0.tolist()}"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomError(
                f"{f.name}: Rows/Columns {(int(ds.Rows), int(ds.Columns))} differ from {f0.name}'s {(rows, cols)}"
            )
        if np.abs(np.asarray(ds.PixelSpacing, dtype=np.float64) - ps0).max() > 1e-4:
            raise DicomError(
                f"{f.name}: PixelSpacing {[float(x) for x in ds.PixelSpacing]} differs from {f0.name}'s {ps0.tolist()}"
            )
        positions.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64))
    if len(series) < 2:
        raise DicomError(
            f"{f0.name}: a CT series needs at least 2 slices (ImagePositionPatient spacing), found 1"
        )
    pos = np.stack(positions)
    d = pos @ n
    order = np.argsort(d, kind="stable")
    series = [series[i] for i in order]
    pos, d = pos[order], d[order]
    names = [f.name for f, _ in series]
    steps = np.diff(d)
    step = float(np.median(steps))
    tol = max(spacing_tolerance * step, 1e-3)
    for a, st in enumerate(steps):
        if st < tol:
            raise DicomError(
                f"{names[a]}, {names[a + 1]}: duplicated slice (same ImagePositionPatient along the normal, {d[a]:.3f} mm)"
            )
    for a, st in enumerate(steps):
        if abs(st - step) > tol:
            k = st / step
            what = (
                f"missing slice(s) (gap {st:.3f} mm ≈ {k:.1f} × {step:.3f} mm)"
                if abs(k - round(k)) * step <= tol and round(k) >= 2
                else f"non-uniform slice spacing ({st:.3f} mm vs median {step:.3f} mm, tolerance {tol:.3f} mm)"
            )
            raise DicomError(f"{names[a]} → {names[a + 1]}: ImagePositionPatient {what}")
    inplane = pos - np.outer(d, n)
    if np.abs(inplane - inplane[0]).max() > max(tol, 0.01):
        raise DicomError(
            f"{names[-1]}: ImagePositionPatient is not along the slice normal of ImageOrientationPatient (gantry tilt or sheared series)"
        )
    slices = []
    for f, ds in series:
        if "PixelData" not in ds:
            raise DicomError(f"{f.name}: missing pixel data (tag PixelData)")
        try:
            px = ds.pixel_array
        except Exception as exc:  # pydicom raises several types for undecodable data
            raise DicomError(f"{f.name}: cannot decode PixelData: {exc}") from exc
        if px.shape != (rows, cols):
            raise DicomError(
                f"{f.name}: PixelData has shape {px.shape}, expected one {rows} × {cols} frame "
                "(multi-frame / NumberOfFrames > 1 and colour images are not supported)"
            )
        slices.append(px.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    data = np.ascontiguousarray(np.stack(slices, axis=0).transpose(2, 1, 0))  # (cols, rows, slices)
    spacing = [float(ps0[1]), float(ps0[0]), step]
    D = np.stack([r, c, n], axis=1)
    centre = pos[0] + D @ (np.array(spacing) * (np.array(data.shape) - 1) / 2)
    return Volume(
        data=torch.from_numpy(data),
        T_ct_from_voxel=T_ct_from_voxel(data.shape, spacing, torch.from_numpy(D)),
        meta={
            "source": str(folder),
            "format": "dicom",
            "series_uid": str(ds0.SeriesInstanceUID),
            "files": names,
            "slice_positions_mm": d.tolist(),
            "lps_centre_mm": centre.tolist(),
        },
    )


def load_ct(path: str | Path) -> Volume:
    """Load a CT: a folder → :func:`load_dicom`; ``.nii`` / ``.nii.gz`` → :func:`load_nifti`.

    Raises:
        FileNotFoundError: nothing at ``path``. ValueError: unknown file type.
    """
    path = Path(path)
    if path.is_dir():
        return load_dicom(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no CT at {path}")
    if path.name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    raise ValueError(f"path: expected a DICOM folder or a .nii/.nii.gz file, found {path}")


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
