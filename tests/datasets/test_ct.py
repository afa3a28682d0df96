"""CT loaders: tiny DICOM series written with pydicom, NIfTI with nibabel, resampling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mvxray.datasets.base import Volume
from mvxray.datasets.ct import (
    DicomError,
    load_ct,
    load_dicom,
    load_nifti,
    resample,
    sample_voxels,
    to_canonical,
)
from mvxray.geometry import T_ct_from_voxel, voxel_to_ct

ROWS, COLS = 8, 6  # non-square so that row / column mix-ups fail


def _slice(
    path: Path,
    pixels: np.ndarray,
    position: np.ndarray,
    iop: np.ndarray,
    series: str,
    spacing=(0.7, 0.9),
    slope: float = 2.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    drop: tuple[str, ...] = (),
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.ImagePositionPatient = [float(x) for x in position]
    ds.ImageOrientationPatient = [float(x) for x in iop]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.int16).tobytes()
    for tag in drop:
        delattr(ds, tag)
    ds.save_as(path, enforce_file_format=True)


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    a, b = np.deg2rad(deg_x), np.deg2rad(deg_z)
    Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    Rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return Rz @ Rx


def _series(
    folder: Path,
    n: int = 4,
    step: float = 1.5,
    R: np.ndarray | None = None,
    origin=(-10.0, 20.0, 30.0),
    skip: int | None = None,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Write n slices in shuffled file order; returns (stored pixels (n, rows, cols), R)."""
    folder.mkdir(parents=True, exist_ok=True)
    R = np.eye(3) if R is None else R
    r, c, nrm = R[:, 0], R[:, 1], R[:, 2]
    uid = generate_uid()
    rng = np.random.default_rng(0)
    px = rng.integers(0, 2000, size=(n, ROWS, COLS))
    for k in rng.permutation(n):
        if k == skip:
            continue
        pos = np.asarray(origin) + k * step * nrm
        _slice(folder / f"s{k:03d}.dcm", px[k], pos, np.r_[r, c], uid, **kw)
    return px, R


def test_axis_convention_and_hu(tmp_path: Path) -> None:
    px, _ = _series(tmp_path / "a", n=4, step=1.5)
    v = load_dicom(tmp_path / "a")
    assert tuple(v.data.shape) == (COLS, ROWS, 4)  # (column x, row y, slice)
    # data[i, j, k] = pixel_array[j, i] of slice k, times slope 2 plus intercept -1024.
    assert v.data[5, 2, 3].item() == pytest.approx(px[3, 2, 5] * 2.0 - 1024.0)
    assert v.spacing_mm.tolist() == pytest.approx([0.9, 0.7, 1.5])
    assert v.T_ct_from_voxel[:3, :3] / v.spacing_mm == pytest.approx(
        torch.eye(3, dtype=torch.float64)
    )
    # The DICOM position of voxel (0, 0, 0) is the first slice's ImagePositionPatient.
    centre = np.array([-10.0, 20.0, 30.0]) + np.array([0.9 * 5, 0.7 * 7, 1.5 * 3]) / 2
    assert v.meta["lps_centre_mm"] == pytest.approx(centre.tolist())
    assert v.meta["files"] == [f"s{k:03d}.dcm" for k in range(4)]


def test_oblique_orientation(tmp_path: Path) -> None:
    R = _rotation(20.0, 35.0)
    px, _ = _series(tmp_path / "o", n=5, step=2.0, R=R, origin=(3.0, -4.0, 5.0))
    v = load_dicom(tmp_path / "o")
    D = (v.T_ct_from_voxel[:3, :3] / v.spacing_mm).numpy()
    assert D == pytest.approx(R, abs=1e-6)  # columns: row cosine, column cosine, normal
    assert np.linalg.det(D) == pytest.approx(1.0)
    # Voxel (i, j, k) in DICOM LPS = IPP_0 + i·0.9·r + j·0.7·c + k·2·n; CT = that - centre.
    ijk = torch.tensor([[4.0, 1.0, 3.0]], dtype=torch.float64)
    lps = np.array([3.0, -4.0, 5.0]) + R @ (np.array([4.0 * 0.9, 0.7, 3 * 2.0]))
    ct = voxel_to_ct(ijk, v.T_ct_from_voxel)[0].numpy()
    assert ct + np.array(v.meta["lps_centre_mm"]) == pytest.approx(lps, abs=1e-9)
    assert v.data[4, 1, 3].item() == pytest.approx(px[3, 1, 4] * 2.0 - 1024.0)


def test_slices_sorted_along_normal_not_z(tmp_path: Path) -> None:
    # Normal pointing down (-Z): sorting must follow the normal, i.e. decreasing z.
    R = np.diag([1.0, -1.0, -1.0])
    px, _ = _series(tmp_path / "d", n=3, step=2.5, R=R)
    v = load_dicom(tmp_path / "d")
    assert v.data[0, 0, 2].item() == pytest.approx(px[2, 0, 0] * 2.0 - 1024.0)
    assert v.spacing_mm[2].item() == pytest.approx(2.5)


