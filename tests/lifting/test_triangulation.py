"""The training-free triangulation lifter on synthetic scenes with exact, noisy and degraded boxes."""

from __future__ import annotations

import pytest
import torch

from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, ShapeError, box3d_center_size
from mvxray.lifting.association import AssociationConfig, DetectionTable, associate
from mvxray.lifting.triangulation import TriangulationLifter

from .conftest import make_scene, oracle_detections


def random_rig(seed: int, num_views: int) -> Rig:
    g = torch.Generator().manual_seed(seed)
    lao = (torch.rand(num_views, generator=g) * 180 - 90).tolist()
    cran = (torch.rand(num_views, generator=g) * 60 - 30).tolist()
    return Rig.carm(lao, cran, 500.0, 1000.0, 256, 256, 1.0)


def centre_errors(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Distance from each true centre to the nearest predicted centre, mm."""
    pc, tc = box3d_center_size(pred.double())[0], box3d_center_size(truth.double())[0]
    return torch.cdist(tc, pc).min(1).values


@pytest.mark.parametrize(("seed", "views"), [(0, 2), (1, 3), (2, 5), (3, 8)])
def test_exact_boxes_recover_centres_and_sizes(seed: int, views: int) -> None:
    rig = random_rig(seed, views)
    sample = make_scene(rig, 3, seed)
    out = TriangulationLifter().lift(sample, oracle_detections(sample))
    assert len(out) == 3
    assert centre_errors(out.boxes3d, sample.boxes3d).max() < 0.05
    pc, ps = box3d_center_size(out.boxes3d.double())
    tc, ts = box3d_center_size(sample.boxes3d.double())
    nearest = torch.cdist(tc, pc).argmin(1)
    torch.testing.assert_close(ps[nearest], ts, atol=0.05, rtol=0)
    torch.testing.assert_close(out.scores, torch.ones(3))
    assert out.support.shape == (3, views) and bool(out.support.all())


def test_jitter_one_pixel_gives_sub_millimetre_centres() -> None:
    # 0.78 mm pixels at magnification 2: one pixel is ~0.4 mm at the object
    rig = Rig.circular(10, 300.0, 600.0, 512, 512, 0.78125)
    errs = []
    for seed in range(3):
        sample = make_scene(rig, 3, seed)
        out = TriangulationLifter().lift(
            sample, oracle_detections(sample, jitter_px=1.0, seed=seed)
        )
        errs.append(centre_errors(out.boxes3d, sample.boxes3d))
    err = torch.cat(errs)
    assert float(err.median()) < 0.4
    assert float(err.max()) < 1.0


def test_missed_views_and_false_positives() -> None:
    rig = Rig.seed(256)
    found, false_high = 0, 0
    for seed in range(3):
        sample = make_scene(rig, 4, seed, spread_mm=80.0)
        dets = oracle_detections(sample, jitter_px=0.5, drop=0.3, fp_per_view=3, seed=seed)
        out = TriangulationLifter().lift(sample, dets)
        err = centre_errors(out.boxes3d, sample.boxes3d)
        found += int((err < 2.0).sum())
        # boxes that are not near any true box and still score like true ones
        pc = box3d_center_size(out.boxes3d.double())[0]
        tc = box3d_center_size(sample.boxes3d.double())[0]
        false = torch.cdist(pc, tc).min(1).values > 5.0
        false_high += int((false & (out.scores > 0.3)).sum())
    assert found == 12
    assert false_high <= 1


def test_max_boxes_keeps_the_best_hypotheses() -> None:
    rig = Rig.seed(256)
    sample = make_scene(rig, 4, 7, spread_mm=80.0)
    dets = oracle_detections(sample, jitter_px=0.5, fp_per_view=8, seed=7)
    full = TriangulationLifter().lift(sample, dets)
    top = TriangulationLifter(max_boxes=3).lift(sample, dets)
    assert len(full) > 3 and len(top) == 3
    # the first three hypotheses of the association's ranking, with the same boxes
    match = torch.cdist(top.boxes3d.double(), full.boxes3d.double()).min(1).values
    assert float(match.max()) < 1e-6


def test_many_view_rigs_need_a_fraction_of_their_views() -> None:
    rig = Rig.seed(256)  # 10 views: 3 must agree by default
    sample = make_scene(rig, 1, 11)
    dets = oracle_detections(sample)
    two = [d if v in (0, 3) else Detections2D.empty() for v, d in enumerate(dets)]
    three = [d if v in (0, 3, 6) else Detections2D.empty() for v, d in enumerate(dets)]
    assert len(TriangulationLifter().lift(sample, two)) == 0
    assert len(TriangulationLifter().lift(sample, three)) == 1
    assert len(TriangulationLifter(min_view_frac=0.0).lift(sample, two)) == 1
    with pytest.raises(ValueError, match="min_view_frac"):
        AssociationConfig(min_view_frac=1.5)


def test_a_view_with_no_detection_and_two_views_only() -> None:
    rig = random_rig(7, 3)
    sample = make_scene(rig, 2, 7)
    dets = oracle_detections(sample)
    dets[1] = type(dets[1]).empty()
    out = TriangulationLifter().lift(sample, dets)
    assert len(out) == 2
    assert centre_errors(out.boxes3d, sample.boxes3d).max() < 0.05
    assert out.support[:, 1].sum() == 0
    # two of three views seen: score 2/3
    torch.testing.assert_close(out.scores, torch.full((2,), 2 / 3))


def test_empty_and_single_detection_cases() -> None:
    rig = random_rig(3, 4)
    sample = make_scene(rig, 1, 3)
    empty = [type(d).empty() for d in oracle_detections(sample)]
    out = TriangulationLifter().lift(sample, empty)
    assert out.boxes3d.shape == (0, 6) and out.scores.shape == (0,) and out.support.shape == (0, 4)
    one = oracle_detections(sample)
    for v in range(1, 4):
        one[v] = type(one[v]).empty()
    assert len(TriangulationLifter().lift(sample, one)) == 0  # one view cannot be lifted
    with pytest.raises(ShapeError, match="one entry per view"):
        TriangulationLifter().lift(sample, one[:2])


def test_association_groups_detections_by_object() -> None:
    rig = Rig.seed(256)
    sample = make_scene(rig, 3, 11, spread_mm=80.0)
    dets = oracle_detections(sample)
    hyp, table = associate(dets, rig)
    assert hyp.points.shape[0] == 3
    # each hypothesis is supported by exactly the detections of one object in every view
    for p in range(3):
        rows = hyp.support[p][hyp.support[p] >= 0]
        boxes = table.boxes[rows]
        ious = [
            float(
                torch.max(
                    (boxes[i] - sample.boxes2d[int(table.view[r])].double()).abs().sum(-1) < 1e-3
                )
            )
            for i, r in enumerate(rows.tolist())
        ]
        assert all(ious)
    assert DetectionTable.from_detections(dets, 1).boxes.shape[0] == sample.num_views


def test_config_validation_and_overrides() -> None:
    with pytest.raises(ValueError, match="min_views"):
        AssociationConfig(min_views=1)
    lifter = TriangulationLifter(gate_px=2.0, min_score=0.1)
    assert lifter.config.association.gate_px == 2.0 and lifter.config.min_score == 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opposite_views_do_not_create_ghosts(seed: int) -> None:
    # views 180° apart see an object's ray almost end-on: a pairing of two different objects
    # can gather support in all 4 views; the reprojection residual must rank it below the truth
    rig = Rig.circular(4, 300.0, 600.0, 64, 64, 4.0)
    sample = make_scene(rig, 2, seed, spread_mm=30.0)
    out = TriangulationLifter().lift(sample, oracle_detections(sample))
    assert len(out) == 2
    assert centre_errors(out.boxes3d, sample.boxes3d).max() < 0.05
