"""2D metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.benchmarks.metrics2d import (
    DetectionEvaluator,
    average_precision,
    froc_curve,
    match_image,
    summarize,
)
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import ShapeError

GT = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])


def test_match_prefers_high_scores_and_counts_duplicates_as_false():
    det = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9], [20.0, 20, 30, 30], [50.0, 50, 60, 60]])
    tp = match_image(det, torch.tensor([0.9, 0.95, 0.5, 0.7]), GT)
    # box 1 (0.95, IoU 0.9) takes GT 0; box 0 duplicates it; box 2 takes GT 1; box 3 misses
    assert tp.tolist() == [False, True, True, False]


def test_match_iou_threshold_is_inclusive():
    # IoU of [0,0,10,10] and [0,0,10,5] is exactly 0.5
    assert match_image(torch.tensor([[0.0, 0, 10, 5]]), torch.tensor([1.0]), GT[:1]).tolist() == [
        True
    ]
    assert match_image(torch.tensor([[0.0, 0, 10, 4.9]]), torch.tensor([1.0]), GT[:1]).tolist() == [
        False
    ]


def test_match_shapes_are_checked():
    with pytest.raises(ShapeError, match=r"boxes: expected shape \(N, 4\)"):
        match_image(torch.zeros(3), torch.zeros(3), GT)
    with pytest.raises(ShapeError, match="scores"):
        match_image(torch.zeros(2, 4), torch.zeros(3), GT)


def test_two_images_hand_computed():
    # image A: GT a1, a2; detections 0.9 TP(a1), 0.8 FP, 0.3 TP(a2)
    # image B: GT b1;     detections 0.7 TP(b1), 0.6 FP, 0.5 FP
    ev = DetectionEvaluator()
    ev.add(
        torch.tensor([[0.0, 0, 10, 10], [80.0, 80, 90, 90], [20.0, 20, 30, 30]]),
        torch.tensor([0.9, 0.8, 0.3]),
        GT,
        view=0,
    )
    ev.add(
        torch.tensor([[0.0, 0, 10, 10], [40.0, 40, 50, 50], [60.0, 60, 70, 70]]),
        torch.tensor([0.7, 0.6, 0.5]),
        GT[:1],
        view=1,
    )
    m = ev.compute(per_view=True)
    # ranked: .9 TP, .8 FP, .7 TP, .6 FP, .5 FP, .3 TP; n_gt = 3, 2 images
    # FPPI after each: 0, .5, .5, 1, 1.5, 1.5; recall: 1/3, 1/3, 2/3, 2/3, 2/3, 1
    assert m["recall@0.5fp"] == pytest.approx(2 / 3)
    assert m["recall@1fp"] == pytest.approx(2 / 3)
    assert m["recall@2fp"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(1.0)
    # precision: 1, 1/2, 2/3, 1/2, 2/5, 1/2; envelope: 1, 2/3, 2/3, 1/2, 1/2, 1/2
    # AP = 1/3·1 + 1/3·2/3 + 1/3·1/2
    assert m["ap50"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert m["n_gt"] == 3 and m["n_images"] == 2 and m["n_detections"] == 6
    v0, v1 = m["per_view"][0], m["per_view"][1]
    # view 0 alone: .9 TP, .8 FP, .3 TP (1 image) → recall@1fp = 1, AP = 1/2 + 1/2·2/3
    assert v0["recall@1fp"] == 1.0 and v0["ap50"] == pytest.approx(0.5 + 1 / 3)
    # view 1 alone: .7 TP, .6 FP, .5 FP → recall 1 at 0 FP
    assert v1["recall@0.5fp"] == 1.0 and v1["ap50"] == pytest.approx(1.0)


def test_add_sample_uses_only_visible_boxes():
    ev = DetectionEvaluator()
    dets = [Detections2D(GT[:1], torch.tensor([0.9]), torch.zeros(1, dtype=torch.long))] * 2
    boxes2d = GT[None].repeat(2, 1, 1)
    visible = torch.tensor([[True, False], [False, False]])
    ev.add_sample(dets, boxes2d, visible)
    m = ev.compute()
    # view 0: one TP of one visible GT; view 1: the same box is a FP (its GT is not visible)
    assert m["n_gt"] == 1 and m["recall@0.5fp"] == 1.0 and m["ap50"] == 1.0
    with pytest.raises(ShapeError, match="one entry per view"):
        ev.add_sample(dets[:1], boxes2d, visible)


def test_no_detections_and_no_ground_truth():
    m = DetectionEvaluator().compute()
    assert m["n_images"] == 0 and m["recall@1fp"] == 0.0
    ev = DetectionEvaluator()
    ev.add(torch.zeros(0, 4), torch.zeros(0), GT)
    assert ev.compute()["recall"] == 0.0 and ev.compute()["ap50"] == 0.0


def test_average_precision_of_a_perfect_ranking_is_one():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=30),
    st.integers(1, 5),
)
def test_froc_is_monotone_and_recall_bounded(dets, n_images):
    scores = np.array([d[0] for d in dets])
    tp = np.array([d[1] for d in dets])
    n_gt = int(tp.sum()) + 1
    fppi, recall, _ = froc_curve(scores, tp, n_gt, n_images)
    assert np.all(np.diff(fppi) >= 0) and np.all(np.diff(recall) >= 0)
    s = summarize(scores, tp, n_gt, n_images)
    r = [s[f"recall@{f:g}fp"] for f in (0.5, 1, 2, 4)]
    assert r == sorted(r) and 0 <= r[0] and r[-1] <= 1 and 0 <= s["ap50"] <= 1
