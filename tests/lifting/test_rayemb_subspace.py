"""Subspace math of RayEmb with hand-made embeddings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvxray.geometry import ShapeError
from mvxray.lifting.rayemb.subspace import (
    projection_matrix,
    refine_peaks,
    sample_embeddings,
    subspace_basis,
    subspace_similarity,
)
from mvxray.lifting.rayemb.train import soft_targets


def _F(seed: int, D: int = 8, T: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, D, T, generator=g, dtype=torch.float64)


def test_vector_inside_span_has_similarity_one_and_orthogonal_zero():
    F = torch.zeros(1, 4, 2, dtype=torch.float64)
    F[0, 0, 0], F[0, 1, 1] = 2.0, -3.0  # span{e0, e1}
    U, rank = subspace_basis(F)
    E = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 0.0]])
    sim = subspace_similarity(E.double(), U)
    # columns: (1,1,0,0) inside, (0,0,5,0) orthogonal, (1,0,1,0) at 45 degrees
    assert int(rank) == 2
    assert sim[0].tolist() == pytest.approx([1.0, 0.0, 2**-0.5], abs=1e-12)


def test_similarity_equals_poster_formula_with_projector():
    F = _F(0)
    P = projection_matrix(F)[0]
    e = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Pe = P @ e
    poster = (e * Pe).sum(0) / (e.norm(dim=0) * Pe.norm(dim=0))
    U, _ = subspace_basis(F)
    assert torch.allclose(subspace_similarity(e, U)[0], poster, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 5))
def test_any_combination_of_templates_lies_in_the_subspace(seed: int, T: int):
    F = _F(seed, D=16, T=T)
    c = torch.randn(T, 1, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    U, _ = subspace_basis(F)
    assert float(subspace_similarity(F[0] @ c, U)[0, 0]) == pytest.approx(1.0, abs=1e-9)


def test_projector_is_pinv_product_symmetric_idempotent():
    F = _F(3)
    P = projection_matrix(F)
    assert torch.allclose(P, F @ torch.linalg.pinv(F), atol=1e-10)
    assert torch.allclose(P, P.transpose(-1, -2), atol=1e-12)
    assert torch.allclose(P @ P, P, atol=1e-10)


def test_rank_threshold_ignores_repeated_and_zero_templates():
    F = _F(4, T=2)
    F3 = torch.cat([F, F[..., :1] * 2.0, torch.zeros(1, 8, 1, dtype=torch.float64)], -1)
    _, rank = subspace_basis(F3)
    assert int(rank) == 2
    assert torch.allclose(projection_matrix(F3), projection_matrix(F), atol=1e-10)


def test_differentiable_qr_basis_spans_the_same_subspace_and_has_gradients():
    F = _F(5).requires_grad_(True)
    Uq, rq = subspace_basis(F, differentiable=True)
    Us, _ = subspace_basis(F.detach())
    assert int(rq) == 3
    assert torch.allclose(Uq @ Uq.transpose(-1, -2), Us @ Us.transpose(-1, -2), atol=1e-10)
    e = torch.randn(8, 4, dtype=torch.float64)
    subspace_similarity(e, Uq).sum().backward()
    assert F.grad is not None and bool(torch.isfinite(F.grad).all())


def test_shape_errors_name_the_argument():
    with pytest.raises(ShapeError, match="embeddings"):
        subspace_similarity(torch.zeros(5, 3, 3), torch.zeros(2, 4, 1))
    with pytest.raises(ShapeError, match="F"):
        subspace_basis(torch.zeros(3))


def test_refine_peaks_subpixel_between_two_pixels_and_confidence():
    s = torch.zeros(2, 7, 7)
    s[0, 3, 2] = s[0, 3, 3] = 0.9  # a ridge between columns 2 and 3 -> u = 3.0
    s[1] = 0.5  # flat map: no confident peak
    uv, conf = refine_peaks(s, radius=1, temperature=0.01)
    assert uv[0].tolist() == pytest.approx([3.0, 3.5], abs=1e-4)
    assert float(conf[0]) > 0.85
    assert float(conf[1]) < 0.2


def test_sample_embeddings_follows_pixel_centre_rule():
    emb = torch.arange(12.0).reshape(1, 1, 3, 4)  # value = 4 r + c
    uv = torch.tensor(
        [[[2.5, 1.5], [0.5, 0.5], [3.0, 1.5]]]
    )  # centre (1, 2), centre (0, 0), between c=2,3
    out = sample_embeddings(emb, uv)[0, :, 0]
    assert out.tolist() == pytest.approx([6.0, 0.0, 6.5], abs=1e-5)


def test_soft_targets_sum_to_one_and_are_one_hot_at_centres():
    t = soft_targets(torch.tensor([[2.5, 1.5], [2.0, 1.0]]), 3, 4)
    assert t.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert float(t[0, 1 * 4 + 2]) == pytest.approx(1.0)
    assert t[1].max().item() == pytest.approx(0.25)
