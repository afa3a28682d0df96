"""Fitting a 3D box to multi-view 2D boxes: exact boxes, noisy boxes, the prior toward equal sides."""

from __future__ import annotations

import pytest
import torch

from mvxray.geometry import Rig, box3d_center_size, box3d_from_center_size, project_boxes3d
from mvxray.lifting.boxfit import fit_box3d
from mvxray.lifting.voting import VotingConfig

CENTRE = torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)


def _projected(rig: Rig, size: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The true sides ``(3,)`` mm and the box's 2D boxes ``(V, 4)`` px."""
    sides = torch.tensor([size], dtype=torch.float64)
    b2d, _ = project_boxes3d(
        box3d_from_center_size(CENTRE[None], sides), rig.K, rig.T_cam_from_ct, rig.height, rig.width
    )
    return sides[0], b2d[:, 0]


def _fit(rig: Rig, boxes: torch.Tensor, init_mm: float, **kw: object) -> torch.Tensor:
    box, _ = fit_box3d(
        boxes, rig.K, rig.T_cam_from_ct, rig.height, rig.width, CENTRE, torch.full((3,), init_mm),
        **kw,
    )  # fmt: skip
    return box3d_center_size(box[None])[1][0]


@pytest.mark.parametrize("size", [[4.0, 4.0, 16.0], [12.0, 3.0, 3.0]])
def test_the_prior_keeps_an_elongated_box_that_its_2d_boxes_show(size: list[float]) -> None:
    # A crack 4:1: exact 2D boxes in 10 views outweigh the prior toward equal sides.
    rig = Rig.circular(10, 300.0, 600.0, 128, 128, 2.0)
    truth, b2d = _projected(rig, size)
    sides = _fit(rig, b2d, 6.0, iso_weight=1.0)
    assert (sides - truth).abs().max() < 0.5
    assert float(sides.max() / sides.min()) > 3.0
    strong = _fit(rig, b2d, 6.0, iso_weight=20.0)  # a prior that dominates makes it cube-like
    assert float(strong.max() / strong.min()) < float(sides.max() / sides.min()) - 0.5


@pytest.mark.parametrize(("views", "ratio"), [(3, 0.5), (10, 0.85)])
def test_the_prior_steadies_sizes_fitted_to_noisy_weak_boxes(views: int, ratio: float) -> None:
    # 5-px boxes, 1 px of noise per edge, detection scores 0.05-0.55 as weights: without the
    # prior two sides trade against each other (3 views over 180°: off by a factor ~2.5).
    rig = Rig.circular(views, 300.0, 600.0, 128, 128, 2.0, arc_deg=180.0)
    truth, b2d = _projected(rig, [5.0, 5.5, 4.5])
    g = torch.Generator().manual_seed(0)
    errors: dict[float, list[float]] = {0.0: [], 1.0: []}
    for _ in range(40):
        noisy = b2d + torch.randn(views, 4, generator=g, dtype=torch.float64)
        w = 0.05 + 0.5 * torch.rand(views, generator=g, dtype=torch.float64)
        for iso, errs in errors.items():
            sides = _fit(rig, noisy, 5.0, weights=w, iso_weight=iso)
            errs.append(float((sides.log() - truth.log()).abs().max()))
    free, prior = (torch.tensor(errors[k]).mean() for k in (0.0, 1.0))
    assert prior < ratio * free, (float(prior), float(free))


def test_a_negative_prior_weight_is_refused() -> None:
    rig = Rig.circular(3, 300.0, 600.0, 64, 64, 2.0)
    _, b2d = _projected(rig, [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="iso_weight: expected >= 0, found -1"):
        _fit(rig, b2d, 5.0, iso_weight=-1.0)
    with pytest.raises(ValueError, match=r"fit_box_iso: expected >= 0, found -0\.5"):
        VotingConfig(fit_box_iso=-0.5)
