"""The image branch of ``voting_fpr``: candidate patches and the view-pooled CNN."""

from __future__ import annotations

import pytest
import torch

from mvxray.geometry import Rig, project_points
from mvxray.lifting.patches import JITTER_PX, PatchScorer, augment, candidate_patches, centre

RIG = Rig.circular(4, 300.0, 600.0, 64, 80, 1.5)


def _bead_views(point: torch.Tensor) -> torch.Tensor:
    """Views with a Gaussian bead (σ 1.5 px) at the projection of ``point``."""
    uv, _ = project_points(point[None].double(), RIG.K, RIG.T_cam_from_ct)
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(80) + 0.5, indexing="ij")
    img = torch.zeros(4, 1, 64, 80)
    for v in range(4):
        u, w = uv[v, 0].float()
        img[v, 0] = torch.exp(-((xs - u) ** 2 + (ys - w) ** 2) / (2 * 1.5**2))
    return 1000.0 + 250.0 * img  # an arbitrary intensity scale


def test_patches_are_centred_on_the_projection_in_every_view() -> None:
    point = torch.tensor([7.3, -4.1, 5.6])
    patches, seen = candidate_patches(_bead_views(point), RIG, point[None], 12)
    assert patches.shape == (1, 4, 3, 12, 12) and seen.tolist() == [[True] * 4]
    img = patches[0, :, 0]  # the robust-normalized channel
    ys, xs = torch.meshgrid(torch.arange(12) - 5.5, torch.arange(12) - 5.5, indexing="ij")
    w = img - img.amin((-2, -1), keepdim=True)
    cx = (w * xs).sum((-2, -1)) / w.sum((-2, -1))
    cy = (w * ys).sum((-2, -1)) / w.sum((-2, -1))
    # the bead's intensity centroid sits at the patch centre (sub-pixel projections included)
    assert float(cx.abs().max()) < 0.1 and float(cy.abs().max()) < 0.1


def test_points_no_view_sees_are_marked_unseen() -> None:
    far = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 5000.0]])
    _, seen = candidate_patches(torch.rand(4, 1, 64, 80), RIG, far, 8)
    assert seen[0].all() and not seen[1].any()


def test_scorer_pools_over_the_views_that_see_the_candidate() -> None:
    torch.manual_seed(0)
    net = PatchScorer(n_features=3, patch_px=16).eval()
    x, p = torch.randn(5, 3), torch.randn(5, 4, 3, 16, 16)
    seen = torch.tensor([[True, True, False, True]] * 4 + [[False] * 4])
    with torch.no_grad():
        a = net(x, p, seen)
        q = p.clone()
        q[:, 2] = 100.0  # an unseen view's content does not count
        order = torch.tensor([3, 0, 2, 1])
        b = net(x, q[:, order], seen[:, order])  # nor does the views' order
    assert torch.allclose(a, b, atol=1e-5) and bool(a.isfinite().all())


def test_augment_crops_a_window_shifted_at_most_the_jitter() -> None:
    size, n = 8, 8 + 2 * JITTER_PX
    big = torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n)
    assert torch.equal(centre(big, size), big[..., JITTER_PX:-JITTER_PX, JITTER_PX:-JITTER_PX])
    g, offsets = torch.Generator().manual_seed(0), set()
    for _ in range(30):
        crop = augment(big, size, g)
        oy, ox = divmod(int(crop.min()), n)  # the window's top-left, whatever the flips
        window = big[..., oy : oy + size, ox : ox + size]
        assert 0 <= oy <= 2 * JITTER_PX and 0 <= ox <= 2 * JITTER_PX
        assert torch.equal(crop.flatten().sort().values, window.flatten().sort().values)
        offsets.add((oy, ox))
    assert len(offsets) > 5


def test_bad_patch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        PatchScorer(n_features=3, patch_px=12)
