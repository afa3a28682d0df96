"""The on-disk format: round trip, hand-written cases, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import (
    CASE_FILE,
    DatasetFormatError,
    clean_temporary,
    read_case,
    read_dataset,
    split_cases,
    write_case,
    write_dataset,
)
from mvxray.geometry import Rig, project_boxes3d


def make_sample(seed: int = 0, M: int = 2, V: int = 3, H: int = 20, W: int = 24) -> MultiViewSample:
    """A synthetic sample with consistent 2D/3D boxes (projected by the geometry core)."""
    g = torch.Generator().manual_seed(seed)
    rig = Rig.circular(V, 300.0, 600.0, H, W, 4.0, start_deg=7.0 * seed)
    c = (torch.rand(M, 3, generator=g, dtype=torch.float64) - 0.5) * 20
    s = 2 + 4 * torch.rand(M, 3, generator=g, dtype=torch.float64)
    boxes3d = torch.cat([c - s, c + s], -1)
    boxes2d, vis = project_boxes3d(boxes3d, rig.K, rig.T_cam_from_ct, H, W)
    return MultiViewSample(
        images=torch.rand(V, 1, H, W, generator=g),
        rig=rig,
        boxes3d=boxes3d,
        boxes2d=boxes2d,
        visible2d=vis,
        labels=torch.arange(M) % 2,
        case_id=f"case_{seed:05d}",
        meta={"phantom": "test", "seed": seed, "tensor": torch.ones(2)},
    )


def test_round_trip(tmp_path: Path) -> None:
    s = make_sample()
    mask = s.boxes2d.clone() + 0.5
    out = write_case(tmp_path / s.case_id, s, classes=["nodule", "mass"], boxes2d_mask=mask)
    assert (out / CASE_FILE).is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CASE_FILE] + [f"view_{v:02d}.{e}" for v in range(3) for e in ("npy", "png")]
    )
    r = read_case(out)
    torch.testing.assert_close(r.images, s.images)
    torch.testing.assert_close(r.rig.K, s.rig.K)
    torch.testing.assert_close(r.rig.T_cam_from_ct, s.rig.T_cam_from_ct)
    torch.testing.assert_close(r.boxes3d, s.boxes3d)
    torch.testing.assert_close(r.boxes2d, s.boxes2d)
    assert torch.equal(r.visible2d, s.visible2d) and torch.equal(r.labels, s.labels)
    torch.testing.assert_close(r.meta["boxes2d_mask"], mask)
    assert r.meta["classes"] == ["nodule", "mass"] and r.meta["boxes3d_known"]
    assert r.meta["provenance"]["seed"] == 0 and r.meta["provenance"]["tensor"] == [1.0, 1.0]
    assert r.case_id == "case_00000"


def test_preview_is_16_bit_png(tmp_path: Path) -> None:
    from PIL import Image

    out = write_case(tmp_path / "c", make_sample())
    im = Image.open(out / "view_00.png")
    a = np.asarray(im)
    assert a.shape == (20, 24) and a.max() == 65535 and a.min() == 0


def test_hand_written_case_without_3d_boxes(tmp_path: Path) -> None:
    """A user's real calibrated X-rays, written with json + numpy only, any intensity scale."""
    case = tmp_path / "patient_7"
    case.mkdir()
    views = []
    for v in range(2):
        np.save(case / f"xray{v}.npy", (1000.0 + 50 * v) * np.ones((6, 8), dtype=np.float32))
        T = np.eye(4)
        T[2, 3] = 700.0
        views.append(
            {
                "image": f"xray{v}.npy",
                "K": [[1200.0, 0, 4.0], [0, 1200.0, 3.0], [0, 0, 1]],
                "T_cam_from_ct": T.tolist(),
                "height": 6,
                "width": 8,
                "pixel_mm": 0.8,
            }
        )
    doc = {"views": views, "boxes2d_px": [[[1, 1, 3, 4], [5, 2, 7, 5]], [[2, 2, 4, 4]]]}
    (case / "case.json").write_text(json.dumps(doc))
    s = read_case(case)
    assert s.images.shape == (2, 1, 6, 8) and float(s.images.max()) == 1050.0
    assert s.boxes3d.shape == (2, 6) and bool(s.boxes3d.isnan().all())
    assert not s.meta["boxes3d_known"]
    assert s.visible2d.tolist() == [[True, True], [True, False]]  # view 1 padded
    assert s.boxes2d[1, 0].tolist() == [2.0, 2.0, 4.0, 4.0]
    assert s.labels.tolist() == [0, 0]
    # Images only: no boxes at all.
    (case / "case.json").write_text(json.dumps({"views": views}))
    assert read_case(case / "case.json").boxes3d.shape == (0, 6)


def _write(tmp_path: Path) -> Path:
    return write_case(tmp_path / "c0", make_sample())


def _edit(case: Path, fn) -> None:
    doc = json.loads((case / CASE_FILE).read_text())
    fn(doc)
    (case / CASE_FILE).write_text(json.dumps(doc))


