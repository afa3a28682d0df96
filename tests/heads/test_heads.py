"""Box head, Hungarian matching and set losses."""

from __future__ import annotations

import pytest
import torch

from mvxray.geometry import ShapeError
from mvxray.heads import (
    Box3DHead,
    Box3DHeadConfig,
    Box3DPrediction,
    LossConfig,
    box_regression_cost,
    hungarian_match,
    set_loss_3d,
    total_loss,
)


@pytest.mark.parametrize("batch", [(), (1,), (3,)])
def test_head_shapes_and_initial_boxes_are_the_priors(batch: tuple[int, ...]) -> None:
    head = Box3DHead(Box3DHeadConfig(embed_dim=16, num_classes=2))
    ref = torch.randn(*batch, 4, 3) * 50
    prior = torch.rand(*batch, 4, 3) + 1
    p = head(torch.randn(*batch, 4, 16), ref, prior)
    assert p.logits.shape == (*batch, 4, 2)
    # zero-initialized regression: centre = reference point, size = prior
    torch.testing.assert_close(p.centre, ref)
    torch.testing.assert_close(p.size, prior)
    assert p.boxes3d.shape == (*batch, 4, 6)
    # focal prior: initial foreground probability 0.01
    prior_p = torch.sigmoid(head.cls_branch[-1].bias)
    torch.testing.assert_close(prior_p, torch.full((2,), 0.01), atol=1e-4, rtol=0)
    assert p.scores.shape == (*batch, 4)


def test_head_rejects_wrong_width() -> None:
    head = Box3DHead(Box3DHeadConfig(embed_dim=16))
    with pytest.raises(ShapeError, match="queries"):
        head(torch.zeros(3, 8), torch.zeros(3, 3), torch.ones(3, 3))


def test_regression_cost_hand_computed() -> None:
    # centre offset (3, 0, 4) mm in units of 2 mm -> 3.5; size 2 vs 2*e per axis -> 3 * 1
    gt = torch.tensor([[2.0 - torch.e, -torch.e, 4 - torch.e, 2 + torch.e, torch.e, 4 + torch.e]])
    gt[0, 0] += 1.0
    gt[0, 3] += 1.0
    cost = box_regression_cost(torch.zeros(1, 3), torch.full((1, 3), 2.0), gt, 2.0)
    torch.testing.assert_close(cost, torch.tensor([[3.5 + 3.0]]))


def test_hungarian_finds_global_optimum_not_greedy() -> None:
    # greedy on row 0 would take gt 0 (cost 1) and force row 1 onto gt 1 (cost 10): total 11;
    # the optimum is (0 -> 1, 1 -> 0) with total 2 + 2 = 4.
    gt = torch.tensor([[0.0, -1, -1, 2, 1, 1], [2.0, -1, -1, 4, 1, 1]])  # centres x = 1, 3
    centre = torch.tensor([[2.0, 0, 0], [-1.0, 0, 0]])
    size = torch.full((2, 3), 2.0)
    q, g = hungarian_match(torch.zeros(2, 1), centre, size, gt, torch.zeros(2).long(), 1.0, 0.0)
    assert sorted(zip(q.tolist(), g.tolist())) == [(0, 1), (1, 0)]


def test_hungarian_respects_valid_and_empty() -> None:
    gt = torch.tensor([[0.0, 0, 0, 1, 1, 1]])
    centre = torch.tensor([[0.5, 0.5, 0.5], [9.0, 9, 9]])
    q, g = hungarian_match(
        torch.zeros(2, 1),
        centre,
        torch.ones(2, 3),
        gt,
        torch.zeros(1).long(),
        1.0,
        valid=torch.tensor([False, True]),
    )
    assert q.tolist() == [1] and g.tolist() == [0]
    q, g = hungarian_match(
        torch.zeros(2, 1), centre, torch.ones(2, 3), gt[:0], torch.zeros(0).long(), 1.0
    )
    assert q.numel() == 0 and g.numel() == 0
    with pytest.raises(ShapeError, match="gt_labels"):
        hungarian_match(torch.zeros(2, 1), centre, torch.ones(2, 3), gt, torch.zeros(2).long(), 1.0)


