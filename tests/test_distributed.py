"""Data-parallel training under torchrun: two CPU processes (gloo) stay in lock-step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import write_case, write_dataset
from mvxray.distributed import DistInfo, any_process, average_gradients, init_from_env, spawn
from mvxray.geometry import Rig, project_boxes3d


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_from_env("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.enabled
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    average_gradients([p], info)
    assert p.grad.tolist() == [1.0, 2.0, 3.0]
    assert any_process(True, info) and not any_process(False, info)


def _sum_ranks(out: Path, fail_rank: int) -> None:
    """A spawned process: join the group, all-reduce rank + 1, record what it saw."""
    rank = int(os.environ["RANK"])
    if rank == fail_rank:  # before joining: the others wait there until spawn stops them
        raise ValueError(f"rank {rank} failed on purpose")
    info = init_from_env("cpu")
    total = torch.tensor([info.rank + 1.0])
    torch.distributed.all_reduce(total)
    (out / f"rank{info.rank}.json").write_text(
        json.dumps({"world": info.world_size, "sum": float(total)})
    )


@pytest.mark.slow
def test_spawn_starts_one_job_of_processes_and_raises_their_errors(tmp_path: Path) -> None:
    spawn(_sum_ranks, 2, tmp_path, -1)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"world": 2, "sum": 3.0}] * 2
    with pytest.raises(Exception, match="rank 1 failed on purpose"):
        spawn(_sum_ranks, 2, tmp_path / "missing", 1)
    with pytest.raises(ValueError, match="processes must be >= 1, found 0"):
        spawn(_sum_ranks, 0, tmp_path, -1)


def _blob_dataset(root: Path, cases: int = 2) -> Path:
    """Bright Gaussian blobs at the projections of random 3D boxes, 64 px, 4 views."""
    rig = Rig.circular(4, 300.0, 600.0, 64, 64, 12.5)
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    names = []
    for c in range(cases):
        centres = (torch.rand(2, 3, generator=g, dtype=torch.float64) - 0.5) * 100
        boxes3d = torch.cat([centres - 15, centres + 15], -1)
        b2d, vis = project_boxes3d(boxes3d, rig.K, rig.T_cam_from_ct, 64, 64)
        images = 0.1 * torch.rand(4, 1, 64, 64, generator=g)
        for v in range(4):
            for b in b2d[v]:
                cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
                images[v, 0] += torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
        sample = MultiViewSample(
            images, rig, boxes3d, b2d.float(), vis, torch.zeros(2, dtype=torch.long), f"c{c}"
        )
        write_case(root / f"c{c}", sample, preview=False)
        names.append(f"c{c}")
    write_dataset(root, names, {"train": names, "val": [], "test": []})
    return root


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` under torchrun with 2 local processes (gloo on CPU)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from mvxray import detectors2d
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.distributed import init_from_env
    from mvxray.detectors2d.train import TrainConfig
    torch.set_num_threads(1)
    data, out = sys.argv[1], sys.argv[2]
    det = detectors2d.build("faster_rcnn", backbone="resnet18_fpn", strides=(8, 16, 32),
                            box_batch_size_per_image=32, representation_size=64,
                            rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(100, 50))
    fit = det.fit(list(MultiViewDataset(data, "train")), config=TrainConfig(
        max_iters=3, batch_size=2, warmup_iters=1, progress=False, augment=False, device="cpu"))
    info = init_from_env("cpu")
    flat = torch.cat([p.detach().reshape(-1) for p in det.module.parameters()])
    json.dump({"rank": info.rank, "world": info.world_size, "sum": float(flat.double().sum()),
               "first": flat[:8].tolist(), "iterations": fit["iterations"]},
              open(f"{out}/rank{info.rank}.json", "w"))
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_train_in_lock_step(tmp_path: Path) -> None:
    data = _blob_dataset(tmp_path / "data")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = _torchrun(
        str(script),
        str(data),
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["iterations"] for r in ranks] == [3.0, 3.0]
    # Same start (broadcast) + averaged gradients => identical weights after training,
    # although each process saw different views.
    assert ranks[0]["first"] == ranks[1]["first"]
    assert ranks[0]["sum"] == pytest.approx(ranks[1]["sum"], rel=1e-6)


LIFTER_SCRIPT = textwrap.dedent(
    """
    import atexit, json, sys, torch
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.distributed import init_from_env
    from mvxray.lifting.mv2d import MV2DLifter
    from mvxray.lifting.rayemb.encoder import EncoderConfig
    from mvxray.lifting.rayemb.model import RayEmbConfig, RayEmbModel
    from mvxray.lifting.rayemb.train import TrainConfig, ViewBank, fit_rayemb
    torch.set_num_threads(1)
    data, out = sys.argv[1], sys.argv[2]
    cases = list(MultiViewDataset(data, "train"))
    mv2d = MV2DLifter(channels=16, embed_dim=32, num_layers=2, ff_dim=64, num_heads=2, device="cpu")
    mv2d.fit(cases, max_steps=3, batch_size=1, augment=False, progress=False)
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(256, 3, generator=g, dtype=torch.float64) - 0.5) * 60
    model = RayEmbModel(RayEmbConfig(EncoderConfig(emb_dim=8, width=4, depth=2), seed=3))
    fit_rayemb(model, ViewBank(cases[0].images.float(), cases[0].rig, pts),
               TrainConfig(steps=3, queries_per_step=1, num_templates=2, points_per_query=16,
                           augment=False, max_template_angle_deg=180.0))
    info = init_from_env("cpu")
    flat = lambda m: torch.cat([p.detach().reshape(-1).double() for p in m.parameters()])
    joined = torch.distributed.is_initialized()
    atexit._run_exitfuncs()  # what exit runs first: the group must be gone before teardown
    json.dump({"mv2d": flat(mv2d.model)[:16].tolist(), "rayemb": flat(model)[:16].tolist(),
               "rank": info.rank, "joined": joined, "left": not torch.distributed.is_initialized()},
              open(f"{out}/lifters{info.rank}.json", "w"))
    """
)


@pytest.mark.slow
def test_torchrun_lifters_stay_in_lock_step(tmp_path: Path) -> None:
    data = _blob_dataset(tmp_path / "data")
    script = tmp_path / "lifters.py"
    script.write_text(LIFTER_SCRIPT)
    proc = _torchrun(
        str(script),
        str(data),
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"lifters{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1)
    # The loops joined the group themselves and leave it at exit, while Python is alive (a
    # group left to the interpreter's teardown can abort the process).
    assert [(r["joined"], r["left"]) for r in (r0, r1)] == [(True, True)] * 2
    # MV2D (DistributedDataParallel) and RayEmb (averaged gradients): same weights on both
    # processes although each drew different cases / queries.
    assert r0["mv2d"] == pytest.approx(r1["mv2d"], rel=1e-6, abs=1e-9)
    assert r0["rayemb"] == pytest.approx(r1["rayemb"], rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_train_2d_cli_under_torchrun(tmp_path: Path) -> None:
    data = _blob_dataset(tmp_path / "data")
    out = tmp_path / "model"
    proc = _torchrun(
        "-m",
        "mvxray.cli",
        "train-2d",
        "--data",
        str(data),
        "--detector",
        "faster_rcnn",
        "--out",
        str(out),
        "--iters",
        "2",
        "--batch",
        "2",
        "--crop",
        "0",
        "--warmup",
        "1",
        "--option",
        "backbone=resnet18_fpn",
        "--option",
        "representation_size=64",
        "--threads",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.pt").is_file()
    report = json.loads((out / "metrics.json").read_text())
    assert report["fit"]["iterations"] == 2.0
