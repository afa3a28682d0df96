"""Suite-wide test set-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.datasets.format import write_case, write_dataset
from mvxray.geometry import Rig, box3d_from_center_size, project_boxes3d


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread per test: the suite runs in parallel workers (``-n 2``) beside other
    jobs on a small shared CPU, and its tiny models gain nothing from more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def two_case_dataset(tmp_path: Path) -> Path:
    """Cases ``a`` (train) and ``b`` (test): 5 views of 64 px, two 9 mm boxes each, noise images."""
    rig = Rig.circular(5, 300.0, 600.0, 64, 64, 4.0)
    names = ["a", "b"]
    for i, n in enumerate(names):
        c = torch.tensor([[10.0 * i, -5.0, 3.0], [-20.0, 15.0, -8.0]], dtype=torch.float64)
        b3 = box3d_from_center_size(c, torch.full((2, 3), 9.0, dtype=torch.float64))
        b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, 64, 64)
        s = MultiViewSample(torch.rand(5, 1, 64, 64), rig, b3, b2, vis, torch.zeros(2).long(), n)
        write_case(tmp_path / "data" / n, s, preview=False)
    write_dataset(tmp_path / "data", names, {"train": ["a"], "test": ["b"]})
    return tmp_path / "data"