def test_set_loss_hand_computed() -> None:
    # one sample, 2 queries, 1 gt; query 0 is exact, query 1 far -> matched to query 0
    gt = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    pred = Box3DPrediction(
        logits=torch.tensor([[[0.0], [0.0]]]),
        centre=torch.tensor([[[1.0, 1.0, 1.5], [50.0, 0, 0]]]),
        size=torch.tensor([[[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]]),
    )
    cfg = LossConfig(offset_scale_mm=0.5)
    out = set_loss_3d(pred, torch.ones(1, 2, dtype=torch.bool), [gt], [torch.zeros(1).long()], cfg)
    assert int(out["num_matched"]) == 1
    torch.testing.assert_close(out["reg"], torch.tensor(1.0))  # 0.5 mm / 0.5 mm
    # focal at p = 0.5: positive alpha*0.25*ln2, negative (1-alpha)*0.25*ln2
    ln2 = torch.log(torch.tensor(2.0))
    expected_cls = (0.25 * 0.25 * ln2 + 0.75 * 0.25 * ln2) / 1
    torch.testing.assert_close(out["cls"], expected_cls)
    torch.testing.assert_close(out["loss_3d"], 0.25 * expected_cls + 1.0)
    torch.testing.assert_close(total_loss(out["loss_3d"], 0.5, cfg), 0.5 + 0.1 * out["loss_3d"])


def test_set_loss_ignores_padding_and_handles_no_gt() -> None:
    pred = Box3DPrediction(torch.zeros(2, 3, 1), torch.zeros(2, 3, 3), torch.ones(2, 3, 3))
    valid = torch.tensor([[True, False, False], [False, False, False]])
    out = set_loss_3d(pred, valid, [torch.zeros(0, 6)] * 2, [torch.zeros(0).long()] * 2)
    ln2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(out["cls"], 0.75 * 0.25 * ln2)  # one valid negative query
    assert float(out["reg"]) == 0.0


def test_set_loss_gradient_decreases_loss() -> None:
    torch.manual_seed(0)
    head = Box3DHead(Box3DHeadConfig(embed_dim=8, offset_scale_mm=5.0))
    q = torch.randn(2, 4, 8)
    ref = torch.randn(2, 4, 3) * 5
    prior = torch.full((2, 4, 3), 3.0)
    gts = [torch.tensor([[0.0, 0, 0, 4, 4, 4]]), torch.tensor([[-5.0, 0, 0, -1, 2, 2]])]
    labels = [torch.zeros(1).long()] * 2
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = set_loss_3d(
            head(q, ref, prior),
            torch.ones(2, 4, dtype=torch.bool),
            gts,
            labels,
            LossConfig(offset_scale_mm=5.0),
        )
        opt.zero_grad()
        out["loss_3d"].backward()
        opt.step()
        losses.append(float(out["loss_3d"].detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_one_to_many_regression_hand_computed() -> None:
    gt = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    pred = Box3DPrediction(
        logits=torch.zeros(1, 3, 1),
        centre=torch.tensor([[[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [9.0, 9, 9]]]),
        size=torch.full((1, 3, 3), 2.0),
    )
    targets = torch.tensor([[0, 0, -1]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    cfg = LossConfig(offset_scale_mm=1.0, w_one_to_many=2.0)
    out = set_loss_3d(pred, valid, [gt], [torch.zeros(1).long()], cfg, targets)
    # queries 0 and 1 belong to gt 0: L1 = 0 and 1 → mean 0.5
    torch.testing.assert_close(out["reg_o2m"], torch.tensor(0.5))
    torch.testing.assert_close(out["loss_3d"], 0.25 * out["cls"] + out["reg"] + 2.0 * 0.5)
    off = set_loss_3d(
        pred, valid, [gt], [torch.zeros(1).long()], LossConfig(offset_scale_mm=1.0), targets
    )
    assert float(off["reg_o2m"]) == 0.0
