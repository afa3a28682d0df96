"""The ``casting`` phantom: an aluminium part with internal pores and cracks (NDT use case).

Geometry by signed distance functions (mm, CT frame, negative inside), rasterized with
partial-volume edges ``occupancy = clip(0.5 - sdf / voxel, 0, 1)``:

* body: a rounded box (fillet radius ``fillet_mm``) with 1–3 cylindrical through-holes along Z;
* pores (class 1): spheres / ellipsoids, semi-axes 0.6–3 mm, random orientation;
* cracks (class 2): thin, elongated ellipsoids (length 6–16 mm, width 1–3 mm, thickness
  ≈ 1.2–2 voxels), random orientation.

Every defect lies inside the metal (its bounding sphere ≥ 1 mm from the surface) and defects do
not touch (bounding spheres ≥ 1 mm apart). HU: air -1000, aluminium ``metal_hu`` (≈ 2000–2600,
its attenuation relative to water at ~70 keV); a defect is air. Label = ``sdf_defect ≤ 0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import Volume
from mvxray.datasets.phantoms.case import PhantomCase, boxes_from_labels
from mvxray.datasets.phantoms.nodules import _random_rotation
from mvxray.geometry import T_ct_from_voxel


def _rounded_box_sdf(p: np.ndarray, half: np.ndarray, r: float) -> np.ndarray:
    q = np.abs(p) - (half - r)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    return outside + np.minimum(q.max(axis=-1), 0.0) - r


def _ellipsoid_sdf(
    p: np.ndarray, centre: np.ndarray, R: np.ndarray, axes: np.ndarray
) -> np.ndarray:
    # Scaled-distance approximation: exact on the surface, |error| small near it; good enough
    # for partial-volume edges (the label is its zero level set, exact).
    local = (p - centre) @ R
    k = np.linalg.norm(local / axes, axis=-1)
    return (k - 1.0) * axes.min()


def make_casting_case(
    seed: int,
    *,
    voxel_mm: float = 0.5,
    n_pores: tuple[int, int] = (1, 5),
    n_cracks: tuple[int, int] = (0, 2),
    size_mm: tuple[tuple[float, float], ...] = ((60.0, 90.0), (40.0, 70.0), (25.0, 45.0)),
    fillet_mm: float = 5.0,
    metal_hu: tuple[float, float] = (2000.0, 2600.0),
    margin_mm: float = 8.0,
) -> PhantomCase:
    """A metal casting with pores (class 1) and cracks (class 2) of exact boxes.

    Args:
        seed: case seed (same seed → bit-identical volume and boxes).
        voxel_mm: isotropic voxel, mm.
        n_pores: inclusive range of the number of pores.
        n_cracks: inclusive range of the number of cracks.
        size_mm: per CT axis, the range of the part's outer size, mm.
        fillet_mm: edge fillet radius, mm.
        metal_hu: range of the metal's HU-equivalent (uniform per case).
        margin_mm: air around the part, mm.

    Returns:
        :class:`PhantomCase` (M ≥ 1 defects); ``meta["defects"]`` lists kind, centre, axes.
    """
    if n_pores[0] + n_cracks[0] < 1 and n_pores[1] + n_cracks[1] < 1:
        raise ValueError(
            f"n_pores/n_cracks: at least one defect needed, found {n_pores}, {n_cracks}"
        )
    rng = np.random.default_rng([int(seed), 0xCA57])
    size = np.array([rng.uniform(lo, hi) for lo, hi in size_mm])
    half = size / 2
    shape = tuple(int(np.ceil((s + 2 * margin_mm) / voxel_mm)) for s in size)
    T = T_ct_from_voxel(shape, (voxel_mm,) * 3)
    axes = [(np.arange(n) - (n - 1) / 2) * voxel_mm for n in shape]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)
    sdf = _rounded_box_sdf(p, half, min(fillet_mm, 0.45 * half.min()))
    holes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 4))):
        rad = float(rng.uniform(3.0, 0.18 * min(size[0], size[1])))
        c = rng.uniform(-(half[:2] - rad - 6.0), half[:2] - rad - 6.0)
        # Keep holes apart so that defects have room between them.
        if any(np.linalg.norm(c - h[:2]) < rad + h[2] + 6.0 for h in holes):
            continue
        holes.append(np.array([c[0], c[1], rad]))
        sdf = np.maximum(sdf, rad - np.linalg.norm(p[..., :2] - c, axis=-1))
    metal = float(rng.uniform(*metal_hu))
    occ = np.clip(0.5 - sdf / voxel_mm, 0.0, 1.0)
    hu = -1000.0 + (metal + 1000.0) * occ
    labels = np.zeros(shape, dtype=np.int64)
    kinds = ["pore"] * int(rng.integers(n_pores[0], n_pores[1] + 1))
    kinds += ["crack"] * int(rng.integers(n_cracks[0], n_cracks[1] + 1))
    if not kinds:
        kinds = ["pore"]
    rng.shuffle(kinds)
    inside = np.argwhere(sdf < -2.0)
    placed: list[tuple[np.ndarray, float]] = []
    defects: list[dict[str, Any]] = []
    classes: list[int] = []
    for kind in kinds:
        if kind == "pore":
            ax = rng.uniform(0.6, 3.0) * rng.uniform(0.7, 1.0, 3)
        else:
            ax = np.array(
                [rng.uniform(3.0, 8.0), rng.uniform(0.5, 1.5), rng.uniform(0.6, 1.0) * voxel_mm * 2]
            )
        R = _random_rotation(rng)
        radius = float(ax.max())
        for _try in range(200):
            c = p[tuple(inside[rng.integers(len(inside))])].astype(np.float64)
            lo = np.floor((c - radius - 1.0 - _axes_min(axes)) / voxel_mm).astype(int)
            hi = np.ceil((c + radius + 1.0 - _axes_min(axes)) / voxel_mm).astype(int) + 1
            box = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, shape, strict=True))
            # The whole bounding sphere (plus 1 mm) must lie in metal, away from other defects.
            if sdf[box].size == 0 or _sphere_max(sdf[box], p[box], c, radius + 1.0) > 0.0:
                continue
            if any(np.linalg.norm(c - q) < radius + r + 1.0 for q, r in placed):
                continue
            d = _ellipsoid_sdf(p[box].astype(np.float64), c, R, ax)
            if not (d <= 0).any():
                continue
            f = np.clip(0.5 - d / voxel_mm, 0.0, 1.0)
            hu[box] = hu[box] * (1.0 - f) + (-1000.0) * f
            labels[box][d <= 0] = len(defects) + 1
            placed.append((c, radius))
            classes.append(1 if kind == "pore" else 2)
            defects.append(
                {
                    "kind": kind,
                    "centre_ct_mm": c.tolist(),
                    "semi_axes_mm": ax.tolist(),
                    "rotation": R.round(8).tolist(),
                }
            )
            break
    if not defects:
        raise ValueError("casting: no defect could be placed (part too small for the defects)")
    lab_t = torch.from_numpy(labels)
    volume = Volume(
        data=torch.from_numpy(hu.astype(np.float32)),
        T_ct_from_voxel=T,
        labels=lab_t,
        meta={"phantom": "casting", "seed": int(seed)},
    )
    return PhantomCase(
        volume=volume,
        boxes3d=boxes_from_labels(lab_t, T, len(defects)),
        labels=torch.tensor(classes, dtype=torch.int64),
        meta={
            "phantom": "casting",
            "seed": int(seed),
            "host": "synthetic",
            "size_mm": size.tolist(),
            "holes_xyr_mm": [h.tolist() for h in holes],
            "metal_hu": metal,
            "voxel_mm": voxel_mm,
            "defects": defects,
        },
    )


def _axes_min(axes: list[np.ndarray]) -> np.ndarray:
    """CT coordinate of voxel 0 along each axis, mm."""
    return np.array([a[0] for a in axes])


def _sphere_max(sdf: np.ndarray, p: np.ndarray, c: np.ndarray, r: float) -> float:
    inside = np.linalg.norm(p - c, axis=-1) <= r
    return float(sdf[inside].max()) if inside.any() else np.inf
