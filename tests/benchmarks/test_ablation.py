"""The ablation runner on a tiny hand-made dataset: cells, resume, report, grids from TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvxray.benchmarks.ablation import GridConfig, Runner, load_grid, read_results, view_subset
from mvxray.benchmarks.report import markdown_table
from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import write_case, write_dataset
from mvxray.geometry import Rig, project_boxes3d


def _tiny_dataset(root: Path, cases: int = 3) -> Path:
    rig = Rig.circular(6, 300.0, 600.0, 64, 64, 12.5)
    g = torch.Generator().manual_seed(0)
    names = []
    for c in range(cases):
        centres = (torch.rand(2, 3, generator=g, dtype=torch.float64) - 0.5) * 80
        boxes3d = torch.cat([centres - 6, centres + 6], -1)
        b2d, vis = project_boxes3d(boxes3d, rig.K, rig.T_cam_from_ct, 64, 64)
        sample = MultiViewSample(
            torch.rand(6, 1, 64, 64, generator=g),
            rig,
            boxes3d,
            b2d.float(),
            vis,
            torch.zeros(2, dtype=torch.long),
            f"c{c}",
        )
        write_case(root / f"c{c}", sample, preview=False)
        names.append(f"c{c}")
    write_dataset(root, names, {"train": names[:1], "val": [], "test": names[1:]})
    return root


def test_view_subset_spreads_views() -> None:
    assert view_subset(10, 2) == [0, 5]
    assert view_subset(10, 5) == [0, 2, 4, 6, 8]
    assert view_subset(6, 6) == list(range(6))
    with pytest.raises(ValueError, match=r"views: expected 1\.\.10, found 11"):
        view_subset(10, 11)


def test_runner_runs_cells_and_resumes(tmp_path: Path) -> None:
    data = _tiny_dataset(tmp_path / "data")
    grid = GridConfig(detectors=("oracle",), lifters=("triangulation",), views=(2, 6))
    out = tmp_path / "bench"
    rows = Runner(grid, out, data=data, progress=False).run()
    assert [r["views"] for r in rows] == [2, 6]
    for r in rows:
        for key in (
            "detector",
            "lifter",
            "views",
            "size",
            "recall2d",
            "sensitivity_at_1fp",
            "cpm",
            "median_center_error_mm",
            "p95_center_error_mm",
            "train_s",
            "infer_s",
        ):
            assert key in r
        assert r["size"] == 64
        assert r["n_cases"] == 2 and r["n_gt"] == 4
        # exact ground-truth boxes in 2 or 6 views: every nodule found, sub-mm centres
        assert r["recall2d"] == pytest.approx(1.0)
        assert r["sensitivity_at_1fp"] == pytest.approx(1.0)
        assert r["median_center_error_mm"] < 0.5
    assert len(read_results(out / "results.jsonl")) == 2
    md = (out / "results.md").read_text()
    assert md.count("| oracle | triangulation |") == 2
    for png in ("froc.png", "errors.png", "error_vs_views.png"):
        assert (out / png).stat().st_size > 5_000
    # A rerun skips both cells; a torn last line (killed mid-write) is ignored.
    with open(out / "results.jsonl", "a") as f:
        f.write('{"key": "torn')
    assert Runner(grid, out, data=data, progress=False).run() == []
    assert len(read_results(out / "results.jsonl")) == 2


def test_new_detector_weights_retrain_the_lifters_on_them(tmp_path: Path) -> None:
    """Cells and trained lifters are keyed by the detector file's contents, not only its name."""
    from mvxray.detectors2d import build

    data = _tiny_dataset(tmp_path / "data")
    weights = tmp_path / "det.pt"
    build("oracle", fp_per_image=1.0, seed=0).save(weights)
    grid = GridConfig(detectors=(str(weights),), lifters=("voting_fpr",), views=(6,))
    out = tmp_path / "bench"
    assert len(Runner(grid, out, data=data, progress=False).run()) == 1
    assert len(Runner(grid, out, data=data, progress=False).run()) == 0  # same weights: resumed
    build("oracle", fp_per_image=3.0, seed=1).save(weights)  # retrained under the same name
    assert len(Runner(grid, out, data=data, progress=False).run()) == 1
    assert len(list((out / "models").glob("lift-voting_fpr-*.pt"))) == 2


def test_grid_from_toml_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "grid.toml"
    f.write_text(
        'detectors = ["oracle"]\nlifters = ["triangulation"]\nviews = [2, 3]\ntrain_minutes = 1.5\n'
    )
    g = load_grid(f)
    assert g.views == (2, 3) and g.train_minutes == 1.5 and g.detectors == ("oracle",)
    f.write_text('detectors = ["oracle"]\ncolour = "red"\n')
    with pytest.raises(ValueError, match="unknown grid key"):
        load_grid(f)
    with pytest.raises(FileNotFoundError, match="neither a ready grid"):
        load_grid(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="lifting needs >= 2 views"):
        GridConfig(views=(1, 2))
    assert load_grid("small").views == (2, 3, 5, 10)


def test_markdown_table_has_a_row_per_cell() -> None:
    row = json.loads(
        json.dumps(
            {
                "detector": "d",
                "lifter": "l",
                "views": 3,
                "size": 128,
                "augment": True,
                "recall2d": 0.5,
                "sensitivity_at_1fp": 0.25,
                "cpm": 0.2,
                "median_center_error_mm": 1.234,
                "p95_center_error_mm": 3.0,
                "mASE": 0.3,
                "train_s": 12.0,
                "infer_s": 0.5,
            }
        )
    )
    lines = markdown_table([row, row]).splitlines()
    assert len(lines) == 4
    assert (
        lines[2]
        == "| d | l | 3 | 128 | True | 0.50 | 0.25 | 0.20 | 1.23 | 3.00 | 0.30 | 12 | 0.5 |"
    )
