"""Pseudo-patients: random anatomy variation of one host CT.

A single real chest CT would let a model memorize the background anatomy. Each case therefore
re-places and re-shapes the patient: a rigid placement in the rig (shift, rotation), an
anisotropic scaling, a smooth elastic deformation and an HU/contrast change. The spatial part is
one backward warp applied to HU (trilinear) and the host's label map (nearest) together; the
output grid is the input grid (same shape, spacing, direction, CT origin).

Forward model (CT mm, host point ``p`` → case point ``x``)::

    x = R · diag(s) · p + t        then the elastic field  x ← x + e(x)

sampled backwards as ``p = diag(1/s) · Rᵀ · (x - t - e(x))`` (``e`` smooth and small, so its
inverse is approximated by ``-e(x)``; the boxes are read from the warped label map, so they are
exact whatever the field).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mvxray.datasets.base import Volume
from mvxray.datasets.ct import AIR_HU, sample_voxels


@dataclass(frozen=True)
class PseudoPatientConfig:
    """Ranges of the random anatomy variation (uniform in ``±`` the value unless noted).

    Attributes:
        shift_mm: translation per axis, mm.
        rotation_deg: rotation about each CT axis (X, then Y, then Z), degrees.
        scale: relative anisotropic scaling per axis (0.1 → factors in [0.9, 1.1]).
        elastic_mm: standard deviation of the elastic control-point displacements, mm.
        elastic_points: control points per axis (low frequency: 4 → ~10 cm wavelength).
        hu_gain: relative contrast change about air: ``HU' = -1024 + (HU + 1024) · g``.
        lung_offset_hu: HU added inside the lungs (inspiration depth), if lungs are labelled.
    """

    shift_mm: float = 20.0
    rotation_deg: float = 5.0
    scale: float = 0.10
    elastic_mm: float = 4.0
    elastic_points: int = 4
    hu_gain: float = 0.05
    lung_offset_hu: float = 40.0


def _rotation(deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def sample_pseudo_patient(
    rng: np.random.Generator, config: PseudoPatientConfig | None = None
) -> dict[str, Any]:
    """Draw the parameters of one pseudo-patient (JSON-serializable, recorded in ``meta``).

    Returns:
        ``{"shift_mm": [3], "rotation_deg": [3], "scale": [3], "elastic_mm": G×G×G×3 nested
        list, "hu_gain": g, "lung_offset_hu": o, "config": {...}}``.
    """
    c = config or PseudoPatientConfig()
    G = c.elastic_points
    return {
        "shift_mm": rng.uniform(-c.shift_mm, c.shift_mm, 3).tolist(),
        "rotation_deg": rng.uniform(-c.rotation_deg, c.rotation_deg, 3).tolist(),
        "scale": (1.0 + rng.uniform(-c.scale, c.scale, 3)).tolist(),
        "elastic_mm": (rng.standard_normal((G, G, G, 3)) * c.elastic_mm).round(4).tolist(),
        "hu_gain": float(1.0 + rng.uniform(-c.hu_gain, c.hu_gain)),
        "lung_offset_hu": float(rng.uniform(-c.lung_offset_hu, c.lung_offset_hu)),
        "config": asdict(c),
    }


def apply_pseudo_patient(
    volume: Volume,
    params: dict[str, Any],
    lung_labels: tuple[int, ...] = (),
    slab: int = 32,
) -> Volume:
    """Warp a host volume (HU and its label map) into a pseudo-patient.

    Args:
        volume: host; ``volume.labels`` (e.g. an organ map) is warped with nearest sampling.
        params: from :func:`sample_pseudo_patient`.
        lung_labels: label values of the lungs in ``volume.labels`` (for ``lung_offset_hu``).
        slab: array slices along axis 0 processed per step (bounds memory).

    Returns:
        A new :class:`Volume` on the same grid; HU outside the host are air (-1024).
    """
    I, J, K = volume.data.shape
    T = volume.T_ct_from_voxel.double()
    T_inv = torch.linalg.inv(T)
    R = torch.from_numpy(_rotation(np.asarray(params["rotation_deg"])))
    s = torch.tensor(params["scale"], dtype=torch.float64)
    t = torch.tensor(params["shift_mm"], dtype=torch.float64)
    # host point p = A (x - t - e(x)) with A = diag(1/s) Rᵀ; as a voxel → voxel map with T.
    A = torch.diag(1.0 / s) @ R.T
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = A
    M[:3, 3] = -A @ t
    V_from_x = T_inv @ M  # case CT mm → host voxel (before the elastic term)
    W = (V_from_x @ T).float()  # case voxel → host voxel
    L = V_from_x[:3, :3].float()  # elastic mm → host voxel offset
    ctrl = torch.tensor(params["elastic_mm"], dtype=torch.float32).permute(3, 0, 1, 2)[None]
    hu0 = volume.data.float() - AIR_HU  # shifted once: outside (zero padding) becomes air
    lab_f = None if volume.labels is None else volume.labels.float()
    out = torch.empty(I, J, K, dtype=torch.float32)
    lab_out = None if volume.labels is None else torch.empty(I, J, K, dtype=torch.int64)
    jj, kk = torch.meshgrid(
        torch.arange(J, dtype=torch.float32), torch.arange(K, dtype=torch.float32), indexing="ij"
    )
    gj, gk = 2.0 * jj / max(J - 1, 1) - 1.0, 2.0 * kk / max(K - 1, 1) - 1.0
    for i0 in range(0, I, slab):
        n = min(slab, I - i0)
        ii = torch.arange(i0, i0 + n, dtype=torch.float32)[:, None, None].expand(n, J, K)
        ijk = (ii, jj.expand(n, J, K), kk.expand(n, J, K))
        # Elastic field: the control grid spans the volume (align_corners), upsampled trilinearly.
        g = torch.stack(
            [gk.expand(n, J, K), gj.expand(n, J, K), 2.0 * ii / max(I - 1, 1) - 1.0], -1
        )
        e = F.grid_sample(ctrl, g[None], mode="bilinear", align_corners=True)[0]
        # Elementwise 3×3 products (not matmul) so results do not depend on BLAS threading.
        src = torch.stack(
            [sum(W[a, b] * ijk[b] - L[a, b] * e[b] for b in range(3)) + W[a, 3] for a in range(3)],
            dim=-1,
        )
        out[i0 : i0 + n] = sample_voxels(hu0, src, mode="bilinear") + AIR_HU
        if lab_out is not None and lab_f is not None:
            lab_out[i0 : i0 + n] = sample_voxels(lab_f, src, mode="nearest").round().long()
    out = AIR_HU + (out - AIR_HU) * float(params["hu_gain"])
    if lab_out is not None and lung_labels:
        lung = torch.isin(lab_out, torch.tensor(lung_labels))
        out = torch.where(lung, out + float(params["lung_offset_hu"]), out)
    out = out.clamp(min=AIR_HU)
    meta = {**volume.meta, "pseudo_patient": params}
    return Volume(
        data=out, T_ct_from_voxel=volume.T_ct_from_voxel.clone(), labels=lab_out, meta=meta
    )
