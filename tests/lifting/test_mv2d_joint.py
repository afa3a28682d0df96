"""Joint 2D+3D training of MV2D with a torch 2D detector (shared backbone or not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mvxray import detectors2d
from mvxray.geometry import Rig
from mvxray.heads import set_loss_3d
from mvxray.lifting.mv2d import MV2DLifter
from mvxray.lifting.mv2d.inputs import collate, detections_from_truth, query_targets

from .conftest import make_scene

TINY = {"channels": 16, "embed_dim": 32, "num_layers": 2, "ff_dim": 64, "num_heads": 2}
RCNN = {
    "backbone": "resnet18_fpn",
    "strides": (8, 16, 32),
    "box_batch_size_per_image": 32,
    "representation_size": 64,
    "rpn_pre_nms_top_n": (200, 100),
    "rpn_post_nms_top_n": (100, 50),
}
TRAIN = {"batch_size": 2, "lr": 1e-3, "warmup_iters": 0, "augment": False, "progress": False}


@pytest.fixture(scope="module")
def rig() -> Rig:
    return Rig.circular(4, 300.0, 600.0, 64, 64, 4.0)


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_shared_backbone_gets_the_3d_gradient(rig: Rig) -> None:
    det = detectors2d.build("faster_rcnn", **RCNN)
    lifter = MV2DLifter(encoder="detector", detector=det, **TINY)
    assert lifter.model.encoder.detector is det.module  # one backbone, not a copy
    sample = make_scene(rig, 2, 3, blobs=True)
    inp = collate([sample], [detections_from_truth(sample)])
    preds, _ = lifter.model(inp)
    loss = set_loss_3d(
        preds[-1],
        inp.valid,
        [sample.boxes3d],
        [sample.labels],
        lifter.config.loss,
        query_targets([sample], inp),
    )["loss_3d"]
    loss.backward()
    grad = det.model.backbone.body.conv1.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert lifter.model.encoder.stride == 8.0  # the finest FPN level of this detector


def test_joint_training_trains_both_and_round_trips(rig: Rig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cases = [make_scene(rig, 2, s, spread_mm=40.0, blobs=True) for s in range(2)]
    det = detectors2d.build("faster_rcnn", **RCNN)
    before = _params(det.module)
    lifter = MV2DLifter(encoder="detector", **TINY)
    out = lifter.fit(
        cases,
        cases[:1],
        detector=det,
        joint=True,
        max_steps=6,
        joint_crop_px=None,
        out_dir=tmp_path,
        **TRAIN,
    )
    assert out["steps"] == 6 and out["loss_2d"] > 0 and torch.isfinite(torch.tensor(out["loss"]))
    assert lifter.detector is det
    assert not torch.equal(before, _params(det.module))  # the detector was trained
    assert "val_cpm" in out or any(k.startswith("val_") for k in out)
    ckpt = torch.load(tmp_path / "mv2d_last.pt", weights_only=False)
    assert len(ckpt["history_2d"]) == 6 and ckpt["detector"]["name"] == "faster_rcnn"
    # one file holds the lifter and the detector it shares
    back = MV2DLifter.load(tmp_path / "mv2d.pt")
    assert back.shares_detector and back.detector is not None
    torch.testing.assert_close(_params(back.detector.module), _params(det.module))
    sample = cases[0]
    dets = detectors2d.predict_sample(det, sample)
    again = detectors2d.predict_sample(back.detector, sample)
    for a, b in zip(dets, again):
        torch.testing.assert_close(a.boxes, b.boxes)
    truth = detections_from_truth(sample)
    torch.testing.assert_close(back.lift(sample, truth).boxes3d, lifter.lift(sample, truth).boxes3d)


def test_joint_training_with_its_own_encoder_trains_the_detector_too(rig: Rig) -> None:
    cases = [make_scene(rig, 1, s, blobs=True) for s in range(2)]
    det = detectors2d.build("faster_rcnn", **RCNN)
    before = _params(det.module)
    lifter = MV2DLifter(**TINY)  # small encoder: separate weights, one optimizer
    out = lifter.fit(cases, detector=det, joint=True, max_steps=2, joint_views=1, **TRAIN)
    assert out["loss_2d"] > 0 and not torch.equal(before, _params(det.module))
    assert "detector" not in lifter._file_state()  # not shared: the detector saves itself


def test_joint_training_errors(rig: Rig) -> None:
    cases = [make_scene(rig, 1, 0)]
    with pytest.raises(TypeError, match="torch detector"):
        MV2DLifter(**TINY).fit(cases, detector=detectors2d.build("log_blob"), joint=True)
    with pytest.raises(TypeError, match="torch detector"):
        MV2DLifter(**TINY).fit(cases, joint=True)
    shared = MV2DLifter(encoder="detector", **TINY)
    with pytest.raises(ValueError, match="give one"):
        shared.lift(cases[0], detections_from_truth(cases[0]))
    with pytest.raises(ValueError, match="joint=True"):
        shared.fit(cases, detector=detectors2d.build("faster_rcnn", **RCNN))
    with pytest.raises(TypeError, match="exposes no feature maps"):
        MV2DLifter(encoder="detector", detector=detectors2d.build("log_blob"), **TINY)
    with pytest.raises(ValueError, match="joint_views"):
        MV2DLifter(**TINY).fit(cases, joint_views=0)
