"""The training-step benchmark runs end to end on tiny sizes and ends with one JSON line."""

from __future__ import annotations

import json

import pytest

from mvxray.benchmarks.train_step import main, noise_cases


def test_noise_cases_are_valid_samples_with_boxes_inside_the_views() -> None:
    cases = noise_cases(2, 64)
    assert len(cases) == 2 and cases[0].images.shape == (10, 1, 64, 64)
    boxes = cases[1].boxes2d
    assert float(boxes.min()) >= 16 and float(boxes.max()) <= 64 - 32 + 14  # corner ≤ size - 32
    assert bool(((boxes[..., 2:] - boxes[..., :2]) >= 6).all())


@pytest.mark.slow
def test_benchmark_main_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--detectors", "faster_rcnn", "--steps", "1", "--size", "64", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])["results"]
    assert [r["variant"].split(",")[0] for r in rows] == [
        "reference (1 crop per view",
        "4 crops per view",
        "4 crops per view",
        "4 crops per view",
    ]
    assert rows[0]["speedup"] == 1.0
    assert all(r["s_per_step"] > 0 for r in rows)
    assert all(r["speedup"] == pytest.approx(rows[0]["s_per_step"] / r["s_per_step"]) for r in rows)
    assert sum(line.startswith("| faster_rcnn") for line in out) == 4  # the table came first
