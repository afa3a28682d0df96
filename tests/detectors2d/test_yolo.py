"""YOLO's auxiliary heat loss (``YoloConfig.aux_heat_weight``)."""

import pytest
import torch
import torch.nn.functional as F

from mvxray.detectors2d.heatmap import heat_loss
from mvxray.detectors2d.yolo import YoloDetector


def test_aux_heat_loss_adds_the_weighted_heatmap_loss_and_trains_its_head(tmp_path) -> None:
    torch.manual_seed(0)
    det = YoloDetector(model="yolov8n.yaml", aux_heat_weight=2.0)
    plain = YoloDetector(model="yolov8n.yaml")
    plain.model.load_state_dict(det.model.state_dict(), strict=False)  # same weights, no aux head
    x = torch.rand(2, 3, 64, 64)
    boxes = [torch.tensor([[20.0, 20, 30, 30]]), torch.tensor([[40.0, 8, 50, 20], [5, 5, 12, 12]])]
    det.model.train(), plain.model.train()

    loss = det.training_loss(x, boxes)
    logits = F.interpolate(det.model.aux_head(det._finest), (64, 64), mode="bilinear")
    aux = heat_loss(logits, boxes, 1 / 6, 0.75)
    assert aux.item() > 0.1
    assert loss.item() == pytest.approx(
        (plain.training_loss(x, boxes) + 2.0 * 2 * aux).item(), rel=1e-5
    )

    loss.backward()
    assert float(det.model.aux_head[0].weight.grad.abs().sum()) > 0

    det.model.eval()
    det.save(tmp_path / "yolo.pt")
    again = YoloDetector.load(tmp_path / "yolo.pt")
    view = torch.rand(1, 1, 64, 64)
    a, b = det.predict(view)[0], again.predict(view)[0]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    assert det._finest is None  # inference keeps no feature map for the head
    assert again.config.aux_heat_weight == 2.0 and hasattr(again.model, "aux_head")


def test_aux_heat_weight_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="aux_heat_weight: expected >= 0, found -1"):
        YoloDetector(model="yolov8n.yaml", aux_heat_weight=-1.0)
