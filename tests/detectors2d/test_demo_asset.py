"""The demo detector shipped in mvxray/assets/ loads and runs."""

from __future__ import annotations

import json

import pytest
import torch

from mvxray.detectors2d import HeatmapDetector, load, train_demo
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


def _tiny_dataset(root, seeds):
    from mvxray.datasets.format import write_case, write_dataset

    names = [f"case_{s}" for s in seeds]
    for name, s in zip(names, seeds):
        write_case(root / name, blob_sample(views=2, size=64, seed=s), preview=False)
    write_dataset(root, names, {"train": names[:-1], "test": names[-1:]})
    return root


def test_train_demo_fine_tunes_a_saved_detector_on_several_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("MVXRAY_CACHE", str(tmp_path / "cache"))
    init = HeatmapDetector(widths=(8, 16), input_size=None)
    init.save(tmp_path / "init.pt")
    data = [_tiny_dataset(tmp_path / "a", [0, 1]), _tiny_dataset(tmp_path / "b", [2, 3, 4])]
    out = tmp_path / "out" / "det.pt"
    argv = ["--init", str(tmp_path / "init.pt"), "--data", *map(str, data)]
    argv += ["--minutes", "0.01", "--lr", "5e-4", "--blur-px", "0.8", "--threads", "1"]
    argv += ["--out", str(out)]
    assert train_demo.main(argv) == 0

    det = load(out)
    assert det.config.widths == (8, 16)  # the init's network, not a fresh benchmark one
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(det.model.state_dict().values(), init.model.state_dict().values())
    )
    assert changed
    report = json.loads((out.parent / train_demo.DEMO_METRICS).read_text())
    assert report["config"]["widths"] == [8, 16]
    assert report["training"]["init"] == str(tmp_path / "init.pt")
    assert report["training"]["lr"] == 5e-4
    assert report["training"]["blur_px"] == 0.8
    assert report["training"]["crops_per_view"] == 1  # the shipped detector's recipe
    assert [d["train_cases"] for d in report["data"]] == [["case_0"], ["case_2", "case_3"]]
    assert [d["test_cases"] for d in report["data"]] == [["case_1"], ["case_4"]]


def test_train_demo_from_scratch_uses_the_shipped_recipe_not_the_benchmark_preset(
    tmp_path, monkeypatch
):
    from mvxray.benchmarks.detect2d import BENCH_DETECTORS, BENCH_TRAINING

    monkeypatch.setenv("MVXRAY_CACHE", str(tmp_path / "cache"))
    data = _tiny_dataset(tmp_path / "a", [0, 1])
    out = tmp_path / "out" / "det.pt"
    argv = ["--data", str(data), "--minutes", "0.01", "--threads", "1", "--out", str(out)]
    assert train_demo.main(argv) == 0

    shipped = json.loads((assets_dir() / train_demo.DEMO_METRICS).read_text())
    assert load(out).config.widths == tuple(shipped["config"]["widths"]) == (16, 32, 64, 128, 256)
    assert BENCH_DETECTORS["heatmap"]["widths"] != (16, 32, 64, 128, 256)
    report = json.loads((out.parent / train_demo.DEMO_METRICS).read_text())
    assert report["training"]["crops_per_view"] == 1 != BENCH_TRAINING["heatmap"]["crops_per_view"]
    assert report["training"]["precision"] == "fp32"


def test_train_demo_refuses_an_init_of_another_detector(tmp_path, monkeypatch):
    monkeypatch.setenv("MVXRAY_CACHE", str(tmp_path / "cache"))
    HeatmapDetector(widths=(8, 16)).save(tmp_path / "init.pt")
    data = _tiny_dataset(tmp_path / "a", [0, 1])
    argv = ["--detector", "yolo", "--init", str(tmp_path / "init.pt"), "--data", str(data)]
    with pytest.raises(ValueError, match="a heatmap detector, not yolo"):
        train_demo.main([*argv, "--minutes", "0.01", "--out", str(tmp_path / "d.pt")])
