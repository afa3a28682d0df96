"""YOLO's auxiliary heat loss (``YoloConfig.aux_heat_weight``)."""

import pytest
import torch
import torch.nn.functional as F

from mvxray.detectors2d.heatmap import heat_loss
from mvxray.detectors2d.multiview import MultiViewDetector
from mvxray.detectors2d.yolo import YoloDetector


def test_aux_heat_loss_adds_the_weighted_heatmap_loss_and_trains_its_head(tmp_path) -> None:
    torch.manual_seed(0)
    det = YoloDetector(model="yolov8n.yaml", aux_heat_weight=2.0)
    plain = YoloDetector(model="yolov8n.yaml")
    plain.model.load_state_dict(det.model.state_dict(), strict=False)  # same weights, no aux head
    x = torch.rand(2, 3, 64, 64)
    boxes = [torch.tensor([[20.0, 20, 30, 30]]), torch.tensor([[40.0, 8, 50, 20], [5, 5, 12, 12]])]
    det.model.train(), plain.model.train()
    finest = {}
    det.model.model[det.model.model[-1].f[0]].register_forward_hook(
        lambda m, i, o: finest.__setitem__("features", o)
    )

    loss = det.training_loss(x, boxes)
    logits = F.interpolate(det.model.aux_head(finest["features"]), (64, 64), mode="bilinear")
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
    assert not det._features  # neither training nor inference keeps a feature map
    assert again.config.aux_heat_weight == 2.0 and hasattr(again.model, "aux_head")


def test_the_aux_heads_centre_probabilities_come_with_the_boxes_at_the_views_pixels() -> None:
    torch.manual_seed(0)
    det = YoloDetector(model="yolov8n.yaml", aux_heat_weight=1.0, input_scale=2.0)
    views = torch.rand(2, 1, 40, 56) * 1000  # x2 = 80 x 112, padded to 96 x 128 for YOLO
    got = det.predict(views)

    finest = {}
    det.model.model[det.model.model[-1].f[0]].register_forward_hook(
        lambda m, i, o: finest.__setitem__("features", o)
    )
    x, _ = det.prepare(views)
    with torch.no_grad():
        det.model(F.pad(x, (0, 16, 0, 16)))
        logits = F.interpolate(det.model.aux_head(finest["features"]), (96, 128), mode="bilinear")
    expected = F.interpolate(torch.sigmoid(logits)[:, :, :80, :112], (40, 56), mode="bilinear")
    for v, d in enumerate(got):
        assert d.heatmap.shape == (40, 56)
        torch.testing.assert_close(d.heatmap, expected[v, 0], atol=1e-5, rtol=0)
        assert 0 <= float(d.heatmap.min()) and float(d.heatmap.max()) <= 1
    # the multi-view wrapper's copy with a lower threshold shares the network and its heatmap
    relaxed = MultiViewDetector(det)._relaxed_base()
    torch.testing.assert_close(relaxed.predict(views)[1].heatmap, got[1].heatmap)
    assert YoloDetector(model="yolov8n.yaml").predict(views)[0].heatmap is None


def test_aux_heat_weight_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="aux_heat_weight: expected >= 0, found -1"):
        YoloDetector(model="yolov8n.yaml", aux_heat_weight=-1.0)
