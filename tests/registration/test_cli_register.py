"""``mvxray register`` end to end on a tiny NIfTI CT, and its input errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from mvxray.cli import main
from mvxray.datasets.render import render_views
from mvxray.geometry import Rig
from mvxray.lifting.rayemb.encoder import EncoderConfig
from mvxray.lifting.rayemb.model import RayEmbConfig, RayEmbModel


def _inputs(tmp_path, tiny_volume):
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(tiny_volume.data.numpy(), np.diag([8.0, 8.0, 8.0, 1.0])), str(ct))
    rig = Rig.circular(1, 400.0, 800.0, 32, 32, 10.0)
    xray = tmp_path / "xray.npy"
    np.save(xray, render_views(tiny_volume, rig)[0, 0].numpy())
    geo = tmp_path / "geo.json"
    view = rig.to_views()[0]
    geo.write_text(json.dumps(view))
    model = tmp_path / "m.pt"
    RayEmbModel(RayEmbConfig(EncoderConfig(emb_dim=8, width=4, depth=2))).save(model)
    return ct, xray, geo, model, view


def test_register_writes_a_pose_json(tmp_path, tiny_volume, capsys):
    ct, xray, geo, model, view = _inputs(tmp_path, tiny_volume)
    out = tmp_path / "out" / "reg.json"
    code = main(
        [
            "register",
            "--ct",
            str(ct),
            "--xray",
            str(xray),
            "--geometry",
            str(geo),
            "--model",
            str(model),
            "--out",
            str(out),
            "--coarse-mm",
            "0",
            "--passes",
            "1",
            "--landmarks",
            "60",
        ]
    )
    res = json.loads(out.read_text())
    assert code == (0 if res["success"] else 2)
    T = np.array(res["T_cam_from_ct"])
    assert T.shape == (4, 4) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6)
    assert np.allclose(res["T_init"], view["T_cam_from_ct"])
    assert "registration" in capsys.readouterr().out


def test_register_input_errors(tmp_path, tiny_volume, capsys):
    ct, xray, geo, model, view = _inputs(tmp_path, tiny_volume)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in view.items() if k != "K"}))
    out = ["--out", str(tmp_path / "reg.json")]  # a run that got through writes here, not in cwd
    args = ["register", "--ct", str(ct), "--xray", str(xray), "--model", str(model), *out]
    assert main([*args, "--geometry", str(bad)]) == 1
    assert "missing key(s) ['K']" in capsys.readouterr().err
    np.save(tmp_path / "small.npy", np.zeros((8, 8), dtype=np.float32))
    args2 = [
        "register",
        "--ct",
        str(ct),
        "--xray",
        str(tmp_path / "small.npy"),
        "--model",
        str(model),
    ]
    assert main([*args2, "--geometry", str(geo)]) == 1
    assert "expected an image of shape (32, 32)" in capsys.readouterr().err
    np.save(xray, -np.load(xray))  # what a line integral minus its maximum could look like
    assert main([*args, "--geometry", str(geo), "--transmission"]) == 1
    assert "expected counts >= 0" in capsys.readouterr().err
    assert (
        main(
            [
                "register",
                "--ct",
                "phantom:nope",
                "--xray",
                str(xray),
                "--model",
                str(model),
                "--geometry",
                str(geo),
            ]
        )
        == 1
    )
    assert "unknown phantom" in capsys.readouterr().err
