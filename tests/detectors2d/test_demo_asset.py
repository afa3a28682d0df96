"""The demo detector shipped in mvxray/assets/ loads and runs."""

from __future__ import annotations

import json

import pytest
import torch

from mvxray.detectors2d import HeatmapDetector, train_demo
from mvxray.paths import assets_dir

from .conftest import blob_sample


def test_shipped_demo_detector_loads_and_predicts():
    path = assets_dir() / train_demo.DEMO_DETECTOR
    assert path.stat().st_size <= 20e6
    det = train_demo.load_demo_detector()
    assert isinstance(det, HeatmapDetector)
    dets = det.predict(blob_sample(views=2, size=256).images)
    assert len(dets) == 2 and all(d.boxes.shape[1] == 4 for d in dets)
    report = json.loads((assets_dir() / train_demo.DEMO_METRICS).read_text())
    assert 0.0 <= report["test"]["recall@1fp"] <= 1.0


def test_missing_demo_detector_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr("mvxray.paths.assets_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python -m mvxray\.detectors2d\.train_demo"):
        train_demo.load_demo_detector()


def test_demo_detector_has_no_effect_on_flat_views():
    det = train_demo.load_demo_detector()
    assert all(len(d) == 0 for d in det.predict(torch.zeros(2, 1, 256, 256)))