def test_load_ct_dispatch(tmp_path: Path) -> None:
    _series(tmp_path / "s", n=3)
    assert load_ct(tmp_path / "s").meta["format"] == "dicom"
    with pytest.raises(FileNotFoundError, match="no CT"):
        load_ct(tmp_path / "nothing.nii.gz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"DICOM folder or a \.nii"):
        load_ct(tmp_path / "x.txt")


def test_mixed_series_names_files(tmp_path: Path) -> None:
    _series(tmp_path / "m", n=3)
    R = np.eye(3)
    _slice(
        tmp_path / "m" / "other.dcm",
        np.zeros((ROWS, COLS)),
        np.array([0, 0, 99.0]),
        np.r_[R[:, 0], R[:, 1]],
        "1.2.3",
    )
    with pytest.raises(DicomError, match=r"mixed SeriesInstanceUID.*other\.dcm"):
        load_dicom(tmp_path / "m")


def test_non_ct_modality(tmp_path: Path) -> None:
    _series(tmp_path / "mr", n=3, modality="MR")
    with pytest.raises(DicomError, match=r"s000\.dcm: Modality is 'MR'"):
        load_dicom(tmp_path / "mr")


@pytest.mark.parametrize(
    "tag",
    [
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
        "Modality",
    ],
)
def test_missing_tag_named(tmp_path: Path, tag: str) -> None:
    _series(tmp_path / "t", n=3, drop=(tag,))
    with pytest.raises(DicomError, match=rf"s\d{{3}}\.dcm: missing DICOM tag {tag}"):
        load_dicom(tmp_path / "t")


def test_missing_pixel_data(tmp_path: Path) -> None:
    _series(tmp_path / "p", n=3, drop=("PixelData",))
    with pytest.raises(DicomError, match=r"s000\.dcm: missing pixel data \(tag PixelData\)"):
        load_dicom(tmp_path / "p")


def test_missing_slice(tmp_path: Path) -> None:
    _series(tmp_path / "g", n=5, step=1.5, skip=2)
    with pytest.raises(
        DicomError, match=r"s001\.dcm → s003\.dcm: ImagePositionPatient missing slice"
    ):
        load_dicom(tmp_path / "g")


def test_duplicated_slice(tmp_path: Path) -> None:
    px, R = _series(tmp_path / "u", n=3)
    _slice(
        tmp_path / "u" / "dup.dcm",
        px[1],
        np.array([-10.0, 20.0, 31.5]),
        np.r_[R[:, 0], R[:, 1]],
        load_dicom(tmp_path / "u").meta["series_uid"],
    )
    with pytest.raises(DicomError, match=r"dup\.dcm.*duplicated slice"):
        load_dicom(tmp_path / "u")


def test_non_uniform_spacing(tmp_path: Path) -> None:
    px, R = _series(tmp_path / "n", n=3, step=1.5)
    uid = load_dicom(tmp_path / "n").meta["series_uid"]
    _slice(
        tmp_path / "n" / "s003.dcm",
        px[0],
        np.array([-10.0, 20.0, 30.0 + 3.0 + 1.9]),
        np.r_[R[:, 0], R[:, 1]],
        uid,
    )
    with pytest.raises(
        DicomError, match=r"s002\.dcm → s003\.dcm: ImagePositionPatient non-uniform slice spacing"
    ):
        load_dicom(tmp_path / "n")
    # Within tolerance (2 % of the step) it loads, with the median step.
    _slice(
        tmp_path / "n" / "s003.dcm",
        px[0],
        np.array([-10.0, 20.0, 30.0 + 3.0 + 1.52]),
        np.r_[R[:, 0], R[:, 1]],
        uid,
    )
    assert load_dicom(tmp_path / "n").spacing_mm[2].item() == pytest.approx(1.5)


def test_inconsistent_orientation(tmp_path: Path) -> None:
    px, _ = _series(tmp_path / "i", n=3)
    uid = load_dicom(tmp_path / "i").meta["series_uid"]
    R2 = _rotation(5.0, 0.0)
    _slice(
        tmp_path / "i" / "s003.dcm",
        px[0],
        np.array([-10.0, 20.0, 34.5]),
        np.r_[R2[:, 0], R2[:, 1]],
        uid,
    )
    with pytest.raises(DicomError, match=r"s003\.dcm: ImageOrientationPatient .* differs"):
        load_dicom(tmp_path / "i")


def test_single_slice_and_empty_folder(tmp_path: Path) -> None:
    _series(tmp_path / "one", n=1)
    with pytest.raises(DicomError, match="at least 2 slices"):
        load_dicom(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("not dicom")
    with pytest.raises(DicomError, match="no DICOM file"):
        load_dicom(tmp_path / "empty")


def test_nifti_ras_to_lps(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    affine = np.array([[-0.5, 0, 0, 10], [0, 0.75, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    v = load_ct(tmp_path / "v.nii.gz")
    assert v.data.numpy() == pytest.approx(data)
    # RAS column (-0.5, 0, 0) is LPS (+0.5, 0, 0); (0, 0.75, 0) becomes (0, -0.75, 0).
    A = v.T_ct_from_voxel[:3, :3].numpy()
    assert A == pytest.approx(np.diag([0.5, -0.75, 2.0]))
    assert v.T_ct_from_voxel[:3, 3].numpy() == pytest.approx(-A @ np.array([0.5, 1.0, 1.5]))


def test_nifti_sheared_refused(tmp_path: Path) -> None:
    affine = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), affine), tmp_path / "s.nii")
    with pytest.raises(ValueError, match="orthogonal"):
        load_nifti(tmp_path / "s.nii")


def test_resample_keeps_centre_and_values() -> None:
    # A linear ramp along i is reproduced exactly by trilinear resampling (away from the edges).
    I, J, K = 9, 5, 5
    ramp = torch.arange(I, dtype=torch.float32)[:, None, None].expand(I, J, K).clone()
    labels = (ramp >= 4).long()
    v = Volume(ramp, T_ct_from_voxel((I, J, K), (1.0, 2.0, 2.0)), labels)
    r = resample(v, (0.5, 2.0, 2.0))
    assert tuple(r.data.shape) == (18, 5, 5)
    assert r.spacing_mm.tolist() == pytest.approx([0.5, 2.0, 2.0])
    # New voxel i sits at CT x = (i - 8.5) · 0.5, old index = x + 4.
    i = torch.arange(2, 16)
    assert r.data[2:16, 2, 2].numpy() == pytest.approx(((i - 8.5) * 0.5 + 4).numpy())
    assert set(r.labels.unique().tolist()) == {0, 1}
    assert r.T_ct_from_voxel[:3, 3].numpy() == pytest.approx([-4.25, -4.0, -4.0])


def test_to_canonical_exact() -> None:
    data = torch.arange(24.0).reshape(2, 3, 4)
    D = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, 1, 0]], dtype=torch.float64)  # axes → -Y, Z, X
    v = Volume(data, T_ct_from_voxel((2, 3, 4), (1.0, 2.0, 3.0), D))
    c = to_canonical(v)
    assert tuple(c.data.shape) == (4, 2, 3)
    assert c.spacing_mm.tolist() == [3.0, 1.0, 2.0]
    # The same CT point has the same value in both volumes.
    p = voxel_to_ct(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), v.T_ct_from_voxel)
    q = torch.linalg.solve(c.T_ct_from_voxel, torch.cat([p[0], torch.ones(1, dtype=torch.float64)]))
    assert c.data[tuple(q[:3].round().long().tolist())] == data[1, 2, 3]


