"""Every lifter in LIFTERS follows the Lifter protocol and the Lifted3D contract."""

from __future__ import annotations

import pytest
import torch

from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig
from mvxray.lifting import LIFTERS, TRAINABLE, Lifted3D, Lifter, TrainableLifter, build, load

from .conftest import make_scene, oracle_detections

#: Small configurations so the conformance run is quick (untrained where a lifter learns).
QUICK = {
    "triangulation": {},
    "voting": {"region_mm": (-40.0, -40.0, -40.0, 40.0, 40.0, 40.0)},
    "voting_fpr": {"region_mm": (-40.0, -40.0, -40.0, 40.0, 40.0, 40.0)},
    "mv2d": {
        "channels": 16,
        "embed_dim": 32,
        "num_layers": 1,
        "ff_dim": 32,
        "num_heads": 2,
        "score_threshold": 0.0,
    },
}


@pytest.mark.parametrize("name", sorted(LIFTERS))
def test_factory_builds_a_lifter(name: str) -> None:
    lifter = build(name, **QUICK.get(name, {}))
    assert isinstance(lifter, Lifter)
    if name in TRAINABLE:
        assert isinstance(lifter, TrainableLifter)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_lifted3d_contract(name: str) -> None:
    rig = Rig.circular(5, 300.0, 600.0, 64, 64, 4.0, arc_deg=180.0)
    sample = make_scene(rig, 2, 1, spread_mm=30.0, blobs=True)
    lifter = build(name, **QUICK[name])
    out = lifter.lift(sample, oracle_detections(sample))
    assert isinstance(out, Lifted3D)
    M = len(out)
    assert M >= 1
    assert out.boxes3d.shape == (M, 6) and out.boxes3d.is_floating_point()
    assert bool((out.boxes3d[:, 3:] >= out.boxes3d[:, :3]).all())
    assert out.scores.shape == (M,) and bool(((out.scores >= 0) & (out.scores <= 1)).all())
    assert bool((out.scores[:-1] >= out.scores[1:]).all())
    assert out.support.shape == (M, 5) and out.support.dtype == torch.bool
    empty = lifter.lift(sample, [Detections2D.empty() for _ in range(5)])
    assert empty.boxes3d.shape == (0, 6) and empty.support.shape == (0, 5)


def test_unknown_names() -> None:
    with pytest.raises(KeyError, match="unknown"):
        build("petr")
    with pytest.raises(KeyError, match="nothing to load"):
        load("triangulation", "x.pt")
    with pytest.raises(FileNotFoundError, match="no saved mv2d"):
        load("mv2d", "/nonexistent/mv2d.pt")
