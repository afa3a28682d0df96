"""Augmentation keeps the calibration exact: re-projecting the 3D ground truth after augmentation
lands on the augmented image content and on the augmented 2D boxes."""

from __future__ import annotations

import math

import pytest
import torch

from mvxray.datasets.augment import (
    GeometricConfig,
    MultiViewAugment,
    Photometric,
    PhotometricConfig,
)
from mvxray.datasets.base import MultiViewSample
from mvxray.geometry import Rig, project_boxes3d, project_points
from mvxray.geometry._checks import check_rigid

SIGMA = 1.2  # px, dots drawn at projected points


def _dots(uv: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``(V, N, 2)`` → ``(V, 1, H, W)`` images of Gaussian dots sampled at pixel centres."""
    v = torch.arange(H, dtype=torch.float64) + 0.5
    u = torch.arange(W, dtype=torch.float64) + 0.5
    d2 = (u[None, None, None, :] - uv[..., 0, None, None]) ** 2 + (
        v[None, None, :, None] - uv[..., 1, None, None]
    ) ** 2
    return torch.exp(-d2 / (2 * SIGMA**2)).sum(1, keepdim=True).float()


def _scene(offset_px=(0.0, 0.0)) -> tuple[MultiViewSample, torch.Tensor]:
    H, W = 48, 64
    rig = Rig.circular(3, 300.0, 600.0, H, W, 2.0, start_deg=55.0, offset_px=offset_px)
    points = torch.tensor(
        [[-12.0, 3.0, 9.0], [10.0, -8.0, -3.0], [2.0, 11.0, -10.0]], dtype=torch.float64
    )
    size = torch.tensor([[3.0, 4.0, 5.0], [6.0, 3.0, 4.0], [4.0, 4.0, 3.0]], dtype=torch.float64)
    boxes3d = torch.cat([points - size / 2, points + size / 2], -1)
    uv, _ = project_points(points, rig.K, rig.T_cam_from_ct)
    boxes2d, vis = project_boxes3d(boxes3d, rig.K, rig.T_cam_from_ct, H, W)
    sample = MultiViewSample(
        _dots(uv, H, W) * 5.0 + 2.0,  # not a [0, 1] image: the scale must survive
        rig,
        boxes3d,
        boxes2d,
        vis,
        torch.zeros(3, dtype=torch.long),
        "scene",
    )
    return sample, points


def _centroids(img: torch.Tensor, uv: torch.Tensor, R: int = 4) -> torch.Tensor:
    """Background-subtracted intensity centroid in a window around each expected position."""
    out = torch.zeros_like(uv)
    for v in range(uv.shape[0]):
        for n in range(uv.shape[1]):
            c0, r0 = (int(x) for x in uv[v, n])
            w = img[v, 0, r0 - R : r0 + R + 1, c0 - R : c0 + R + 1].double()
            w = (w - w.min()).clamp(min=0)
            rows = torch.arange(r0 - R, r0 + R + 1, dtype=torch.float64) + 0.5
            cols = torch.arange(c0 - R, c0 + R + 1, dtype=torch.float64) + 0.5
            out[v, n, 0] = (w.sum(0) * cols).sum() / w.sum()
            out[v, n, 1] = (w.sum(1) * rows).sum() / w.sum()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_geometric_augmentation_keeps_calibration_exact(seed: int) -> None:
    sample, points = _scene(offset_px=(2.5, -1.5))
    aug = MultiViewAugment(
        GeometricConfig(p_mirror=0.5, p_rotate=1.0, p_scale=1.0), photometric=None
    )
    out = aug(sample, seed=seed)
    rig = out.rig
    check_rigid(rig.T_cam_from_ct, "T")
    assert bool((rig.K[:, 0, 0] > 0).all() and (rig.K[:, 1, 1] > 0).all())
    # Mirrored scenes: points and boxes follow meta["T_aug_from_ct"].
    S = out.meta["T_aug_from_ct"]
    p_aug = points @ S[:3, :3].T
    uv, depth = project_points(p_aug, rig.K, rig.T_cam_from_ct)
    assert bool((depth > 0).all())
    found = _centroids(out.images, uv)
    assert float((found - uv).norm(dim=-1).max()) < 0.1
    # The 2D boxes are the projections of the (mirrored) 3D boxes with the new calibration.
    reproj, vis = project_boxes3d(out.boxes3d, rig.K, rig.T_cam_from_ct, rig.height, rig.width)
    torch.testing.assert_close(out.boxes2d, reproj)
    assert torch.equal(out.visible2d, sample.visible2d & vis)
    # Parameters were drawn per view.
    assert len(set(out.meta["augment"]["rotation_deg"])) == 3


def test_mirror_flips_every_view_and_boxes() -> None:
    sample, _ = _scene()
    aug = MultiViewAugment(GeometricConfig(p_mirror=1.0, p_rotate=0.0, p_scale=0.0), None)
    out = aug(sample, seed=1)
    assert out.meta["augment"]["mirror_ct_x"]
    flips = out.meta["augment"]["flip"]
    assert set(flips) <= {"h", "v"} and None not in flips
    b = sample.boxes3d
    torch.testing.assert_close(out.boxes3d[:, [0, 3]], -b[:, [3, 0]])
    torch.testing.assert_close(out.boxes3d[:, 1:3], b[:, 1:3])
    # A flip is exact pixel permutation: the image is the flipped image.
    for v, f in enumerate(flips):
        dim = -1 if f == "h" else -2
        torch.testing.assert_close(out.images[v], sample.images[v].flip(dim), atol=1e-4, rtol=0)
        # ... and the 2D boxes are the flipped boxes.
        W, H = sample.rig.width, sample.rig.height
        x1, y1, x2, y2 = sample.boxes2d[v].unbind(-1)
        want = torch.stack([W - x2, y1, W - x1, y2] if f == "h" else [x1, H - y2, x2, H - y1], -1)
        torch.testing.assert_close(out.boxes2d[v], want)


def test_two_d_only_cases_transform_their_boxes() -> None:
    """Without 3D boxes (NaN), flips and scale map the 2D boxes exactly."""
    sample, _ = _scene()
    known = MultiViewAugment(GeometricConfig(p_mirror=1.0, p_rotate=0.0, p_scale=1.0), None)
    ref = known(sample, seed=3)
    nan3d = MultiViewSample(
        sample.images,
        sample.rig,
        torch.full_like(sample.boxes3d, float("nan")),
        sample.boxes2d,
        sample.visible2d,
        sample.labels,
    )
    out = known(nan3d, seed=3)
    torch.testing.assert_close(out.rig.K, ref.rig.K)
    torch.testing.assert_close(out.boxes2d, ref.boxes2d, atol=1e-6, rtol=0)
    assert bool(out.boxes3d.isnan().all())


def test_rotation_needs_square_pixels() -> None:
    sample, _ = _scene()
    K = sample.rig.K.clone()
    K[:, 1, 1] *= 1.1
    s = MultiViewSample(
        sample.images,
        Rig(K, sample.rig.T_cam_from_ct, 48, 64, sample.rig.pixel_mm),
        sample.boxes3d,
        sample.boxes2d,
        sample.visible2d,
        sample.labels,
    )
    with pytest.raises(ValueError, match="square pixels"):
        MultiViewAugment(GeometricConfig(p_rotate=1.0), None)(s, seed=0)
    MultiViewAugment(GeometricConfig(p_rotate=0.0, p_scale=1.0), None)(s, seed=0)


def test_photometric_keeps_scale_and_is_seeded_per_view() -> None:
    sample, _ = _scene()
    aug = MultiViewAugment(None, PhotometricConfig(p=1.0))
    a, b, c = aug(sample, seed=7), aug(sample, seed=7), aug(sample, seed=8)
    torch.testing.assert_close(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert a.images.shape == sample.images.shape and a.rig is sample.rig
    # Back on the input's scale: the range only grows by the (unclipped) Gaussian noise.
    lo, hi = float(sample.images.min()), float(sample.images.max())
    slack = 6 * PhotometricConfig().noise_std * (hi - lo)
    assert lo - slack <= float(a.images.min()) and float(a.images.max()) <= hi + slack
    # Independent draws per view: identical input views come out different.
    same = sample.images[:1].repeat(3, 1, 1, 1)
    out = Photometric(PhotometricConfig(p=1.0))(same)
    assert not torch.allclose(out[0], out[1])


def test_photometric_off_is_identity_and_vignetting_darkens_corners() -> None:
    x = torch.rand(2, 1, 16, 20) + 1.0
    torch.testing.assert_close(Photometric(PhotometricConfig(p=0.0))(x), x)
    only_vignette = PhotometricConfig(p=1.0, vignetting=(0.5, 0.5))
    ph = Photometric(only_vignette)
    ph.ops = torch.nn.ModuleList()  # vignetting alone
    flat = torch.full((1, 1, 16, 20), 3.0)
    flat[0, 0, 0, 0] = 1.0  # so the min–max range is not empty
    out = ph(flat)
    assert float(out[0, 0, 8, 10]) == pytest.approx(3.0, abs=0.02)
    r2 = (7.5**2 + 9.5**2) / (8**2 + 10**2)
    assert float(out[0, 0, 15, 19]) == pytest.approx(1.0 + 2.0 * (1 - 0.5 * r2), abs=1e-4)
    assert math.isfinite(float(out.sum()))
