"""The oracle's degradations and the detection JSON files."""

from __future__ import annotations

import pytest
import torch

from mvxray.detectors2d import OracleDetector, predict_sample
from mvxray.detectors2d.io import read_detections, write_detections
from mvxray.geometry import ShapeError

from .conftest import blob_sample


def test_oracle_returns_the_visible_ground_truth():
    s = blob_sample(views=3, blobs=2)
    s.visible2d[1, 0] = False
    dets = predict_sample(OracleDetector(), s)
    assert [len(d) for d in dets] == [2, 1, 2]
    assert torch.equal(dets[1].boxes, s.boxes2d[1, 1:]) and (dets[0].scores == 1).all()


def test_oracle_degradations_are_seeded_and_do_what_they_say():
    s = blob_sample(views=10, blobs=2, size=128)
    none = predict_sample(OracleDetector(miss_rate=1.0), s)
    assert sum(len(d) for d in none) == 0
    dropped = predict_sample(OracleDetector(drop_view_rate=1.0, fp_per_image=3), s)
    assert sum(len(d) for d in dropped) == 0
    fp = OracleDetector(fp_per_image=2.0, fp_score_max=0.3, seed=1)
    a, b = predict_sample(fp, s), predict_sample(fp, s)
    assert all(torch.equal(x.boxes, y.boxes) for x, y in zip(a, b))
    n_fp = sum(len(d) - 2 for d in a)
    assert 5 <= n_fp <= 40  # Poisson(2) over 10 views
    assert all(float(d.scores[2:].max()) <= 0.3 for d in a if len(d) > 2)
    jit = predict_sample(OracleDetector(jitter_px=1.0), s)
    err = torch.cat([d.boxes - s.boxes2d[v] for v, d in enumerate(jit)])
    assert 0.5 < float(err.std()) < 1.5


def test_oracle_needs_ground_truth():
    with pytest.raises(RuntimeError, match="no ground truth"):
        OracleDetector().predict(torch.zeros(1, 1, 8, 8))
    det = OracleDetector()
    det.set_ground_truth(torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ShapeError, match="ground truth has 2 views, images have 3"):
        det.predict(torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="miss_rate"):
        OracleDetector(miss_rate=2.0)


def test_detections_json_round_trip(tmp_path):
    s = blob_sample(views=2)
    dets = predict_sample(OracleDetector(fp_per_image=1, seed=2), s)
    path = write_detections(tmp_path / "c.json", dets, "c", detector="oracle")
    back = read_detections(path)
    for a, b in zip(dets, back):
        assert torch.allclose(a.boxes, b.boxes) and torch.allclose(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels)
    with pytest.raises(FileNotFoundError, match="detections file not found"):
        read_detections(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="expected format 'mvxray-detections'"):
        read_detections(tmp_path / "bad.json")
