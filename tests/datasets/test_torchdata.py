"""MultiViewDataset (splits by case) and collate (varying numbers of boxes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mvxray.datasets.format import split_cases, write_case, write_dataset
from mvxray.datasets.torchdata import MultiViewBatch, MultiViewDataset, collate

from .test_format import make_sample


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    ids = []
    for i in range(10):
        s = make_sample(i, M=1 + i % 3)
        ids.append(s.case_id)
        write_case(tmp_path / s.case_id, s, preview=False)
    write_dataset(tmp_path, ids, split_cases(ids, seed=2))
    return tmp_path


def test_splits_are_disjoint_and_cover_every_case(dataset: Path) -> None:
    parts = {k: MultiViewDataset(dataset, k) for k in ("train", "val", "test")}
    ids = {k: set(d.case_ids) for k, d in parts.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert set().union(*ids.values()) == {f"case_{i:05d}" for i in range(10)}
    assert [len(parts[k]) for k in ("train", "val", "test")] == [8, 1, 1]
    # What a split yields is exactly its cases (no view of a held-out case leaks into train).
    assert {s.case_id for s in parts["train"]} == ids["train"]
    assert len(MultiViewDataset(dataset, "all")) == 10


def test_getitem_and_transform(dataset: Path) -> None:
    def double(s):
        s.images = s.images * 2
        return s

    plain, doubled = MultiViewDataset(dataset, "all"), MultiViewDataset(dataset, "all", double)
    torch.testing.assert_close(doubled[3].images, 2 * plain[3].images)
    assert plain[-1].case_id == plain.case_ids[-1]
    with pytest.raises(IndexError, match="out of range for split 'all'"):
        plain[10]
    with pytest.raises(KeyError, match="split 'nope'"):
        MultiViewDataset(dataset, "nope")


def test_collate_pads_varying_numbers_of_boxes(dataset: Path) -> None:
    ds = MultiViewDataset(dataset, "all")
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert isinstance(batch, MultiViewBatch) and len(batch) == 3
    assert batch.images.shape == (3, 3, 1, 20, 24)
    assert batch.K.shape == (3, 3, 3, 3) and batch.T_cam_from_ct.shape == (3, 3, 4, 4)
    assert batch.boxes3d.shape == (3, 3, 6) and batch.boxes2d.shape == (3, 3, 3, 4)
    assert batch.box_mask.tolist() == [[True, False, False], [True, True, False], [True] * 3]
    assert batch.labels[0].tolist() == [0, -1, -1]
    assert not batch.visible2d[0, :, 1:].any()
    for b, s in enumerate(batch.samples):
        m = s.boxes3d.shape[0]
        torch.testing.assert_close(batch.boxes3d[b, :m], s.boxes3d)
        torch.testing.assert_close(batch.boxes2d[b, :, :m], s.boxes2d)
    assert batch.case_ids == ds.case_ids[:3]
    assert batch.to("cpu").images.device.type == "cpu"


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    a, b = make_sample(0), make_sample(1, H=16)
    with pytest.raises(ValueError, match="collate_fn=list"):
        collate([a, b])
