"""mTRE, GFR and landmark error, hand-computed."""

from __future__ import annotations

import math

import pytest
import torch

from mvxray.geometry import ShapeError
from mvxray.registration.metrics import landmark_error_px, mtre, summarize


def test_mtre_of_a_rotation_about_the_origin():
    # 90 degrees about z moves (10,0,0) to (0,10,0): |d| = 10 sqrt(2); the origin does not move.
    T = torch.eye(4, dtype=torch.float64)
    R = T.clone()
    R[:2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    pts = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(mtre(R, T, pts)) == pytest.approx(10 * math.sqrt(2) / 2)


def test_mtre_is_batched():
    T = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    S = T.clone()
    S[:, 2, 3] = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    assert mtre(S, T, torch.zeros(2, 3, dtype=torch.float64)).tolist() == [0.0, 1.0, 4.0]


def test_summarize_percentiles_and_failure_rates():
    s = summarize([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 30.0])
    # numpy-style linear interpolation: p25 at rank 1.75 -> 2.75, p50 at 3.5 -> 5.0
    assert s["p25"] == pytest.approx(2.75)
    assert s["p50"] == pytest.approx(5.0)
    assert s["p95"] == pytest.approx(12.0 + 0.65 * 18.0)
    assert s["gfr@10"] == pytest.approx(25.0)
    assert s["gfr@5"] == pytest.approx(50.0)
    assert s["n"] == 8


def test_summarize_counts_non_finite_as_failures():
    s = summarize([1.0, float("nan")])
    assert s["gfr@10"] == 50.0


def test_landmark_error_and_errors():
    assert landmark_error_px(
        torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    ).tolist() == [5.0, 0.0]
    with pytest.raises(ShapeError, match="uv_gt"):
        landmark_error_px(torch.zeros(2, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="empty"):
        summarize([])
