"""3D metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvxray.benchmarks.metrics3d import (
    average_precision,
    evaluate_3d,
    froc,
    match_greedy,
    per_nodule_table,
)
from mvxray.geometry import box3d_from_center_size


def cube(x: float, y: float = 0.0, z: float = 0.0, s: float = 4.0) -> list[float]:
    return [x - s / 2, y - s / 2, z - s / 2, x + s / 2, y + s / 2, z + s / 2]


def test_match_greedy_score_order_and_closest() -> None:
    gt = torch.tensor([cube(0), cube(3)])
    # the best-scoring prediction at x=1.6 is closer to gt 1 (1.4 mm) than gt 0 (1.6 mm)
    p = torch.tensor([cube(1.6), cube(0.2), cube(10)])
    m = match_greedy(p, torch.tensor([0.9, 0.8, 0.7]), gt, "dist", 2.0)
    assert m.tolist() == [1, 0, -1]
    # with the score order reversed, x=0.2 takes gt 0 first and x=1.6 still gets gt 1
    m = match_greedy(p, torch.tensor([0.1, 0.8, 0.7]), gt, "dist", 2.0)
    assert m.tolist() == [1, 0, -1]


def test_match_greedy_iou() -> None:
    gt = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    p = torch.tensor([[1.0, 0, 0, 3, 2, 2], [0.0, 0, 0, 2, 2, 2]])  # IoU 1/3 and 1
    assert match_greedy(p, torch.tensor([0.9, 0.5]), gt, "iou", 0.25).tolist() == [0, -1]
    assert match_greedy(p, torch.tensor([0.9, 0.5]), gt, "iou", 0.5).tolist() == [-1, 0]
    with pytest.raises(ValueError, match="criterion"):
        match_greedy(p, torch.tensor([0.9, 0.5]), gt, "giou", 0.5)


def test_average_precision_hand_computed() -> None:
    # TP, FP, TP of 2 gt: precision envelope 1 up to recall 0.5, then 2/3
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    assert ap == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)
    assert average_precision(np.array([0.5]), np.array([True]), 1) == 1.0
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert math.isnan(average_precision(np.zeros(0), np.zeros(0, bool), 0))
    # half the objects found, without false positives: recall levels 0..0.5 → 51/101
    assert average_precision(np.array([0.9]), np.array([True]), 2) == pytest.approx(51 / 101)


def test_froc_luna_rules_hand_computed() -> None:
    # case A: 2 nodules (4 mm, radius 2); case B: none
    gt = [torch.tensor([cube(0), cube(20)]), torch.zeros(0, 6)]
    preds = [
        (
            torch.tensor([cube(0.5), cube(50), cube(1.0), cube(21)]),
            torch.tensor([0.9, 0.8, 0.7, 0.6]),
        ),
        (torch.tensor([cube(0)]), torch.tensor([0.85])),
    ]
    out = froc(preds, gt)
    # sorted: 0.9 TP, 0.85 FP, 0.8 FP, (0.7 second hit ignored), 0.6 TP ; 2 cases, 2 nodules
    assert out["sensitivity"] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert out["cpm"] == pytest.approx(5.5 / 7)
    # a hit needs the centre within the radius (2 mm): 2.1 mm away is a false positive
    out = froc([(torch.tensor([cube(2.1)]), torch.tensor([0.9]))], [torch.tensor([cube(0)])])
    assert out["sensitivity"] == [0.0] * 7


def test_evaluate_3d_ate_ase_hand_computed() -> None:
    gt = [torch.tensor([cube(0), cube(30)])]
    shifted = cube(1.0)  # same size, 1 mm off → ATE 1, ASE 0
    wide = box3d_from_center_size(torch.tensor([[30.0, 0, 0]]), torch.tensor([[8.0, 4, 4]]))[0]
    preds = [(torch.tensor([shifted, wide.tolist()]), torch.tensor([0.9, 0.8]))]
    m = evaluate_3d(preds, gt, dist_thresholds_mm=(0.5, 2.0), iou_thresholds=(0.25, 0.6))
    assert m["mATE_mm"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["mASE"] == pytest.approx(0.25)  # (0 + (1 - 1/2)) / 2
    assert m["AP_dist@0.5mm"] == pytest.approx(
        average_precision(np.array([0.9, 0.8]), np.array([False, True]), 2)
    )
    assert m["AP_dist@2mm"] == 1.0
    # IoUs: shifted 3/5 = 0.6, wide 0.5
    assert m["AP_iou@0.25"] == 1.0
    assert m["AP_iou@0.6"] == pytest.approx(51 / 101)
    assert m["median_centre_error_mm"] == pytest.approx(0.5)
    assert (m["n_cases"], m["n_gt"], m["n_pred"]) == (1, 2, 2)


def test_per_nodule_table_and_missing_predictions() -> None:
    gt = [torch.tensor([cube(0)]), torch.tensor([cube(5)])]
    preds = [
        (torch.tensor([cube(3, s=2.0)]), torch.tensor([0.4])),
        (torch.zeros(0, 6), torch.zeros(0)),
    ]
    rows = per_nodule_table(preds, gt, ["a", "b"])
    assert rows[0]["case_id"] == "a" and rows[0]["hit"] is False
    assert rows[0]["centre_error_mm"] == pytest.approx(3.0)
    assert rows[0]["size_error_mm"] == pytest.approx([-2.0, -2.0, -2.0])
    assert rows[0]["score"] == pytest.approx(0.4)
    assert rows[1]["case_id"] == "b" and math.isnan(rows[1]["centre_error_mm"])


def test_evaluate_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one entry per case"):
        evaluate_3d([], [torch.zeros(0, 6)])
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        evaluate_3d([(torch.zeros(2, 6), torch.zeros(1))], [torch.zeros(0, 6)])
