"""The on-disk dataset: one folder per case (``case.json`` + float32 ``.npy`` views), a root
``dataset.json`` listing the cases and their train/val/test split. Plain JSON and NumPy, so it is
readable — and writable by hand — without mvxray. The format is specified in
``docs/dataset-format.md``; this module reads and writes it.

Writes are atomic: a case is written into a hidden temporary folder next to its final place and
renamed with ``os.replace``; ``dataset.json`` is written to a temporary file and renamed. A case
folder that has a ``case.json`` is therefore always complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.intensity import INTENSITIES, line_integral_from_transmission
from mvxray.geometry import Rig
from mvxray.io import TMP_PREFIX, atomic_write_text

CASE_FILE = "case.json"
DATASET_FILE = "dataset.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_TMP_PREFIX = TMP_PREFIX


class DatasetFormatError(ValueError):
    """A ``case.json`` / ``dataset.json`` is malformed: the message names the file and the key."""


# --------------------------------------------------------------------------- writing
def _preview_png(image: np.ndarray, path: Path) -> None:
    """A 16-bit PNG of one view, min–max normalized (for looking at, never for training)."""
    from PIL import Image

    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    Image.fromarray(np.round(scaled * 65535).astype(np.uint16)).save(path)


def write_case(
    case_dir: str | Path,
    sample: MultiViewSample,
    *,
    classes: Sequence[str] = ("nodule",),
    boxes2d_mask: torch.Tensor | None = None,
    provenance: dict[str, Any] | None = None,
    preview: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write one case atomically: ``case_dir/case.json`` + ``view_XX.npy`` (+ ``view_XX.png``).

    Args:
        case_dir: the case's folder (created; its name is the case id on disk).
        sample: images ``(V, C, H, W)``, rig, boxes3d ``(M, 6)`` CT mm, boxes2d ``(V, M, 4)`` px,
            visible2d ``(V, M)``, labels ``(M,)``.
        classes: class names; label ``l`` is ``classes[l]``.
        boxes2d_mask: optional ``(V, M, 4)`` px tight boxes of the rendered indication masks.
        provenance: JSON-serializable provenance (default ``sample.meta``).
        preview: also write 16-bit PNG previews.
        overwrite: replace an existing case (else refuse).

    Returns:
        The case folder.

    Raises:
        FileExistsError: the case exists and ``overwrite`` is False.
    """
    case_dir = Path(case_dir)
    if (case_dir / CASE_FILE).exists() and not overwrite:
        raise FileExistsError(f"{case_dir}: case exists (pass overwrite=True to replace it)")
    case_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = case_dir.parent / f"{_TMP_PREFIX}{case_dir.name}.{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        views = sample.rig.to_views()
        images = sample.images.detach().float().cpu().numpy()
        for v, view in enumerate(views):
            name = f"view_{v:02d}.npy"
            arr = images[v, 0] if images.shape[1] == 1 else images[v]
            np.save(tmp / name, np.ascontiguousarray(arr, dtype=np.float32))
            view["image"] = name
            if preview:
                _preview_png(images[v, 0], tmp / f"view_{v:02d}.png")
                view["preview"] = f"view_{v:02d}.png"
        doc: dict[str, Any] = {
            "format": "mvxray-case",
            "version": FORMAT_VERSION,
            "case_id": sample.case_id or case_dir.name,
            "views": views,
            "boxes3d_ct_mm": sample.boxes3d.detach().double().cpu().tolist(),
            "boxes2d_px": sample.boxes2d.detach().double().cpu().tolist(),
            "visible2d": sample.visible2d.detach().bool().cpu().tolist(),
            "labels": sample.labels.detach().long().cpu().tolist(),
            "classes": list(classes),
            "provenance": _jsonable(provenance if provenance is not None else sample.meta),
        }
        if boxes2d_mask is not None:
            doc["boxes2d_mask_px"] = boxes2d_mask.detach().double().cpu().tolist()
        with open(tmp / CASE_FILE, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        if case_dir.exists():  # overwrite: move the old case aside, then swap atomically
            old = case_dir.parent / f"{_TMP_PREFIX}{case_dir.name}.old.{uuid.uuid4().hex}"
            os.replace(case_dir, old)
            os.replace(tmp, case_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, case_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return case_dir


def _jsonable(x: Any) -> Any:
    """Tensors / arrays / paths → lists / strings, recursively, for provenance."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor | np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def clean_temporary(root: str | Path) -> int:
    """Remove leftovers of interrupted writes (``.tmp-*``) under ``root``; returns how many."""
    n = 0
    for p in Path(root).glob(f"{_TMP_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def is_complete(case_dir: str | Path) -> bool:
    """A case folder is complete iff its ``case.json`` exists (written last, atomically)."""
    return (Path(case_dir) / CASE_FILE).is_file()


# --------------------------------------------------------------------------- reading
def _key(doc: dict[str, Any], key: str, file: Path) -> Any:
    if key not in doc:
        raise DatasetFormatError(f"{file}: missing key {key!r}")
    return doc[key]


def _tensor(value: Any, shape: tuple[int | None, ...], file: Path, key: str) -> torch.Tensor:
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{file}: key {key!r} is not a numeric array ({exc})") from exc
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if t.dim() != len(shape) or any(s is not None and t.shape[i] != s for i, s in enumerate(shape)):
        raise DatasetFormatError(
            f"{file}: key {key!r} expected shape {want}, found {tuple(t.shape)}"
        )
    return t


def _per_view_boxes(value: Any, V: int, file: Path, key: str) -> list[torch.Tensor]:
    if not isinstance(value, list) or len(value) != V:
        found = len(value) if isinstance(value, list) else type(value).__name__
        raise DatasetFormatError(
            f"{file}: key {key!r} expected one list per view ({V}), found {found}"
        )
    return [
        _tensor(b, (None, 4), file, f"{key}[{v}]")
        if len(b)
        else torch.zeros(0, 4, dtype=torch.float64)
        for v, b in enumerate(value)
    ]


def _rig(views: Any, file: Path) -> Rig:
    if not isinstance(views, list) or not views:
        raise DatasetFormatError(f"{file}: key 'views' must be a non-empty list")
    try:
        return Rig.from_views(views)
    except (KeyError, ValueError) as exc:
        raise DatasetFormatError(f"{file}: key 'views': {exc}") from exc


def read_rig(path: str | Path) -> Rig:
    """The rig of a JSON file with a ``"views"`` list: what :meth:`Rig.to_json` writes, or a
    case's ``case.json`` (a case folder is accepted too; its images are not read).

    Raises:
        FileNotFoundError: no such file.
        DatasetFormatError: not JSON, or a view's calibration missing or of the wrong shape.
    """
    path = Path(path)
    file = path / CASE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such rig file")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DatasetFormatError(f"{file}: expected a JSON object with a 'views' list")
    return _rig(_key(doc, "views", file), file)


def read_case(path: str | Path) -> MultiViewSample:
    """Read one case folder (or its ``case.json``) into a :class:`MultiViewSample`.

    Only ``views`` is required. Without ``boxes2d_px`` the case has no boxes (M = 0). Without
    ``boxes3d_ct_mm`` (e.g. real X-rays annotated in 2D only) ``boxes3d`` is NaN and
    ``meta["boxes3d_known"]`` is False; per-view box lists may then differ in length and are padded
    (padding is not visible). ``visible2d`` defaults to "box has positive area", ``labels`` to 0.
    Views of a case with ``"intensity": "transmission"`` (raw counts) are returned as line
    integrals ``-log(I / I0)`` (``"i0"``: the unattenuated intensity; default each view's maximum).

    ``meta`` holds ``provenance``, ``classes``, ``path``, ``boxes3d_known`` and, when present,
    ``boxes2d_mask`` (``(V, M, 4)`` px).

    Raises:
        FileNotFoundError: no ``case.json`` or a view's image file is missing (named with its key).
        DatasetFormatError: a missing key, or a value of the wrong shape (file and key named).
    """
    path = Path(path)
    file = path if path.name == CASE_FILE or path.is_file() else path / CASE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such case file")
    case_dir = file.parent
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{file}: not valid JSON ({exc})") from exc
    views = _key(doc, "views", file)
    rig = _rig(views, file)
    V, H, W = rig.num_views, rig.height, rig.width
    images = []
    for v, view in enumerate(views):
        name = _key(view, "image", file)
        img_path = case_dir / name
        if not img_path.is_file():
            raise FileNotFoundError(f"{file}: views[{v}]['image'] = {name!r}: file not found")
        arr = np.load(img_path)
        if arr.shape[-2:] != (H, W) or arr.ndim not in (2, 3):
            raise DatasetFormatError(
                f"{file}: views[{v}]['image'] = {name!r} has shape {arr.shape}, expected ({H}, {W}) "
                f"or (C, {H}, {W}) (the view's 'height' and 'width')"
            )
        if arr.ndim == 2:
            arr = arr[None]
        images.append(torch.from_numpy(np.asarray(arr, dtype=np.float32)))
    if len({t.shape[0] for t in images}) != 1:
        raise DatasetFormatError(f"{file}: views have different numbers of channels")
    images_t = torch.stack(images)
    intensity = doc.get("intensity", "line_integral")
    if intensity not in INTENSITIES:
        raise DatasetFormatError(
            f"{file}: key 'intensity' is {intensity!r}, expected one of {INTENSITIES}"
        )
    if intensity == "transmission":
        try:
            images_t = line_integral_from_transmission(images_t, doc.get("i0"))
        except ValueError as exc:
            raise DatasetFormatError(f"{file}: {exc}") from exc

    has3d = doc.get("boxes3d_ct_mm") is not None
    b2_list = _per_view_boxes(doc.get("boxes2d_px", [[] for _ in range(V)]), V, file, "boxes2d_px")
    M = max((b.shape[0] for b in b2_list), default=0)
    if has3d:
        boxes3d = (
            _tensor(doc["boxes3d_ct_mm"], (None, 6), file, "boxes3d_ct_mm")
            if doc["boxes3d_ct_mm"]
            else torch.zeros(0, 6, dtype=torch.float64)
        )
        M = boxes3d.shape[0]
        for v, b in enumerate(b2_list):
            if b.shape[0] != M:
                raise DatasetFormatError(
                    f"{file}: key 'boxes2d_px[{v}]' has {b.shape[0]} boxes, expected {M} "
                    f"(one per entry of 'boxes3d_ct_mm', same order)"
                )
    else:
        boxes3d = torch.full((M, 6), float("nan"), dtype=torch.float64)
    boxes2d = torch.zeros(V, M, 4, dtype=torch.float64)
    padded = torch.zeros(V, M, dtype=torch.bool)
    for v, b in enumerate(b2_list):
        boxes2d[v, : b.shape[0]] = b
        padded[v, : b.shape[0]] = True
    if "visible2d" in doc:
        vis = _tensor(doc["visible2d"], (V, M), file, "visible2d") > 0.5
    else:
        vis = padded & (boxes2d[..., 2] > boxes2d[..., 0]) & (boxes2d[..., 3] > boxes2d[..., 1])
    labels = (
        _tensor(doc["labels"], (M,), file, "labels").long()
        if "labels" in doc
        else torch.zeros(M, dtype=torch.long)
    )
    meta: dict[str, Any] = {
        "provenance": doc.get("provenance", {}),
        "classes": doc.get("classes", ["indication"]),
        "path": str(case_dir),
        "boxes3d_known": has3d,
    }
    if doc.get("boxes2d_mask_px") is not None:
        meta["boxes2d_mask"] = _tensor(doc["boxes2d_mask_px"], (V, M, 4), file, "boxes2d_mask_px")
    return MultiViewSample(
        images=images_t,
        rig=rig,
        boxes3d=boxes3d,
        boxes2d=boxes2d,
        visible2d=vis & padded,
        labels=labels,
        case_id=str(doc.get("case_id", case_dir.name)),
        meta=meta,
    )


# --------------------------------------------------------------------------- dataset index
@dataclass
class DatasetIndex:
    """The content of ``dataset.json``.

    Attributes:
        root: the dataset folder.
        cases: case folder names (relative to ``root``), sorted.
        splits: split name → case names (disjoint; every case in exactly one split).
        classes: class names (label ``l`` ↔ ``classes[l]``).
        meta: everything else in ``dataset.json`` (provenance, generation plan).
    """

    root: Path
    cases: list[str]
    splits: dict[str, list[str]]
    classes: list[str] = field(default_factory=lambda: ["nodule"])
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[str]:
        """Case names of split ``name`` (``"all"`` for every case)."""
        if name == "all":
            return list(self.cases)
        if name not in self.splits:
            raise KeyError(
                f"split {name!r} not in {self.root / DATASET_FILE}: {sorted(self.splits)}"
            )
        return list(self.splits[name])


def split_cases(
    case_ids: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Assign whole cases to train / val / test (no case in two splits), reproducibly.

    A seeded permutation of the sorted ids; val and test get ``round(f · N)`` cases each, at least
    one when N ≥ 3; train gets the rest.

    Example:
        >>> s = split_cases([f"c{i}" for i in range(10)], seed=1)
        >>> [len(s[k]) for k in ("train", "val", "test")]
        [8, 1, 1]
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions: expected 3 non-negative numbers, found {list(fractions)}")
    ids = sorted(case_ids)
    N = len(ids)
    total = float(sum(fractions))
    n_val, n_test = (round(f / total * N) for f in fractions[1:])
    if N >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    n_val, n_test = min(n_val, N), min(n_test, max(N - n_val, 0))
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).tolist()
    order = [ids[i] for i in perm]
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def write_dataset(
    root: str | Path,
    cases: Sequence[str],
    splits: dict[str, Sequence[str]],
    classes: Sequence[str] = ("nodule",),
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/dataset.json`` atomically (cases sorted; splits restricted to ``cases``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    present = set(cases)
    doc = {
        "format": "mvxray-dataset",
        "version": FORMAT_VERSION,
        "classes": list(classes),
        "cases": sorted(present),
        "splits": {k: sorted(c for c in v if c in present) for k, v in splits.items()},
        **_jsonable(meta or {}),
    }
    atomic_write_text(root / DATASET_FILE, json.dumps(doc, indent=1))
    return root / DATASET_FILE


def read_dataset(root: str | Path) -> DatasetIndex:
    """Read ``root/dataset.json``; check that every listed case folder has a ``case.json``.

    Raises:
        FileNotFoundError: no ``dataset.json`` or a listed case is missing (both named).
        DatasetFormatError: missing keys, or a case in two splits.
    """
    root = Path(root)
    file = root / DATASET_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no such file (a dataset folder needs a dataset.json listing its cases; "
            f"see docs/dataset-format.md)"
        )
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{file}: not valid JSON ({exc})") from exc
    cases = [str(c) for c in _key(doc, "cases", file)]
    splits = {str(k): [str(c) for c in v] for k, v in doc.get("splits", {"train": cases}).items()}
    seen: dict[str, str] = {}
    for name, members in splits.items():
        for c in members:
            if c in seen:
                raise DatasetFormatError(
                    f"{file}: case {c!r} is in splits {seen[c]!r} and {name!r}"
                )
            if c not in cases:
                raise DatasetFormatError(f"{file}: split {name!r} lists {c!r}, not in 'cases'")
            seen[c] = name
    for c in cases:
        if not is_complete(root / c):
            raise FileNotFoundError(
                f"{file}: case {c!r} listed but {root / c / CASE_FILE} is missing"
            )
    rest = {k: v for k, v in doc.items() if k not in ("cases", "splits", "classes")}
    return DatasetIndex(root, sorted(cases), splits, list(doc.get("classes", ["nodule"])), rest)
