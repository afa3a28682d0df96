"""The shared training loop: several crops per prepared view, bfloat16 autocast, config checks."""

from __future__ import annotations

import pytest
import torch

from mvxray import detectors2d
from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.train import TrainConfig, collect_views, training_batch, use_bf16
from mvxray.geometry import Rig


class _CountingPrepare:
    """A detector stand-in whose ``prepare`` copies the view into 3 channels and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        self.calls += 1
        return images.repeat(1, 3, 1, 1), 1.0


def test_several_crops_per_view_prepare_each_view_once_and_keep_boxes_on_their_pixels():
    # Each view is 0 except inside its boxes, which are 1: after crop, flip and turn, every
    # returned box must still cover only ones (give or take the photometric noise).
    images, boxes = [], []
    for v in range(2):
        im = torch.zeros(1, 48, 48)
        b = torch.tensor([[10.0 + v, 12, 16 + v, 20], [30, 28, 36, 33]])
        for x1, y1, x2, y2 in b.int().tolist():
            im[0, y1:y2, x1:x2] = 1.0
        images.append(im)
        boxes.append(b)
    det = _CountingPrepare()
    g = torch.Generator().manual_seed(0)
    x, bxs = training_batch(det, images, boxes, 24, g, True, crop_positive=1.0, crops_per_view=3)
    assert det.calls == 2
    assert x.shape == (6, 3, 24, 24) and len(bxs) == 6
    assert all(len(b) >= 1 for b in bxs)  # every crop is placed around a box
    for im, b in zip(x, bxs):
        for x1, y1, x2, y2 in b.round().int().tolist():
            assert float(im[0, y1:y2, x1:x2].min()) > 0.9
            ring = torch.nn.functional.pad(im[0], (1, 1, 1, 1))[y1 : y2 + 2, x1 : x2 + 2]
            assert float(ring.min()) < 0.1  # and no more than the box


def test_train_config_rejects_inconsistent_crops_and_unknown_precision():
    assert TrainConfig(batch_size=8, crop_px=64, crops_per_view=4).views_per_step == 2
    with pytest.raises(ValueError, match=r"crops_per_view.*batch_size=6"):
        TrainConfig(batch_size=6, crop_px=64, crops_per_view=4)
    with pytest.raises(ValueError, match=r"crops_per_view.*crop_px=None"):
        TrainConfig(batch_size=4, crops_per_view=2)
    with pytest.raises(ValueError, match=r"precision.*'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match=r"blur_px.*-1"):
        TrainConfig(blur_px=-1.0)


def test_bf16_training_on_several_crops_per_view_lowers_the_loss(blob_dataset):
    torch.manual_seed(0)  # the network's initialization: fit seeds only its own sampling
    det = detectors2d.build("heatmap", widths=(8, 16, 32))
    out = det.fit(
        blob_dataset,
        max_iters=6,
        batch_size=4,
        crop_px=32,
        crops_per_view=2,
        precision="bf16",
        lr=1e-3,
        warmup_iters=0,
        augment=False,
        progress=False,
    )
    assert out["iterations"] == 6
    assert out["loss_final"] < 0.9 * out["loss_initial"]
    assert all(p.dtype == torch.float32 for p in det.module.parameters())  # autocast, not a cast


def test_auto_precision_uses_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    assert not use_bf16("fp32", cpu) and use_bf16("bf16", cpu)
    for amx, avx512_bf16 in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert use_bf16("auto", cpu) == (amx or avx512_bf16)
    assert not use_bf16("auto", torch.device("meta"))


def test_auto_precision_skips_a_gpu_that_only_emulates_bf16(monkeypatch):
    # A pre-Ampere GPU: bf16 "supported" only by emulation, which is slower than float32.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert not use_bf16("auto", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert use_bf16("auto", torch.device("cuda"))


def _square_sample(pixel_mm: float) -> MultiViewSample:
    """Two 32-px views of a rig at ``pixel_mm`` / 2 mm per pixel at the object, each with a
    bright 4-px square at (10, 12) and its box."""
    rig = Rig.circular(2, 300.0, 600.0, 32, 32, pixel_mm)
    images = torch.zeros(2, 1, 32, 32)
    images[:, :, 12:16, 10:14] = 1.0
    box = torch.tensor([10.0, 12.0, 14.0, 16.0])
    return MultiViewSample(
        images=images,
        rig=rig,
        boxes3d=torch.zeros(1, 6),
        boxes2d=box.expand(2, 1, 4).clone(),
        visible2d=torch.ones(2, 1, dtype=torch.bool),
        labels=torch.zeros(1, dtype=torch.long),
    )


def test_training_views_are_shown_at_the_trained_scale():
    """Fine-tuning on a rig of another scale: its views (and boxes) are resampled to the scale
    the detector will see them at in predict_sample, not trained on as given."""
    data = [_square_sample(2.0), _square_sample(4.0)]  # 1.0 and 2.0 mm per pixel at the object
    images, boxes, scale = collect_views(data, object_px_mm=1.0)
    assert (
        scale == 1.0 and [tuple(im.shape) for im in images] == [(1, 32, 32)] * 2 + [(1, 64, 64)] * 2
    )
    assert boxes[2].tolist() == [[20.0, 24.0, 28.0, 32.0]]
    inside = images[2][0, 25:31, 21:27]  # the enlarged square sits inside its enlarged box
    assert float(inside.min()) > 0.9 and float(images[2].sum()) == pytest.approx(64.0, rel=0.05)
    images, boxes, scale = collect_views([data[1], data[1], data[0]])  # median scale: 2.0 mm
    assert scale == 2.0 and tuple(images[4].shape) == (1, 16, 16)
    assert boxes[4].tolist() == [[5.0, 6.0, 7.0, 8.0]]
    assert boxes[0].tolist() == [[10.0, 12.0, 14.0, 16.0]]  # at the target scale: as given
