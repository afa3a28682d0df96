"""Dataset generation: deterministic, resumable, atomic, sharded, parallel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mvxray.datasets import generate as gen
from mvxray.datasets.format import CASE_FILE, DatasetFormatError, read_case, read_dataset
from mvxray.datasets.generate import GenerateConfig, case_seed, generate, make_rig
from mvxray.geometry import Rig, project_boxes3d


def _config(out: Path, **kw) -> GenerateConfig:
    base = dict(
        out=out, phantom="casting", cases=3, views=3, size=24, preset="circular", voxel_mm=2.5
    )
    base.update(kw)
    return GenerateConfig(**base)


def test_generate_writes_consistent_cases(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert generate(cfg, progress=False) == ["case_00000", "case_00001", "case_00002"]
    index = read_dataset(tmp_path)
    assert index.cases == ["case_00000", "case_00001", "case_00002"]
    assert sorted(c for v in index.splits.values() for c in v) == index.cases
    assert index.meta["plan"]["phantom"] == "casting" and index.classes[1] == "pore"
    s = read_case(tmp_path / "case_00001")
    assert s.images.shape == (3, 1, 24, 24) and float(s.images.min()) >= 0
    assert float(s.images.max()) > 0.1  # the metal part is in the field of view
    b2, _ = project_boxes3d(s.boxes3d, s.rig.K, s.rig.T_cam_from_ct, 24, 24)
    torch.testing.assert_close(s.boxes2d, b2.to(s.boxes2d.dtype), atol=1e-5, rtol=0)
    prov = s.meta["provenance"]
    assert prov["phantom"] == "casting" and prov["case_seed"] == case_seed(0, 1)
    assert "boxes2d_mask" in s.meta


def test_resume_skips_finished_cases_and_is_deterministic(tmp_path: Path) -> None:
    cfg = _config(tmp_path, cases=2)
    generate(cfg, progress=False)
    first = np.load(tmp_path / "case_00001" / "view_00.npy")
    mtime = (tmp_path / "case_00001" / CASE_FILE).stat().st_mtime_ns
    (tmp_path / ".tmp-case_00002.deadbeef").mkdir()  # leftover of a killed write
    more = _config(tmp_path, cases=3)
    assert generate(more, progress=False) == ["case_00002"]
    assert (tmp_path / "case_00001" / CASE_FILE).stat().st_mtime_ns == mtime
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    other = tmp_path / "again"
    generate(_config(other, cases=2), progress=False)
    np.testing.assert_array_equal(np.load(other / "case_00001" / "view_00.npy"), first)


def test_shards_partition_the_cases(tmp_path: Path) -> None:
    rendered = []
    for i in range(2):
        rendered += generate(_config(tmp_path, cases=3, shard=(i, 2)), progress=False)
    assert sorted(rendered) == ["case_00000", "case_00001", "case_00002"]
    assert read_dataset(tmp_path).cases == sorted(rendered)


def test_exception_mid_case_leaves_no_half_case(tmp_path: Path, monkeypatch) -> None:
    real = np.save
    calls = {"n": 0}

    def dying_save(path, arr):
        calls["n"] += 1
        if calls["n"] == 5:  # case 1, second view
            raise RuntimeError("simulated crash")
        real(path, arr)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(_config(tmp_path), progress=False)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["case_00000", "dataset.json"]
    monkeypatch.setattr(np, "save", real)
    assert generate(_config(tmp_path), progress=False) == ["case_00001", "case_00002"]


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed preset has 10 views"):
        GenerateConfig(out=tmp_path, views=4)
    with pytest.raises(ValueError, match="shard"):
        GenerateConfig(out=tmp_path, shard=(2, 2))
    with pytest.raises(FileNotFoundError, match="neither one of"):
        generate(_config(tmp_path, phantom=str(tmp_path / "nope.nii.gz")), progress=False)
    assert make_rig(GenerateConfig(out=tmp_path, size=64)).num_views == 10


def _rig_file(path: Path, rig: Rig) -> Path:
    path.write_text(rig.to_json())
    return path


def test_rig_file_renders_every_case_with_that_rig(tmp_path: Path) -> None:
    """A rig no preset makes (non-square, 4 views over 180° from 18°): cases carry exactly it,
    the boxes are its projections, and a case folder of that dataset is a rig file too."""
    rig = Rig.circular(4, 300.0, 600.0, 20, 28, 6.0, start_deg=18.0, arc_deg=180.0)
    cfg = _config(tmp_path / "a", cases=1, views=10, size=256, preset="seed",
                  rig=_rig_file(tmp_path / "rig.json", rig))  # fmt: skip
    assert (cfg.views, cfg.size, cfg.rig) == (4, 28, str(tmp_path / "rig.json"))
    generate(cfg, progress=False)
    s = read_case(tmp_path / "a" / "case_00000")
    assert s.images.shape == (4, 1, 20, 28) and float(s.images.max()) > 0.1
    torch.testing.assert_close(s.rig.K, rig.K)
    torch.testing.assert_close(s.rig.T_cam_from_ct, rig.T_cam_from_ct)
    b2, _ = project_boxes3d(s.boxes3d, rig.K, rig.T_cam_from_ct, 20, 28)
    torch.testing.assert_close(s.boxes2d, b2.to(s.boxes2d.dtype), atol=1e-5, rtol=0)
    assert s.meta["provenance"]["rig_preset"] == "file"
    plan = read_dataset(tmp_path / "a").meta["plan"]
    assert (plan["views"], plan["size"], plan["rig"]) == (4, 28, str(tmp_path / "rig.json"))
    again = _config(tmp_path / "b", cases=1, views=4, size=28, preset="seed",
                    rig=tmp_path / "a" / "case_00000")  # fmt: skip
    torch.testing.assert_close(make_rig(again).T_cam_from_ct, rig.T_cam_from_ct)


def test_rig_file_errors(tmp_path: Path) -> None:
    rig = Rig.circular(4, 300.0, 600.0, 20, 20, 6.0)
    path = _rig_file(tmp_path / "rig.json", rig)
    with pytest.raises(ValueError, match="replaces preset and detector_mm"):
        GenerateConfig(out=tmp_path, preset="circular", rig=path)
    with pytest.raises(ValueError, match=r"views: 6 given, but the rig file .* has 4"):
        GenerateConfig(out=tmp_path, views=6, rig=path)
    with pytest.raises(FileNotFoundError, match="no such rig file"):
        GenerateConfig(out=tmp_path, rig=tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"view": []}')
    with pytest.raises(DatasetFormatError, match=r"bad\.json: missing key 'views'"):
        GenerateConfig(out=tmp_path, rig=tmp_path / "bad.json")
    # poses that cannot image the phantom: turned away from it, or in another frame
    turned = torch.diag(torch.tensor([-1.0, 1, -1, 1], dtype=torch.float64)) @ rig.T_cam_from_ct
    away = Rig(rig.K, turned, 20, 20, rig.pixel_mm)
    cfg = _config(tmp_path / "c", cases=1, preset="seed", views=4, size=20,
                  rig=_rig_file(tmp_path / "away.json", away))  # fmt: skip
    with pytest.raises(ValueError, match=r"rig view 0: the volume .* is behind the source"):
        generate(cfg, progress=False)
    shifted = rig.T_cam_from_ct.clone()
    shifted[:, 0, 3] += 1000.0  # the object 1000 mm to the side: the user's frame, not the CT's
    off = Rig(rig.K, shifted, 20, 20, rig.pixel_mm)
    cfg = _config(tmp_path / "d", cases=1, preset="seed", views=4, size=20,
                  rig=_rig_file(tmp_path / "off.json", off))  # fmt: skip
    with pytest.raises(ValueError, match=r"rig view 0: .* outside the 20x20 px image"):
        generate(cfg, progress=False)
    assert (
        not (tmp_path / "c" / "case_00000").exists()
        and not (tmp_path / "d" / "case_00000").exists()
    )


def test_user_ct_as_host(tmp_path: Path, monkeypatch) -> None:
    """A CT path: nodules are inserted into the loaded host (loader stubbed to stay fast)."""
    from mvxray.datasets.phantoms import make_casting_case

    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")
    host = make_casting_case(0, voxel_mm=2.5).volume
    seen = {}

    def fake_insert(volume, seed, **kw):
        seen["host"] = volume
        return make_casting_case(seed, voxel_mm=2.5)

    monkeypatch.setattr(gen, "_host", lambda path, voxel_mm: seen.update(voxel=voxel_mm) or host)
    monkeypatch.setattr("mvxray.datasets.phantoms.insert_nodules", fake_insert)
    generate(_config(tmp_path / "ds", phantom=str(ct), cases=1), progress=False)
    assert seen["host"] is host and seen["voxel"] == 2.5
    prov = read_case(tmp_path / "ds" / "case_00000").meta["provenance"]
    assert prov["host"] == str(ct)


def test_user_ct_host_padding_is_air_and_voxel_resamples(tmp_path: Path) -> None:
    import nibabel as nib

    data = np.full((20, 20, 8), -2048.0, np.float32)  # the scanner's padding around a body
    data[4:16, 4:16] = 40.0
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.75, 0.75, 2.5, 1.0])), path)
    gen._host.cache_clear()
    native = gen._host(str(path))
    assert tuple(native.data.shape) == (20, 20, 8)
    assert native.spacing_mm.tolist() == [0.75, 0.75, 2.5]
    assert sorted(native.data.unique().tolist()) == [-1024.0, 40.0]
    coarse = gen._host(str(path), 1.5)
    gen._host.cache_clear()
    assert tuple(coarse.data.shape) == (10, 10, 13)
    assert coarse.spacing_mm.tolist() == pytest.approx([1.5, 1.5, 1.5])
    assert coarse.data.min().item() >= -1024.0 - 1e-3  # no padding smeared below air
    assert coarse.data[5, 5, 6].item() == pytest.approx(40.0, abs=1.0)
    with pytest.raises(ValueError, match="voxel_mm"):
        GenerateConfig(out=tmp_path, voxel_mm=0.0)


@pytest.mark.slow
def test_kill_9_leaves_only_complete_cases(tmp_path: Path) -> None:
    """SIGKILL a CLI run mid-way: every case folder left is complete; a re-run finishes the rest."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "mvxray.cli", "render", "--out", str(out), "--phantom", "casting",
           "--cases", "40", "--views", "4", "--preset", "circular", "--size", "48",
           "--voxel-mm", "1.0", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.is_dir() and len([p for p in out.glob("case_*") if (p / CASE_FILE).exists()]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for case in out.glob("case_*"):
        read_case(case)  # complete and loadable (no half-written case under a final name)
    finished = len(list(out.glob("case_*")))
    assert 2 <= finished < 40
    cmd[cmd.index("40")] = str(finished + 1)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert len(read_dataset(out).cases) == finished + 1
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


@pytest.mark.slow
def test_workers_render_the_same_cases(tmp_path: Path) -> None:
    generate(_config(tmp_path / "w1", cases=2), progress=False)
    generate(_config(tmp_path / "w2", cases=2, workers=2), progress=False)
    for c in ("case_00000", "case_00001"):
        a = read_case(tmp_path / "w1" / c)
        b = read_case(tmp_path / "w2" / c)
        torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.boxes3d, b.boxes3d)
