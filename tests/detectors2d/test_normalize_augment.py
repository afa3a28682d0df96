"""Per-image normalization and the box-preserving augmentations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.detectors2d.augment import augment_view, flip_rotate, photometric, random_crop
from mvxray.detectors2d.normalize import (
    background_subtract,
    has_contrast,
    robust_normalize,
    xray_channels,
)
from mvxray.geometry import ShapeError


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-3, 1e4), st.floats(-1e4, 1e4), st.integers(0, 1000))
def test_robust_normalize_is_invariant_to_positive_affine_intensity_changes(a, b, seed):
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.allclose(robust_normalize(a * x + b), robust_normalize(x), atol=1e-4)


def test_robust_normalize_maps_percentiles_and_handles_flat_views():
    x = torch.linspace(0, 1, 1001).reshape(1, 1, 7, 143)
    y = robust_normalize(5 * x + 100)
    assert float(y.min()) == pytest.approx(-0.005 / 0.99, abs=1e-3)  # 0.5th percentile → 0
    assert robust_normalize(torch.full((1, 1, 4, 4), 1e6)).abs().max() == 0


def test_xray_channels_make_a_faint_blob_stand_out():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    bg = 100 + 50 * yy / 64  # a strong ramp
    img = (bg + 2 * torch.exp(-((xx - 30) ** 2 + (yy - 40) ** 2) / 4))[None, None]
    ch = xray_channels(img)
    assert ch.shape == (1, 3, 64, 64)
    for c in (1, 2):  # high-pass and DoG channels peak at the blob, not on the ramp
        r, col = divmod(int(ch[0, c].argmax()), 64)
        assert abs(r - 40) <= 1 and abs(col - 30) <= 1
    assert background_subtract(img).shape == (1, 1, 64, 64)


def test_xray_channels_do_not_change_with_the_air_around_the_object():
    """A wider field of view (the same object, 36 % → 89 % of the view air) gives the object's
    pixels the same filtered channels: their spread is measured over the object only."""
    g = torch.Generator().manual_seed(0)
    obj = 1 + torch.nn.functional.avg_pool2d(torch.rand(1, 1, 66, 66, generator=g), 3, 1)
    narrow, wide = torch.zeros(1, 1, 80, 80), torch.zeros(1, 1, 192, 192)
    narrow[..., 8:72, 8:72] = obj
    wide[..., 64:128, 64:128] = obj
    a = xray_channels(narrow, reference_height=64)[..., 24:56, 24:56]
    b = xray_channels(wide, reference_height=64)[..., 80:112, 80:112]
    for c in (1, 2):
        assert float(a[0, c].std()) > 0.1  # real texture, not a saturated or flat channel
        torch.testing.assert_close(b[0, c], a[0, c], atol=0.03, rtol=0)


def test_has_contrast_and_input_checks():
    assert has_contrast(torch.stack([torch.ones(1, 8, 8), torch.rand(1, 8, 8)])).tolist() == [
        False,
        True,
    ]
    with pytest.raises(ShapeError, match="expected 1 channel"):
        xray_channels(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        robust_normalize([[1.0]])  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 11), st.integers(0, 7), st.booleans(), st.booleans(), st.integers(0, 3))
def test_flip_rotate_moves_boxes_with_pixels(col, row, hflip, vflip, k):
    im = torch.zeros(1, 8, 12)
    im[0, row, col] = 1.0
    box = torch.tensor([[col, row, col + 1, row + 1]], dtype=torch.float32)
    out, b = flip_rotate(im, box, hflip, vflip, k)
    r, c = (int(v) for v in out[0].nonzero()[0])
    assert b.tolist() == [[c, r, c + 1, r + 1]]


def test_random_crop_keeps_the_chosen_box_and_drops_cut_boxes():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[50.0, 50, 58, 58], [0.0, 0, 4, 4]])
    for _ in range(20):
        im, b = random_crop(torch.rand(1, 100, 100), boxes[:1], 32, 1.0, g)
        assert im.shape == (1, 32, 32) and len(b) == 1
        assert float(b[0, 2] - b[0, 0]) == 8.0 and float(b.min()) >= 0 and float(b.max()) <= 32
    # a box half outside is kept only if ≥ 50 % of its area remains
    im, b = random_crop(torch.rand(1, 64, 64), torch.tensor([[-6.0, 0, 2, 8]]), 64, 0.0, g)
    assert len(b) == 0


def test_augment_view_is_seeded():
    im, boxes = torch.rand(1, 32, 32), torch.tensor([[4.0, 4, 10, 12]])
    a = augment_view(im, boxes, torch.Generator().manual_seed(3))
    b = augment_view(im, boxes, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (1, 32, 32)


def test_photometric_blur_reaches_blur_px():
    spike = torch.zeros(1, 33, 33)
    spike[0, 16, 16] = 1.0

    def peaks(blur_px: float) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in range(24)]
        return torch.stack([photometric(spike, g, p=1.0, blur_px=blur_px)[0, 16, 16] for g in gens])

    sharp, blurred = peaks(0.0), peaks(2.0)
    assert float(sharp.min()) > 0.95  # gamma keeps 1 at 1, noise is at most 1 %
    # a sigma drawn up to 2 px spreads the spike: sigma = 1 px leaves 1 / (2 pi) of it
    assert float(blurred.median()) < 0.5
