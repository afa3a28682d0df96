"""``mvxray lift`` and ``mvxray train-3d`` on a tiny on-disk dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvxray.cli import main
from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import write_case, write_dataset
from mvxray.geometry import Rig, box3d_from_center_size, project_boxes3d


def _case(rig: Rig, seed: int) -> MultiViewSample:
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(2, 3, generator=g, dtype=torch.float64) - 0.5) * 60
    b3 = box3d_from_center_size(c, torch.full((2, 3), 8.0, dtype=torch.float64))
    b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, rig.height, rig.width)
    images = torch.rand(rig.num_views, 1, rig.height, rig.width, generator=g)
    return MultiViewSample(
        images, rig, b3, b2, vis, torch.zeros(2, dtype=torch.long), f"case{seed}"
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rig = Rig.circular(4, 300.0, 600.0, 64, 64, 4.0)
    names = [f"case{i}" for i in range(3)]
    for i, n in enumerate(names):
        write_case(root / n, _case(rig, i), preview=False)
    write_dataset(root, names, {"train": names[:2], "val": [], "test": names[2:]})
    return root


def test_lift_triangulation_with_the_oracle(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    rc = main(
        ["lift", "--data", str(dataset), "--detector", "oracle", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    doc = json.loads((out / "case2.json").read_text())
    assert doc["case_id"] == "case2" and doc["lifter"] == "triangulation"
    assert len(doc["boxes3d_ct_mm"]) == 2 and len(doc["scores"]) == 2
    assert len(doc["support"][0]) == 4
    truth = json.loads((dataset / "case2" / "case.json").read_text())["boxes3d_ct_mm"]
    pred = torch.tensor(doc["boxes3d_ct_mm"], dtype=torch.float64)
    dist = torch.cdist(torch.tensor(truth, dtype=torch.float64)[:, :3], pred[:, :3]).min(1).values
    assert float(dist.max()) < 0.05
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["median_centre_error_mm"] < 0.05 and metrics["CPM"] == 1.0
    assert "median centre error" in capsys.readouterr().out


def test_train3d_then_lift_with_the_model(dataset: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "mv2d"
    opts = [
        "--opt",
        "channels=16",
        "--opt",
        "embed_dim=32",
        "--opt",
        "num_layers=1",
        "--opt",
        "ff_dim=32",
        "--train-opt",
        "augment=false",
    ]
    rc = main(
        [
            "train-3d",
            "--data",
            str(dataset),
            "--detector",
            "oracle",
            "--lifter",
            "mv2d",
            "--out",
            str(model_dir),
            "--max-steps",
            "2",
            "--no-progress",
            *opts,
        ]
    )
    assert rc == 0
    assert (model_dir / "mv2d.pt").exists()
    assert json.loads((model_dir / "train_metrics.json").read_text())["steps"] == 2
    out = tmp_path / "pred"
    rc = main(
        [
            "lift",
            "--data",
            str(dataset),
            "--detector",
            "oracle",
            "--lifter",
            "mv2d",
            "--model",
            str(model_dir / "mv2d.pt"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert json.loads((out / "case2.json").read_text())["lifter"] == "mv2d"


def test_errors_are_one_line(dataset: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["lift", "--data", str(dataset), "--detector", "nope.pt", "--out", str(tmp_path)]) == 1
    )
    assert "no such file" in capsys.readouterr().err
    assert (
        main(
            [
                "lift",
                "--data",
                str(dataset),
                "--detector",
                "oracle",
                "--lifter",
                "mv2d",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "needs --model" in capsys.readouterr().err
    assert (
        main(
            [
                "train-3d",
                "--data",
                str(dataset),
                "--lifter",
                "triangulation",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "not trainable" in capsys.readouterr().err


def test_train3d_rayemb_then_lift(dataset: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "rayemb"
    rc = main(
        [
            "train-3d",
            "--data",
            str(dataset),
            "--detector",
            "oracle",
            "--lifter",
            "rayemb",
            "--out",
            str(model_dir),
            "--device",
            "cpu",
            "--no-progress",
            "--train-opt",
            "steps=2",
            "--train-opt",
            "num_templates=2",
            "--train-opt",
            "augment=false",
            "--train-opt",
            "points_per_query=16",
            "--train-opt",
            "max_template_angle_deg=180",
        ]
    )
    assert rc == 0
    assert (model_dir / "rayemb.pt").is_file()
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert metrics["loss_first"] > 0
    out = tmp_path / "pred"
    rc = main(
        [
            "lift",
            "--data",
            str(dataset),
            "--detector",
            "oracle",
            "--lifter",
            "rayemb",
            "--model",
            str(model_dir / "rayemb.pt"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert json.loads((out / "case2.json").read_text())["lifter"] == "rayemb"


def test_train3d_voting_fpr_then_lift(dataset: Path, tmp_path: Path, capsys) -> None:
    model_dir, out = tmp_path / "fpr", tmp_path / "pred"
    argv = ["train-3d", "--data", str(dataset), "--detector", "oracle", "--lifter", "voting_fpr"]
    argv += ["--device", "cpu"]  # --device is every trainable lifter's flag, not only mv2d's
    assert main([*argv, "--out", str(model_dir), "--no-progress", "--opt", "hidden=0"]) == 0
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert metrics["positives"] == 4 and metrics["candidates"] > 4  # 2 cases x 2 boxes
    argv = ["lift", "--data", str(dataset), "--detector", "oracle", "--lifter", "voting_fpr"]
    argv += ["--model", str(model_dir / "voting_fpr.pt"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((out / "case2.json").read_text())
    assert doc["lifter"] == "voting_fpr" and doc["scores"] == sorted(doc["scores"], reverse=True)
    truth = json.loads((dataset / "case2" / "case.json").read_text())["boxes3d_ct_mm"]
    top2 = torch.tensor(doc["boxes3d_ct_mm"][:2], dtype=torch.float64)
    t = torch.tensor(truth, dtype=torch.float64)
    dist = torch.cdist((t[:, :3] + t[:, 3:]) / 2, (top2[:, :3] + top2[:, 3:]) / 2).min(1).values
    assert float(dist.max()) < 2.0  # the oracle's two boxes are the two best candidates
    other = [*argv, "--detector-opt", "fp_per_image=2.0"]  # another detector's output
    assert main(other) == 1
    assert "fitted on the output of detector oracle:" in capsys.readouterr().err


def test_train3d_joint_shares_the_backbone_then_lifts(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "joint"
    small = ["channels=16", "embed_dim=32", "num_layers=1", "ff_dim=32", "encoder=detector"]
    rcnn = ["backbone=resnet18_fpn", "strides=[8, 16, 32]", "representation_size=64"]
    argv = ["train-3d", "--data", str(dataset), "--detector", "faster_rcnn", "--joint"]
    argv += ["--out", str(model_dir), "--max-steps", "2", "--no-progress", "--val-split", ""]
    argv += [a for o in small for a in ("--opt", o)] + ["--train-opt", "augment=false"]
    argv += [a for o in rcnn for a in ("--detector-opt", o)]
    assert main(argv) == 0
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["loss_2d"] > 0
    assert (
        torch.load(model_dir / "mv2d.pt", weights_only=False)["detector"]["name"] == "faster_rcnn"
    )
    out = tmp_path / "pred"
    argv = ["lift", "--data", str(dataset), "--detector", str(model_dir / "detector.pt")]
    argv += ["--lifter", "mv2d", "--model", str(model_dir / "mv2d.pt"), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert json.loads((out / "case2.json").read_text())["lifter"] == "mv2d"
    argv = ["train-3d", "--data", str(dataset), "--lifter", "rayemb", "--joint", "--out", str(out)]
    assert main(argv) == 1
    assert "only mv2d" in capsys.readouterr().err
