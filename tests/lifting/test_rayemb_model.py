"""RayEmb encoders, persistence, localization and a tiny training run."""

from __future__ import annotations

import pytest
import torch

from mvxray.datasets.base import Volume
from mvxray.datasets.render import render_views
from mvxray.geometry import Rig, T_ct_from_voxel
from mvxray.lifting.rayemb.encoder import EncoderConfig, build_encoder, normalize_images
from mvxray.lifting.rayemb.model import RayEmbConfig, RayEmbModel
from mvxray.lifting.rayemb.poses import perturb_poses
from mvxray.lifting.rayemb.train import (
    TrainConfig,
    ViewBank,
    fit_rayemb,
    points_in_views,
    sample_body_points,
)

TINY = EncoderConfig(emb_dim=8, width=4, depth=2)


def _volume(n: int = 20, seed: int = 0) -> Volume:
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1
    )
    data = torch.full((n, n, n), -1000.0)
    data[2:-2, 2:-2, 2:-2] = 0.0
    for _ in range(10):
        c = 3 + torch.rand(3, generator=g) * (n - 6)
        data[(idx - c).norm(dim=-1) < 1.5 + 1.5 * float(torch.rand(1, generator=g))] = 1000.0
    return Volume(data, T_ct_from_voxel((n, n, n), (8.0,) * 3))


@pytest.fixture(scope="module")
def bank() -> ViewBank:
    vol = _volume()
    base = Rig.circular(4, 400.0, 800.0, 32, 32, 10.0)
    g = torch.Generator().manual_seed(0)
    T = torch.cat([base.T_cam_from_ct, perturb_poses(base.T_cam_from_ct, 10.0, 10.0, g)])
    rig = Rig.from_poses(base.K[:1].expand(8, 3, 3).clone(), T, 32, 32, 10.0)
    pts = sample_body_points(vol, 512, 500.0, torch.Generator().manual_seed(1))
    return ViewBank(render_views(vol, rig), rig, pts)


@pytest.mark.parametrize("stride", [0, 1])
def test_unet_shapes(stride: int):
    enc = build_encoder(EncoderConfig(emb_dim=6, width=4, depth=2, out_stride_log2=stride))
    assert enc(torch.zeros(3, 1, 16, 24)).shape == (3, 6, 16 >> stride, 24 >> stride)
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.zeros(1, 1, 10, 16))


def test_timm_vit_encoder_shape_without_pretrained_weights():
    enc = build_encoder(EncoderConfig(name="timm_vit", emb_dim=5, image_size=32, out_stride_log2=1))
    assert enc(torch.zeros(2, 1, 32, 32)).shape == (2, 5, 16, 16)


def test_unknown_encoder_and_bad_stride():
    with pytest.raises(KeyError, match="unknown name"):
        build_encoder(EncoderConfig(name="nope"))
    with pytest.raises(ValueError, match="out_stride_log2"):
        build_encoder(EncoderConfig(depth=1, out_stride_log2=2))


def test_normalization_is_per_image_and_scale_free():
    x = torch.rand(2, 1, 8, 8)
    y = torch.stack([x[0] * 100.0 + 5.0, x[1] * 0.01])
    assert torch.allclose(normalize_images(x), normalize_images(y), atol=1e-4)


def test_save_load_roundtrip(tmp_path):
    m = RayEmbModel(RayEmbConfig(TINY, temperature=0.1, seed=3))
    m.save(tmp_path / "m.pt", extra={"note": "x"})
    m2 = RayEmbModel.load(tmp_path / "m.pt")
    x = torch.rand(1, 1, 16, 16)
    assert m2.config == m.config and m2.extra == {"note": "x"}
    assert torch.equal(m.eval().embed(x), m2.embed(x))
    assert not list(tmp_path.glob("*.tmp"))
    torch.save({"kind": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a saved"):
        RayEmbModel.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        RayEmbModel.load(tmp_path / "missing.pt")


def test_seeded_initialization_is_reproducible():
    a, b = RayEmbModel(RayEmbConfig(TINY, seed=5)), RayEmbModel(RayEmbConfig(TINY, seed=5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_locate_shapes_and_ranges(bank: ViewBank):
    m = RayEmbModel(RayEmbConfig(TINY)).eval()
    loc = m.locate(
        bank.images[0],
        bank.images[1:5],
        bank.rig.subset([1, 2, 3, 4]),
        bank.points_ct[:10],
        return_maps=True,
    )
    assert loc.uv.shape == (10, 2) and loc.maps.shape == (10, 32, 32)
    assert bool(((loc.uv >= 0) & (loc.uv <= 32)).all())
    assert bool(((loc.confidence >= 0) & (loc.confidence <= 1)).all())
    assert bool((loc.similarity <= 1 + 1e-5).all())


def test_tiny_training_lowers_the_infonce_loss(bank: ViewBank):
    m = RayEmbModel(RayEmbConfig(TINY, temperature=0.1))
    out = fit_rayemb(
        m,
        bank,
        TrainConfig(
            steps=40,
            queries_per_step=1,
            num_templates=3,
            points_per_query=32,
            lr=1e-2,
            max_template_angle_deg=120.0,
        ),
    )
    assert out["loss_last"] < out["loss_first"] - 0.3
    assert not m.training


def test_fit_needs_enough_views(bank: ViewBank):
    small = ViewBank(bank.images[:2], bank.rig.subset([0, 1]), bank.points_ct)
    with pytest.raises(ValueError, match="at least"):
        fit_rayemb(RayEmbModel(RayEmbConfig(TINY)), small, TrainConfig(steps=1))


def test_points_in_views_land_on_the_object(bank: ViewBank):
    pts = points_in_views(
        bank.images, bank.rig, 50, radius_mm=100.0, generator=torch.Generator().manual_seed(0)
    )
    assert pts.shape[1] == 3 and 0 < pts.shape[0] <= 50
    assert float(pts.abs().max()) <= 100.0
    with pytest.raises(ValueError, match="hu_min"):
        sample_body_points(_volume(), 5, hu_min=5000.0)
