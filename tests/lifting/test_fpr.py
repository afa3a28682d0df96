"""``voting_fpr``: the voting lifter's candidates re-scored by a learned classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, box3d_center_size, project_points
from mvxray.lifting import build, load
from mvxray.lifting.fpr import FEATURES, FPRVotingLifter, candidate_features, candidate_labels

from .conftest import StoredDetector, make_scene

REGION = (-40.0, -40.0, -40.0, 40.0, 40.0, 40.0)
RIG = Rig.circular(6, 300.0, 600.0, 96, 96, 3.0)


def _scene(seed: int) -> tuple[MultiViewSample, list[Detections2D]]:
    """Two true indications: sharp evidence 0.3 in every view. Two distractors: broad (σ 5 px)
    evidence 0.45 in every view — consistent in 3D, so they outvote the true ones."""
    sample = make_scene(RIG, 4, seed=seed, spread_mm=30.0)
    centres, _ = box3d_center_size(sample.boxes3d.double())
    uv, _ = project_points(centres, RIG.K, RIG.T_cam_from_ct)
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    dets = []
    for v in range(RIG.num_views):
        heat = torch.zeros(96, 96)
        for m, (amp, sigma) in enumerate([(0.3, 1.2), (0.3, 1.2), (0.45, 5.0), (0.45, 5.0)]):
            c = uv[v, m].float()
            blob = amp * torch.exp(-((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / (2 * sigma**2))
            heat = torch.maximum(heat, blob)
        dets.append(Detections2D(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long(), heat))
    keep = torch.tensor([True, True, False, False])  # only the first two are indications
    truth = MultiViewSample(
        sample.images,
        RIG,
        sample.boxes3d[keep],
        sample.boxes2d[:, keep],
        sample.visible2d[:, keep],
        sample.labels[keep],
        sample.case_id,
    )
    return truth, dets


def _top2_hits(lifter: FPRVotingLifter, scenes: list) -> int:
    """How many of the true indications are the lifter's two best boxes, over all scenes."""
    hits = 0
    for sample, dets in scenes:
        out = lifter.lift(sample, dets)
        c, _ = box3d_center_size(out.boxes3d[:2].double())
        t, _ = box3d_center_size(sample.boxes3d.double())
        hits += int((torch.cdist(t, c).amin(1) < 3.0).sum())
    return hits


@pytest.fixture(scope="module")
def scenes() -> list:
    """12 scenes whose four centres lie >= 20 mm apart (the vote cannot merge them)."""
    out, seed = [], 20
    while len(out) < 12:
        c, _ = box3d_center_size(make_scene(RIG, 4, seed=seed, spread_mm=30.0).boxes3d.double())
        d = torch.cdist(c, c) + 1e3 * torch.eye(4, dtype=torch.float64)
        if float(d.min()) >= 20.0:
            out.append(_scene(seed))
        seed += 1
    return out


def test_fit_learns_to_rank_sharp_indications_above_broad_clutter(scenes: list) -> None:
    train, test = scenes[:8], scenes[8:]
    lifter = FPRVotingLifter(region_mm=REGION)
    # Untrained it is the vote: the broad, stronger distractors come first.
    assert _top2_hits(lifter, test) <= 2
    stats = lifter.fit(
        [s for s, _ in train], detector=StoredDetector({s.case_id: d for s, d in train})
    )
    assert stats["positives"] == 16 and stats["candidates"] > stats["positives"]
    assert stats["loss"] < 0.2
    assert _top2_hits(lifter, test) == 8  # all true indications of the 4 unseen scenes first


def test_save_load_round_trip_gives_identical_scores(scenes: list, tmp_path) -> None:
    lifter = build("voting_fpr", region_mm=REGION, hidden=0, epochs=50)
    train = scenes[:4]
    lifter.fit([s for s, _ in train], detector=StoredDetector({s.case_id: d for s, d in train}))
    lifter.save(tmp_path / "fpr.pt")
    again = load("voting_fpr", tmp_path / "fpr.pt")
    sample, dets = scenes[5]
    a, b = lifter.lift(sample, dets), again.lift(sample, dets)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.boxes3d, b.boxes3d)
    assert again.config.region_mm == REGION and again.fpr.hidden == 0