def test_transmission_counts_are_read_as_line_integrals(tmp_path: Path) -> None:
    s = make_sample()
    case = write_case(tmp_path / "c0", s)
    for v in range(3):  # 12-bit raw counts of the same views: dark where the object attenuates
        counts = 4000.0 * np.exp(-s.images[v, 0].double().numpy())
        np.save(case / f"view_{v:02d}.npy", counts.astype(np.float32))
    _edit(case, lambda d: d.update(intensity="transmission", i0=4000.0))
    torch.testing.assert_close(read_case(case).images, s.images, atol=1e-5, rtol=0)
    # Without i0, each view's brightest pixel is taken as the unattenuated beam (→ 0).
    _edit(case, lambda d: d.pop("i0"))
    got = read_case(case).images
    shift = s.images.amin(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(got, s.images - shift, atol=1e-5, rtol=0)
    for bad, match in [
        ({"intensity": "counts"}, r"case.json: key 'intensity' is 'counts', expected one of"),
        ({"intensity": "transmission", "i0": 0.0}, r"case.json: .*i0 must be > 0"),
    ]:
        _edit(case, lambda d, bad=bad: d.update(bad))
        with pytest.raises(DatasetFormatError, match=match):
            read_case(case)
    np.save(case / "view_01.npy", -np.ones((20, 24), np.float32))
    _edit(case, lambda d: d.pop("i0"))
    with pytest.raises(DatasetFormatError, match=r"expected counts >= 0.*already log-converted"):
        read_case(case)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    case = _write(tmp_path)
    (case / "view_01.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"views\[1\]\['image'\] = 'view_01.npy'"):
        read_case(case)


def test_missing_case_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"case\.json: no such case file"):
        read_case(tmp_path)


def test_missing_key_is_named(tmp_path: Path) -> None:
    case = _write(tmp_path)
    _edit(case, lambda d: d.pop("views"))
    with pytest.raises(DatasetFormatError, match="missing key 'views'"):
        read_case(case)
    case = write_case(tmp_path / "c1", make_sample())
    _edit(case, lambda d: d["views"][0].pop("K"))
    with pytest.raises(DatasetFormatError, match=r"case.json: key 'views': .*missing key.*K"):
        read_case(case)


def test_shape_mismatches_name_file_and_key(tmp_path: Path) -> None:
    case = _write(tmp_path)
    np.save(case / "view_02.npy", np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(DatasetFormatError, match=r"views\[2\]\['image'\].*\(5, 5\).*\(20, 24\)"):
        read_case(case)
    case = write_case(tmp_path / "c1", make_sample())
    _edit(case, lambda d: d["boxes2d_px"][1].pop())
    with pytest.raises(DatasetFormatError, match=r"'boxes2d_px\[1\]' has 1 boxes, expected 2"):
        read_case(case)
    case = write_case(tmp_path / "c2", make_sample())
    _edit(case, lambda d: d.__setitem__("boxes3d_ct_mm", [[0, 0, 0, 1, 1]] * 2))
    with pytest.raises(DatasetFormatError, match=r"'boxes3d_ct_mm' expected shape \(\*, 6\)"):
        read_case(case)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception mid-write (here: while saving view 2) leaves no case and no temporary."""
    real_save = np.save
    calls = {"n": 0}

    def flaky_save(path, arr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_save(path, arr)

    monkeypatch.setattr(np, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        write_case(tmp_path / "c0", make_sample())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_refuse(tmp_path: Path) -> None:
    case = write_case(tmp_path / "c0", make_sample(0))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_case(case, make_sample(1))
    write_case(case, make_sample(1), overwrite=True)
    assert read_case(case).case_id == "case_00001"
    assert [p.name for p in tmp_path.iterdir()] == ["c0"]


def test_clean_temporary(tmp_path: Path) -> None:
    (tmp_path / ".tmp-c0.abc").mkdir()
    (tmp_path / ".tmp-dataset.json.x").write_text("{")
    assert clean_temporary(tmp_path) == 2 and list(tmp_path.iterdir()) == []


def test_split_cases_disjoint_and_reproducible() -> None:
    ids = [f"case_{i:05d}" for i in range(23)]
    a, b = split_cases(ids, seed=4), split_cases(list(reversed(ids)), seed=4)
    assert a == b
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert (len(a["val"]), len(a["test"])) == (2, 2)
    assert split_cases(ids, seed=5) != a
    with pytest.raises(ValueError, match="fractions"):
        split_cases(ids, (0.5, 0.5))


def test_dataset_index(tmp_path: Path) -> None:
    for i in range(4):
        write_case(tmp_path / f"case_{i:05d}", make_sample(i))
    ids = [f"case_{i:05d}" for i in range(4)]
    write_dataset(tmp_path, ids, split_cases(ids), classes=["nodule"], meta={"plan": {"seed": 0}})
    idx = read_dataset(tmp_path)
    assert idx.cases == ids and idx.meta["plan"] == {"seed": 0}
    assert sorted(idx.split("train") + idx.split("val") + idx.split("test")) == ids
    assert idx.split("all") == ids
    with pytest.raises(KeyError, match="split 'holdout'"):
        idx.split("holdout")


def test_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset\.json: no such file"):
        read_dataset(tmp_path)
    write_case(tmp_path / "a", make_sample())
    write_dataset(tmp_path, ["a", "b"], {"train": ["a", "b"]})
    with pytest.raises(FileNotFoundError, match="case 'b' listed but"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"cases": ["a"], "splits": {"train": ["a"], "test": ["a"]}})
    )
    with pytest.raises(DatasetFormatError, match="'a' is in splits 'train' and 'test'"):
        read_dataset(tmp_path)
