"""The heatmap (CenterNet-style) detector: targets, loss and learning faint blobs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mvxray import detectors2d
from mvxray.benchmarks.metrics2d import DetectionEvaluator
from mvxray.detectors2d.heatmap import HeatmapDetector, centernet_focal_loss, heatmap_targets
from mvxray.geometry import Rig

from .conftest import blob_sample


def test_targets_peak_at_the_centre_pixel_with_size_and_offset() -> None:
    boxes = torch.tensor([[10.0, 20.0, 16.0, 24.0], [40.0, 40.0, 41.0, 43.0], [70.0, 5, 80, 9]])
    heat, idx, log_wh, off = heatmap_targets(boxes, 50, 60, 1 / 6, 0.75)
    assert idx.tolist() == [[22, 13], [41, 40]]  # (row, col); the third centre is outside
    assert float(heat[22, 13]) == 1.0 and float(heat[41, 40]) == 1.0
    assert int((heat == 1.0).sum()) == 2 and 0.0 < float(heat[22, 14]) < 1.0
    torch.testing.assert_close(log_wh.exp(), torch.tensor([[6.0, 4.0], [1.0, 3.0]]))
    torch.testing.assert_close(off, torch.tensor([[0.0, 0.0], [0.5, 0.5]]))
    empty = heatmap_targets(torch.zeros(0, 4), 8, 8, 1 / 6, 0.75)
    assert float(empty[0].sum()) == 0.0 and empty[1].shape == (0, 2)


def test_focal_loss_prefers_the_peak_and_forgives_its_neighbours() -> None:
    heat, _, _, _ = heatmap_targets(torch.tensor([[6.0, 6.0, 10.0, 10.0]]), 16, 16, 0.5, 1.0)
    heat = heat[None, None]
    logit = torch.full_like(heat, -8.0)
    peak = logit.clone()
    peak[..., 8, 8] = 8.0
    near = logit.clone()
    near[..., 8, 9] = 8.0  # confident one pixel off the centre
    far = logit.clone()
    far[..., 1, 1] = 8.0  # confident in the background
    losses = [float(centernet_focal_loss(x, heat)) for x in (peak, near, far)]
    assert losses[0] < losses[1] < losses[2]


@pytest.mark.slow
def test_learns_faint_blobs_and_generalizes() -> None:
    """Trained on 8 two-view images of faint blobs on stripes and noise, the detector finds
    blobs (IoU ≥ 0.3) in 12 unseen images at < 1 false positive per image."""
    train = [blob_sample(seed=s, contrast=0.4) for s in range(4)]
    det = detectors2d.build("heatmap", widths=(8, 16, 32))
    fit = det.fit(train, max_iters=150, batch_size=4, lr=3e-3, warmup_iters=20, progress=False)
    assert fit["loss_final"] < 0.5 * fit["loss_initial"]
    ev = DetectionEvaluator(iou=0.3)
    for s in range(100, 106):
        sample = blob_sample(seed=s, contrast=0.4)
        ev.add_sample(detectors2d.predict_sample(det, sample), sample.boxes2d, sample.visible2d)
    recall = ev.compute()["recall@1fp"]
    assert recall >= 0.9
    # The same scenes at twice the resolution (a rig with half the pixel pitch): predict_sample
    # shows the detector the views at the scale it learned and maps its output back.
    assert (det.config.object_px_mm, det.config.filter_height) == (6.25, 64)
    ev, shift = DetectionEvaluator(iou=0.3), []
    for s in range(100, 106):
        small = blob_sample(seed=s, contrast=0.4)
        big = replace(
            small,
            images=F.interpolate(small.images, scale_factor=2, mode="bilinear"),
            rig=Rig.seed(128).subset(range(2)),
            boxes2d=2 * small.boxes2d,
        )
        found = detectors2d.predict_sample(det, big)
        assert all(tuple(d.heatmap.shape) == (128, 128) for d in found)
        ev.add_sample(found, big.boxes2d, big.visible2d)
        for d_big, d_small in zip(found, detectors2d.predict_sample(det, small)):
            c_big = (d_big.boxes[:2, :2] + d_big.boxes[:2, 2:]) / 2  # the two best indications
            c_small = d_small.boxes[:2, :2] + d_small.boxes[:2, 2:]  # their centres × 2
            shift += torch.cdist(c_small, c_big).min(1).values.tolist()
    assert ev.compute()["recall@1fp"] >= recall - 0.1
    assert float(torch.tensor(shift).median()) < 1.0  # found where they are at 64 px (128-px units)


def test_tta_makes_the_heatmap_equivariant_to_quarter_turns() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32) + torch.linspace(0, 1, 32)  # not symmetric
    turned = torch.rot90(images, 1, (-2, -1))

    def heat(det: HeatmapDetector, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([d.heatmap for d in det.predict(x)])

    det = HeatmapDetector(widths=(8, 16))
    back = torch.rot90(heat(det, turned), -1, (-2, -1))
    assert torch.allclose(back, heat(det, images), atol=1e-5)
    plain = HeatmapDetector(replace(det.config, tta=False))
    plain.model.load_state_dict(det.model.state_dict())
    back = torch.rot90(heat(plain, turned), -1, (-2, -1))
    assert float((back - heat(plain, images)).abs().max()) > 1e-3  # the net alone is not
    # non-square views average the 0° and 180° turns only
    wide = torch.rand(1, 1, 24, 40)
    assert torch.allclose(
        torch.rot90(heat(det, torch.rot90(wide, 2, (-2, -1))), 2, (-2, -1)),
        heat(det, wide),
        atol=1e-5,
    )


def test_widths_that_group_norm_cannot_split_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"multiple of 8.*\[12, 20\]"):
        detectors2d.build("heatmap", widths=(12, 16, 20))
    with pytest.raises(ValueError, match=">= 2 positive widths"):
        detectors2d.build("heatmap", widths=(16,))
    net = detectors2d.build("heatmap", widths=(4, 8, 24)).model
    assert net(torch.zeros(1, 3, 32, 32))[0].shape == (1, 1, 32, 32)