def test_features_are_finite_and_labels_follow_the_hit_rule(scenes: list) -> None:
    sample, dets = scenes[0]
    lifter = FPRVotingLifter(region_mm=REGION)
    c = lifter.candidates(sample, dets)
    x = candidate_features(RIG, c)
    assert x.shape == (len(c.points), len(FEATURES)) and bool(x.isfinite().all())
    y = candidate_labels(c, sample.boxes3d)
    t, size = box3d_center_size(sample.boxes3d.double())
    d = torch.cdist(c.points, t)
    assert torch.equal(y.bool(), (d <= size.mean(1)[None] / 2).any(1))
    assert int(y.sum()) == 2


def test_bad_input_errors(scenes: list, tmp_path) -> None:
    sample, dets = scenes[0]
    empty = MultiViewSample(
        sample.images,
        RIG,
        sample.boxes3d[:0],
        sample.boxes2d[:, :0],
        sample.visible2d[:, :0],
        sample.labels[:0],
        sample.case_id,
    )
    lifter = FPRVotingLifter(region_mm=REGION)
    with pytest.raises(ValueError, match=r"none of the .* training candidates"):
        lifter.fit([empty], detector=StoredDetector({sample.case_id: dets}))
    with pytest.raises(ValueError, match="no training candidate"):
        lifter.fit([], detector=StoredDetector({}))
    with pytest.raises(RuntimeError, match="not fitted"):
        lifter.save(tmp_path / "x.pt")
    torch.save({"lifter": "mv2d"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a voting_fpr lifter"):
        FPRVotingLifter.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="window_px"):
        FPRVotingLifter(window_px=4)


def _look_alike(seed: int) -> tuple[MultiViewSample, list[Detections2D]]:
    """The four centres of ``_scene(seed)`` with the same evidence (0.3, σ 1.2 px) in every
    view; only the first two are blobs in the X-rays (on noise)."""
    truth, _ = _scene(seed)
    sample = make_scene(RIG, 4, seed=seed, spread_mm=30.0)
    centres, _ = box3d_center_size(sample.boxes3d.double())
    uv, _ = project_points(centres, RIG.K, RIG.T_cam_from_ct)
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    g = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.rand(RIG.num_views, 1, 96, 96, generator=g)
    dets = []
    for v in range(RIG.num_views):
        heat = torch.zeros(96, 96)
        for m in range(4):
            d2 = (xs - uv[v, m, 0].float()) ** 2 + (ys - uv[v, m, 1].float()) ** 2
            heat = torch.maximum(heat, 0.3 * torch.exp(-d2 / (2 * 1.2**2)))
            if m < 2:
                images[v, 0] += torch.exp(-d2 / (2 * 2.0**2))
        dets.append(Detections2D(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long(), heat))
    return dataclasses.replace(truth, images=images), dets


def test_the_patch_classifier_tells_apart_what_only_the_xrays_show(scenes: list, tmp_path) -> None:
    pairs = [_look_alike(int(s.case_id[1:])) for s, _ in scenes]
    train, test = pairs[:8], pairs[8:]
    detector = StoredDetector({s.case_id: d for s, d in pairs})
    features_only = FPRVotingLifter(region_mm=REGION, hidden=0)
    features_only.fit([s for s, _ in train], detector=detector)
    lifter = FPRVotingLifter(region_mm=REGION, patch_px=16, patch_epochs=15, patch_batch=16)
    stats = lifter.fit([s for s, _ in train], detector=detector)
    assert stats["positives"] == 16
    assert _top2_hits(features_only, test) < 8  # the evidence alone cannot tell them apart
    assert _top2_hits(lifter, test) == 8
    lifter.save(tmp_path / "fpr.pt")
    again = load("voting_fpr", tmp_path / "fpr.pt")
    sample, dets = test[0]
    assert again.fpr.patch_px == 16
    assert torch.equal(lifter.lift(sample, dets).scores, again.lift(sample, dets).scores)
    with pytest.raises(ValueError, match="patch_px"):
        FPRVotingLifter(patch_px=12)