def test_sample_voxels_fill_and_nearest() -> None:
    d = torch.arange(8.0).reshape(2, 2, 2)
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.4, 0.0, 0.6], [2.5, 0.0, 0.0]])
    out = sample_voxels(d, pts, mode="nearest", fill=-5.0)
    assert out.tolist() == [0.0, 7.0, 1.0, -5.0]


def test_multiframe_refused(tmp_path: Path) -> None:
    _series(tmp_path / "mf", n=2)
    ds = pydicom.dcmread(tmp_path / "mf" / "s000.dcm")
    ds.NumberOfFrames = 2
    ds.PixelData = np.zeros((2, ROWS, COLS), np.int16).tobytes()
    ds.save_as(tmp_path / "mf" / "s000.dcm")
    with pytest.raises(DicomError, match=r"s000\.dcm: PixelData has shape \(2, 8, 6\)"):
        load_dicom(tmp_path / "mf")


def test_gantry_tilt_refused(tmp_path: Path) -> None:
    # Slices step along Z but are shifted in Y (a tilted gantry): not along the normal.
    folder = tmp_path / "tilt"
    folder.mkdir()
    uid = generate_uid()
    for k in range(3):
        pos = np.array([0.0, 0.5 * k, 2.0 * k])
        _slice(folder / f"s{k:03d}.dcm", np.zeros((ROWS, COLS)), pos, np.r_[1, 0, 0, 0, 1, 0], uid)
    with pytest.raises(
        DicomError, match=r"s002\.dcm: ImagePositionPatient is not along the slice normal"
    ):
        load_dicom(folder)


def test_inconsistent_size_and_pixel_spacing(tmp_path: Path) -> None:
    px, _ = _series(tmp_path / "r", n=2)
    uid = load_dicom(tmp_path / "r").meta["series_uid"]
    iop = np.r_[1, 0, 0, 0, 1, 0]
    _slice(tmp_path / "r" / "s009.dcm", np.zeros((4, 4)), np.array([-10.0, 20.0, 33.0]), iop, uid)
    with pytest.raises(DicomError, match=r"s009\.dcm: Rows/Columns \(4, 4\) differ"):
        load_dicom(tmp_path / "r")
    _slice(
        tmp_path / "r" / "s009.dcm",
        px[0],
        np.array([-10.0, 20.0, 33.0]),
        iop,
        uid,
        spacing=(0.5, 0.5),
    )
    with pytest.raises(DicomError, match=r"s009\.dcm: PixelSpacing \[0\.5, 0\.5\] differs"):
        load_dicom(tmp_path / "r")
