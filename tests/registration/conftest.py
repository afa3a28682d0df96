"""Tiny synthetic CT and rigs shared by the registration tests (no downloads)."""

from __future__ import annotations

import pytest
import torch

from mvxray.datasets.base import Volume
from mvxray.geometry import T_ct_from_voxel


def blob_volume(n: int = 24, spacing: float = 8.0, seed: int = 0) -> Volume:
    """A box of soft tissue with a dozen dense random blobs (HU), centred on the CT origin."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1
    )
    data = torch.full((n, n, n), -1000.0)
    data[3:-3, 3:-3, 3:-3] = 0.0
    for _ in range(12):
        c = 4 + torch.rand(3, generator=g) * (n - 8)
        r = 1.0 + 2.0 * torch.rand(1, generator=g)
        data[(idx - c).norm(dim=-1) < r] = 400.0 + 800.0 * float(torch.rand(1, generator=g))
    return Volume(data, T_ct_from_voxel((n, n, n), (spacing,) * 3))


@pytest.fixture(scope="session")
def tiny_volume() -> Volume:
    return blob_volume()
