"""The ``rayemb`` lifting head: protocol, edge cases, oracle detections."""

from __future__ import annotations

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, box3d_center_size, project_boxes3d
from mvxray.lifting.base import Lifter
from mvxray.lifting.rayemb.encoder import EncoderConfig
from mvxray.lifting.rayemb.lifter import RayEmbLifter, RayEmbLifterConfig
from mvxray.lifting.rayemb.model import RayEmbConfig

TINY = RayEmbConfig(EncoderConfig(emb_dim=8, width=4, depth=2))


def _sample(boxes3d: torch.Tensor, views: int = 4) -> MultiViewSample:
    rig = Rig.circular(views, 400.0, 800.0, 32, 32, 10.0, arc_deg=180.0)
    b2, vis = project_boxes3d(boxes3d.double(), rig.K, rig.T_cam_from_ct, 32, 32)
    g = torch.Generator().manual_seed(0)
    return MultiViewSample(
        torch.rand(views, 1, 32, 32, generator=g),
        rig,
        boxes3d.float(),
        b2.float(),
        vis,
        torch.zeros(boxes3d.shape[0], dtype=torch.long),
    )


def test_conforms_to_the_lifter_protocol():
    assert isinstance(RayEmbLifter(RayEmbLifterConfig(model=TINY)), Lifter)
    assert RayEmbLifter.name == "rayemb"


def test_empty_detections_give_empty_result_and_wrong_count_raises():
    s = _sample(torch.tensor([[-10.0, -10.0, -10.0, 10.0, 10.0, 10.0]]))
    lifter = RayEmbLifter(RayEmbLifterConfig(model=TINY))
    out = lifter.lift(s, [Detections2D.empty() for _ in range(4)])
    assert out.boxes3d.shape == (0, 6) and out.support.shape == (0, 4)
    with pytest.raises(ValueError, match="one per view"):
        lifter.lift(s, [Detections2D.empty()])


def test_oracle_detections_are_lifted_near_the_truth():
    truth = torch.tensor(
        [[20.0, -30.0, 10.0, 44.0, -6.0, 34.0], [-60.0, 20.0, -40.0, -40.0, 40.0, -20.0]]
    )
    s = _sample(truth)
    dets = [
        Detections2D(s.boxes2d[v], torch.ones(2), torch.zeros(2, dtype=torch.long))
        for v in range(4)
    ]
    # Untrained embedding: the cross-view box consistency term carries the depth here.
    lifter = RayEmbLifter(RayEmbLifterConfig(model=TINY, geometric_weight=2.0, depth_samples=128))
    out = lifter.lift(s, dets)
    assert len(out) == 2 and out.support.all()
    c_out, size_out = box3d_center_size(out.boxes3d.double())
    c_true, size_true = box3d_center_size(truth.double())
    d = torch.cdist(c_out, c_true)
    assert float(d.min(1).values.max()) < 6.0  # each lifted centre within 6 mm of a true one
    assert torch.allclose(size_out.sort(0).values, size_true.sort(0).values, atol=8.0)
    assert bool(((out.scores >= 0) & (out.scores <= 1)).all())


def test_save_load(tmp_path):
    lifter = RayEmbLifter(RayEmbLifterConfig(model=TINY))
    lifter.save(tmp_path / "rayemb.pt")
    again = RayEmbLifter.load(tmp_path / "rayemb.pt")
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(lifter.model.embed(x), again.model.embed(x))


def test_fit_on_samples_runs_and_lowers_loss():
    truth = torch.tensor([[-10.0, -10.0, -10.0, 10.0, 10.0, 10.0]])
    samples = [_sample(truth, views=6)]
    samples[0].images[:, :, 8:24, 8:24] += 2.0  # an "object" brighter than the background
    lifter = RayEmbLifter(RayEmbLifterConfig(model=TINY))
    out = lifter.fit(samples, steps=30, num_templates=3, points_per_query=16, lr=1e-2)
    assert out["loss_last"] < out["loss_first"]
