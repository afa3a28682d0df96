"""Tests of the DRR adapter: physical scale, batching, backend agreement, masks and 2D boxes."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.ndimage import gaussian_filter

from mvxray.datasets.base import Volume
from mvxray.datasets.render import (
    BACKENDS,
    MU_WATER,
    hu_to_mu,
    mask_boxes,
    render_case,
    render_masks,
    render_views,
)
from mvxray.geometry import Rig, T_ct_from_voxel, project_boxes3d
from mvxray.geometry._checks import ShapeError

#: Documented agreement of nanodrr (trilinear ray marching) and diffdrr Siddon (exact voxel
#: chords): mean |nanodrr − Siddon| / mean Siddon over all pixels ≤ 1 %. The two differ by
#: volume model (trilinear vs piecewise-constant) and nanodrr's finite step, both mostly at edges.
AGREEMENT = 0.01


def _grid(n: int, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
    T = T_ct_from_voxel((n, n, n), (spacing,) * 3)
    idx = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 3, indexing="ij"), -1
    )
    return T, idx @ T[:3, :3].T + T[:3, 3]


def small_phantom(n: int = 32, spacing: float = 2.0, seed: int = 0) -> Volume:
    """A band-limited chest-like phantom: water body, two air-filled lungs, a bone rod, noise."""
    T, ct = _grid(n, spacing)
    x, y, z = ct.unbind(-1)
    r = n * spacing / 2
    hu = torch.full((n, n, n), -1000.0, dtype=torch.float64)
    hu[(x / (0.9 * r)) ** 2 + (y / (0.7 * r)) ** 2 <= 1] = 0.0
    for sx in (-1, 1):
        hu[
            ((x - sx * 0.4 * r) / (0.3 * r)) ** 2 + (y / (0.4 * r)) ** 2 + (z / (0.8 * r)) ** 2 <= 1
        ] = -800.0
    hu[(x**2 + (y - 0.5 * r) ** 2) <= (0.1 * r) ** 2] = 1200.0
    g = torch.Generator().manual_seed(seed)
    hu = hu + 20.0 * torch.randn(hu.shape, generator=g, dtype=torch.float64)
    hu = torch.from_numpy(gaussian_filter(hu.numpy(), 0.7))
    return Volume(hu.float(), T)


def test_hu_to_mu_physical_scale() -> None:
    assert hu_to_mu(torch.tensor([-2000.0, -1000.0, 0.0, 500.0])).tolist() == pytest.approx(
        [0.0, 0.0, MU_WATER, 1.5 * MU_WATER]
    )


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_water_cube_line_integral_is_mu_times_chord(backend: str) -> None:
    """The central ray of a 40 mm water cube integrates μ_water × 40 mm (hand-computed)."""
    n, sp = 20, 2.0
    vol = Volume(torch.zeros(n, n, n), T_ct_from_voxel((n, n, n), (sp,) * 3))
    rig = Rig.circular(1, 300.0, 600.0, 9, 9, 1.0)  # odd size: pixel (4, 4) is the centre
    img = render_views(vol, rig, backend, n_samples=400)
    assert img.shape == (1, 1, 9, 9)
    assert img.dtype == torch.float32
    # Siddon is exact for the voxel cube (40 mm); trilinear models fade over the last half voxel
    # on each side, which exactly preserves the integral along an axis-aligned ray.
    assert float(img[0, 0, 4, 4]) == pytest.approx(MU_WATER * n * sp, rel=0.01)
    assert float(img.min()) >= 0.0


def test_batching_does_not_change_the_image() -> None:
    vol = small_phantom(16, 3.0)
    rig = Rig.circular(3, 300.0, 600.0, 24, 20, 3.0)
    full = render_views(vol, rig, n_samples=64)
    tiny = render_views(vol, rig, n_samples=64, batch_views=1, max_samples=20 * 64 * 5)
    torch.testing.assert_close(full, tiny, rtol=1e-5, atol=1e-6)


def test_backends_agree_on_a_small_volume() -> None:
    vol = small_phantom()
    rig = Rig.circular(3, 300.0, 600.0, 48, 40, 2.0, start_deg=15.0)
    nano = render_views(vol, rig, "nanodrr")
    siddon = render_views(vol, rig, "diffdrr")
    rel = float((nano - siddon).abs().mean() / siddon.abs().mean())
    assert rel <= AGREEMENT, f"mean relative difference {rel:.4f}"
    # ... and the test can fail: a 5 % change of μ_water is seen.
    scaled = render_views(vol, rig, "nanodrr", mu_water=MU_WATER * 1.05)
    assert float((scaled - siddon).abs().mean() / siddon.abs().mean()) > AGREEMENT


def test_unknown_backend_is_refused() -> None:
    vol = small_phantom(8, 4.0)
    with pytest.raises(ValueError, match="backend: expected one of"):
        render_views(vol, Rig.seed(8), "pytorch3d")


def _nodule_volume() -> tuple[Volume, torch.Tensor]:
    """Water cube with two labelled spheres (radii 4 and 6 mm) and their 3D boxes."""
    n, sp = 32, 1.0
    T, ct = _grid(n, sp)
    centres = torch.tensor([[-6.0, 3.0, 2.0], [7.0, -5.0, -4.0]], dtype=torch.float64)
    radii = torch.tensor([4.0, 6.0], dtype=torch.float64)
    hu = torch.zeros(n, n, n)
    labels = torch.zeros(n, n, n, dtype=torch.int64)
    boxes = []
    for m, (c, r) in enumerate(zip(centres, radii)):
        inside = ((ct - c) ** 2).sum(-1) <= r**2
        hu[inside] = 100.0
        labels[inside] = m + 1
        boxes.append(torch.cat([c - r, c + r]))
    return Volume(hu, T, labels), torch.stack(boxes)


@pytest.mark.parametrize("backend", ["nanodrr", "diffdrr"])
def test_masks_are_chords_through_each_indication(backend: str) -> None:
    vol, _ = _nodule_volume()
    rig = Rig.circular(2, 300.0, 600.0, 40, 40, 1.0)
    chords = render_masks(vol, rig, 2, backend)
    assert chords.shape == (2, 2, 40, 40)
    # The longest chord through a voxelized sphere of radius r is ≈ its diameter.
    longest = chords.amax(dim=(-1, -2))
    assert longest[:, 0].tolist() == pytest.approx([8.0, 8.0], abs=1.2)
    assert longest[:, 1].tolist() == pytest.approx([12.0, 12.0], abs=1.2)


def test_render_case_keeps_both_2d_boxes() -> None:
    vol, boxes = _nodule_volume()
    rig = Rig.circular(3, 300.0, 600.0, 40, 48, 1.0, start_deg=20.0)
    out = render_case(vol, rig, boxes)
    geo, vis = project_boxes3d(boxes, rig.K, rig.T_cam_from_ct, rig.height, rig.width)
    torch.testing.assert_close(out.boxes2d, geo.float())
    assert out.visible2d.all() and vis.all()
    assert out.boxes2d_mask is not None and out.chords is not None
    # The rendered sphere's tight box lies inside the projected 3D box (which encloses the box
    # corners) but is not much smaller: a sphere fills ~ its box's projection minus the corners.
    m, g = out.boxes2d_mask, out.boxes2d
    assert bool((m[..., :2] >= g[..., :2] - 1.0).all() and (m[..., 2:] <= g[..., 2:] + 1.0).all())
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    assert bool((area(m) > 0.6 * area(g)).all())


def test_mask_boxes_empty_and_shape_errors() -> None:
    boxes, ok = mask_boxes(torch.zeros(2, 3, 5, 5))
    assert not ok.any() and boxes.abs().sum() == 0
    with pytest.raises(ShapeError, match="chords"):
        mask_boxes(torch.zeros(5, 5))


def test_render_masks_needs_labels() -> None:
    vol = small_phantom(8, 4.0)
    with pytest.raises(ValueError, match="labels is None"):
        render_masks(vol, Rig.seed(8))


def test_indication_outside_the_image_is_not_visible() -> None:
    vol, boxes = _nodule_volume()
    far = boxes.clone()
    far[1] += torch.tensor([500.0, 0, 0, 500.0, 0, 0], dtype=far.dtype)
    rig = Rig.circular(1, 300.0, 600.0, 40, 40, 1.0)
    out = render_case(vol, rig, far, masks=False)
    assert out.visible2d.tolist() == [[True, False]]
    assert math.isclose(float(out.images.sum()), float(render_views(vol, rig).sum()))
