"""End to end: ``mvxray train-2d`` then ``mvxray detect`` on a tiny dataset written here."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mvxray.cli import main
from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import write_case, write_dataset
from mvxray.detectors2d.io import read_detections
from mvxray.geometry import Rig


def _sample(seed: int, views: int = 2, size: int = 64) -> MultiViewSample:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images, boxes = [], []
    for _ in range(views):
        img = (
            0.5
            + 0.2 * torch.sin(2 * math.pi * yy / 20)
            + 0.03 * torch.randn(size, size, generator=g)
        )
        c = 10 + torch.rand(2, generator=g) * (size - 20)
        img = img + 0.8 * torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 8)
        images.append(img)
        boxes.append(torch.cat([c - 4, c + 4])[None])
    return MultiViewSample(
        images=torch.stack(images)[:, None].float(),
        rig=Rig.seed(size).subset(range(views)),
        boxes3d=torch.zeros(1, 6),
        boxes2d=torch.stack(boxes),
        visible2d=torch.ones(views, 1, dtype=torch.bool),
        labels=torch.zeros(1, dtype=torch.long),
        case_id=f"case{seed}",
    )


@pytest.fixture
def tiny_dataset(tmp_path):
    root = tmp_path / "data"
    names = [f"case{i}" for i in range(3)]
    for i, name in enumerate(names):
        write_case(root / name, _sample(i), preview=False)
    write_dataset(root, names, {"train": names[:2], "val": names[2:]})
    return root


@pytest.mark.parametrize(
    "detector, extra",
    [("log_blob", []), ("yolo", ["--iters", "2", "--option", "model=yolov8n.yaml", "--crop", "0"])],
)
def test_train_then_detect_writes_per_case_json(tiny_dataset, tmp_path, capsys, detector, extra):
    out = tmp_path / "model"
    argv = ["train-2d", "--data", str(tiny_dataset), "--detector", detector, "--out", str(out)]
    assert main([*argv, "--batch", "2", "--no-progress", *extra]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["detector"] == detector
    if detector == "yolo":  # whole views (--crop 0): the preset's 4 crops per view become 1
        assert torch.load(out / "last.pt", weights_only=True)["config"]["crops_per_view"] == 1
    assert report["val"]["n_gt"] == 2.0 and 0.0 <= report["val"]["recall@1fp"] <= 1.0
    det_dir = tmp_path / "dets"
    assert (
        main(
            [
                "detect",
                "--data",
                str(tiny_dataset),
                "--model",
                str(out / "model.pt"),
                "--out",
                str(det_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    files = sorted(p.name for p in det_dir.glob("case*.json"))
    assert files == ["case0.json", "case1.json", "case2.json"]
    doc = json.loads((det_dir / "case2.json").read_text())
    assert doc["case_id"] == "case2" and doc["detector"] == detector and len(doc["views"]) == 2
    dets = read_detections(det_dir / "case2.json")
    assert all(d.boxes.shape[1] == 4 and len(d.scores) == len(d) for d in dets)
    assert "3 case(s)" in capsys.readouterr().out
    metrics = json.loads((det_dir / "metrics.json").read_text())
    assert metrics["n_gt"] == 6.0 and metrics["n_images"] == 6.0  # 3 cases x 2 views x 1 box
    assert 0.0 <= metrics["recall@1fp"] <= 1.0 and set(metrics["per_view"]) == {"0", "1"}


def test_train_2d_resume_continues_the_schedule(tiny_dataset, tmp_path):
    out = tmp_path / "m"
    base = [
        "train-2d",
        "--data",
        str(tiny_dataset),
        "--detector",
        "yolo",
        "--out",
        str(out),
        "--option",
        "model=yolov8n.yaml",
        "--crop",
        "0",
        "--batch",
        "2",
        "--no-progress",
    ]
    assert main([*base, "--iters", "1"]) == 0
    assert main([*base, "--iters", "2", "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["fit"]["iterations"] == 2.0
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["iteration"] == 2


def test_cli_errors_are_one_line(tiny_dataset, tmp_path, capsys):
    assert (
        main(
            [
                "detect",
                "--data",
                str(tiny_dataset),
                "--model",
                str(tmp_path / "none.pt"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "--model" in (err := capsys.readouterr().err) and "no such file" in err
    assert (
        main(
            [
                "train-2d",
                "--data",
                str(tiny_dataset),
                "--detector",
                "rcnn",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "unknown 'rcnn'" in capsys.readouterr().err


def test_detect_scores_the_oracle_perfectly_and_loads_the_demo(tiny_dataset, tmp_path):
    out = tmp_path / "oracle"
    argv = ["detect", "--data", str(tiny_dataset), "--model", "oracle", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recall@1fp"] == 1.0 and metrics["ap50"] == 1.0
    from mvxray.cli.lift import resolve_detector

    assert resolve_detector("demo", {}).name == "heatmap"  # the shipped detector


def test_detect_multiview_wraps_the_detector(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mv"
    argv = ["detect", "--data", str(tiny_dataset), "--model", "oracle", "--out", str(out)]
    assert main([*argv, "--multiview", "--no-progress"]) == 0
    assert "3 case(s)" in capsys.readouterr().out
    doc = json.loads((out / "case0.json").read_text())
    assert doc["detector"] == "oracle+multiview" and len(doc["views"]) == 2
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 6.0


def test_train_2d_fits_the_presets_crops_per_view_to_the_batch(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    argv = ["train-2d", "--data", str(tiny_dataset), "--detector", "yolo", "--out", str(out)]
    argv += ["--iters", "1", "--option", "model=yolov8n.yaml", "--crop", "32", "--no-progress"]
    assert main([*argv, "--batch", "6", "--precision", "bf16"]) == 0  # 4 does not divide 6: 2
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert cfg["crops_per_view"] == 2 and cfg["batch_size"] == 6 and cfg["precision"] == "bf16"
    assert main([*argv, "--batch", "4", "--out", str(tmp_path / "preset")]) == 0
    cfg = torch.load(tmp_path / "preset" / "last.pt", weights_only=True)["config"]
    assert cfg["crops_per_view"] == 4 and cfg["precision"] == "auto"  # the preset's, unchanged
    assert main([*argv, "--batch", "6", "--crops-per-view", "4"]) == 1  # given: refused
    assert "crops_per_view: expected a divisor of batch_size" in capsys.readouterr().err


def test_detect_rescore_fits_saves_and_reloads_the_rescorer(two_case_dataset, tmp_path, capsys):
    argv = ["detect", "--data", str(two_case_dataset), "--model", "oracle", "--no-progress"]
    first, again = tmp_path / "fit", tmp_path / "again"
    assert (
        main([*argv, "--multiview", "--rescore", str(two_case_dataset), "--out", str(first)]) == 0
    )
    assert "rescorer fitted on" in capsys.readouterr().out
    assert (first / "rescorer.pt").is_file()
    rescorer = str(first / "rescorer.pt")
    assert main([*argv, "--multiview", "--rescore", rescorer, "--out", str(again)]) == 0
    for name in ("a.json", "b.json", "metrics.json"):  # the saved rescorer scores identically
        assert (first / name).read_text() == (again / name).read_text()
    assert json.loads((first / "metrics.json").read_text())["recall@1fp"] == 1.0
    assert main([*argv, "--rescore", rescorer, "--out", str(tmp_path / "x")]) == 1
    assert "add --multiview" in capsys.readouterr().err
    assert (
        main([*argv, "--multiview", "--rescore", str(tmp_path), "--out", str(tmp_path / "y")]) == 1
    )
    assert "no dataset.json" in capsys.readouterr().err


@pytest.mark.parametrize("detector", ["yolo", "faster_rcnn"])
def test_train_2d_starts_from_the_detectors_preset(tiny_dataset, tmp_path, detector):
    from mvxray.benchmarks.detect2d import BENCH_TRAINING

    preset, out = BENCH_TRAINING[detector], tmp_path / "preset"
    argv = ["train-2d", "--data", str(tiny_dataset), "--detector", detector, "--iters", "1"]
    argv += ["--crop", "32", "--no-progress", "--option", "input_scale=1"]
    if detector == "yolo":
        argv += ["--option", "model=yolov8n.yaml"]
    assert main([*argv, "--out", str(out)]) == 0
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    for key in ("batch_size", "warmup_iters", "lr", "crops_per_view", "precision"):
        assert cfg[key] == preset[key], key
    assert main([*argv, "--batch", "2", "--warmup", "7", "--out", str(tmp_path / "given")]) == 0
    cfg = torch.load(tmp_path / "given" / "last.pt", weights_only=True)["config"]
    assert (cfg["batch_size"], cfg["warmup_iters"], cfg["crops_per_view"]) == (2, 7, 2)


@pytest.mark.slow
def test_train_2d_trains_on_two_processes(tiny_dataset, tmp_path):
    out = tmp_path / "m"
    argv = ["train-2d", "--data", str(tiny_dataset), "--detector", "heatmap", "--out", str(out)]
    argv += ["--option", "widths=[8,16]", "--crop", "32", "--batch", "2", "--iters", "3"]
    assert main([*argv, "--procs", "2", "--threads", "2", "--no-progress"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["fit"]["processes"] == 2.0 and report["fit"]["iterations"] == 3.0
    assert (out / "model.pt").is_file()


def test_train_2d_rejects_procs_for_a_training_free_detector(tiny_dataset, tmp_path, capsys):
    argv = [
        "train-2d",
        "--data",
        str(tiny_dataset),
        "--detector",
        "log_blob",
        "--out",
        str(tmp_path),
    ]
    assert main([*argv, "--procs", "2"]) == 1
    assert "--procs: only faster_rcnn, heatmap, yolo train on several processes" in (
        capsys.readouterr().err
    )
    assert main([*argv[:3], "--detector", "heatmap", "--out", str(tmp_path), "--procs", "0"]) == 1
    assert "--procs: expected >= 1, found 0" in capsys.readouterr().err


def test_train_2d_refuses_an_option_without_a_value(tiny_dataset, tmp_path, capsys):
    argv = ["train-2d", "--data", str(tiny_dataset), "--detector", "heatmap"]
    with pytest.raises(SystemExit):  # an argparse usage error, before anything is built
        main([*argv, "--option", "widths", "--out", str(tmp_path / "o")])
    assert "option 'widths': expected key=value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
