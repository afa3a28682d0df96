"""Ray-embedding subspaces (seed 002): a 3D point is the span of its rays' embeddings.

Given the embeddings ``F = (e'_1 … e'_T)`` ``(D, T)`` of the rays through a 3D point in T
template views, the orthogonal projector onto their span is ``P = F F⁺ = U Uᵀ`` with ``U`` an
orthonormal basis of ``range(F)``. A pixel of a new view whose ray passes through the point
should have an embedding ``e`` inside that span; its similarity is

    sim(P, e) = eᵀ P e / (|e| |P e|) = |Uᵀ e| / |e|          (since P = U Uᵀ, Pᵀ P = P)

the cosine of the angle between ``e`` and the subspace (1 inside it, 0 orthogonal to it). We
work with the basis ``U`` rather than the ``D × D`` projector: the similarity map of N points
over H·W pixels then costs ``N·r·H·W`` instead of ``N·D·H·W``.

Everything here is pure torch and batched over leading dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvxray.geometry import pixels_to_grid
from mvxray.geometry._checks import ShapeError, check_shape

_EPS = 1e-8


def subspace_basis(
    F_: torch.Tensor, rtol: float = 1e-4, differentiable: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis of the span of the template embeddings, with a rank threshold.

    Args:
        F_: ``(*, D, T)`` template embeddings as columns (T templates, D channels).
        rtol: singular values below ``rtol · s_max`` count as zero (their directions are masked
            out, so a repeated or vanishing template never adds noise to the subspace).
        differentiable: use a QR decomposition of the column-normalized ``F`` (well-behaved
            gradients for training; assumes full column rank, which a jittered embedding has)
            instead of the SVD (exact rank handling, used at inference).

    Returns:
        basis: ``(*, D, T)`` columns spanning ``range(F)``; masked-out columns are zero.
        rank: ``(*,)`` int64 numerical rank.

    Raises:
        ShapeError: ``F_`` is not at least 2-D.

    Example:
        >>> U, r = subspace_basis(torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))
        >>> int(r), U.abs()[:, 0].tolist()
        (1, [1.0, 0.0, 0.0])
    """
    check_shape(F_, "F", (None, None))
    if F_.shape[-2] < 1 or F_.shape[-1] < 1:
        raise ShapeError(f"F: expected shape (*, D, T) with D, T >= 1, found {tuple(F_.shape)}")
    if differentiable:
        Fn = F_ / F_.norm(dim=-2, keepdim=True).clamp_min(_EPS)
        Q, R = torch.linalg.qr(Fn, mode="reduced")  # (*, D, min(D,T)), (*, min, T)
        diag = R.diagonal(dim1=-2, dim2=-1).abs()
        keep = diag > rtol * diag.amax(-1, keepdim=True).clamp_min(_EPS)
        return Q * keep.unsqueeze(-2), keep.sum(-1)
    U, S, _ = torch.linalg.svd(F_, full_matrices=False)  # (*, D, k), (*, k)
    keep = S > rtol * S.amax(-1, keepdim=True).clamp_min(_EPS)
    return U * keep.unsqueeze(-2).to(U.dtype), keep.sum(-1)


def projection_matrix(F_: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
    """The orthogonal projector ``P = F F⁺`` onto the span of the columns of ``F``.

    Computed as ``U Uᵀ`` from a rank-thresholded SVD (equal to ``F @ pinv(F)``, but never
    inverts a near-zero singular value).

    Args:
        F_: ``(*, D, T)`` template embeddings as columns.
        rtol: relative rank threshold (see :func:`subspace_basis`).

    Returns:
        ``(*, D, D)`` symmetric idempotent projector.

    Example:
        >>> P = projection_matrix(torch.tensor([[1.0], [1.0]], dtype=torch.float64))
        >>> P.round(decimals=6).tolist()
        [[0.5, 0.5], [0.5, 0.5]]
    """
    U, _ = subspace_basis(F_, rtol)
    return U @ U.transpose(-1, -2)


def subspace_similarity(
    embeddings: torch.Tensor, basis: torch.Tensor, eps: float = _EPS
) -> torch.Tensor:
    """``sim(P, e) = eᵀPe / (|e||Pe|) = |Uᵀe| / |e|`` of every pixel for every subspace.

    Args:
        embeddings: ``(D, H, W)`` one view's per-pixel embeddings (or ``(D, M)`` vectors).
        basis: ``(N, D, r)`` orthonormal bases (zero columns allowed) of N subspaces.
        eps: guards the division for zero embeddings.

    Returns:
        ``(N, H, W)`` (or ``(N, M)``) similarities in [0, 1].

    Raises:
        ShapeError: the embedding dimensions D differ.

    Example:
        >>> U = torch.eye(3)[:, :1].unsqueeze(0)  # span{x}
        >>> E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # columns x and y
        >>> subspace_similarity(E, U).round(decimals=6).tolist()
        [[1.0, 0.0]]
    """
    check_shape(basis, "basis", (None, None, None))
    if embeddings.shape[0] != basis.shape[-2]:
        raise ShapeError(
            f"embeddings: expected {basis.shape[-2]} channels (as basis), found "
            f"{tuple(embeddings.shape)}"
        )
    spatial = embeddings.shape[1:]
    E = embeddings.reshape(embeddings.shape[0], -1)  # (D, M)
    coeff = torch.einsum("ndr,dm->nrm", basis, E)  # (N, r, M)
    # square-sum-sqrt, not .norm(dim=1): torch's strided norm reduction is ~15x slower on CPU.
    num = coeff.square().sum(1).clamp_min(1e-24).sqrt()
    sim = num / E.square().sum(0).clamp_min(eps * eps).sqrt()
    return sim.reshape(basis.shape[0], *spatial)


def sample_embeddings(embeddings: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample per-pixel embeddings at continuous pixel positions.

    Uses the pixel-centre rule of ``docs/conventions.md``: pixel (r, c) has its centre at
    (u, v) = (c + 0.5, r + 0.5), which is ``grid_sample(align_corners=False)``'s convention.
    Positions outside the image take the border value.

    Args:
        embeddings: ``(V, D, h, w)`` embeddings of V views at an ``h × w`` grid covering the image.
        uv: ``(V, N, 2)`` positions in **embedding-grid** pixels (scale image px by ``w / W``).

    Returns:
        ``(V, N, D)`` sampled embeddings.
    """
    _V, _, h, w = embeddings.shape
    check_shape(uv, "uv", (None, 2))
    grid = pixels_to_grid(uv, h, w)
    out = F.grid_sample(
        embeddings,
        grid.to(embeddings.dtype).unsqueeze(2),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # (V, D, N, 1)
    return out.squeeze(-1).transpose(1, 2)


def refine_peaks(
    sim: torch.Tensor, radius: int = 2, temperature: float = 0.02, scale_by_peak: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Arg-max of each similarity map with sub-pixel refinement and a confidence.

    The integer peak is refined by a soft-argmax (softmax of ``sim / temperature``) over the
    ``(2·radius+1)²`` window around it. The confidence is the softmax mass of the whole map that
    falls in that window times the peak similarity: close to 1 only for a single, sharp,
    near-perfect match.

    Args:
        sim: ``(N, h, w)`` similarity maps.
        radius: half-size of the refinement window, px (of the map).
        temperature: softmax temperature on the similarity.
        scale_by_peak: multiply the confidence by the peak value (for similarities in [0, 1];
            off for heatmap logits).

    Returns:
        uv: ``(N, 2)`` peak positions in map pixels (u, v), pixel-centre rule (centre = c + 0.5).
        confidence: ``(N,)`` in [0, 1].

    Example:
        >>> s = torch.zeros(1, 5, 5); s[0, 2, 3] = 1.0
        >>> refine_peaks(s, radius=1, temperature=1e-3)[0].tolist()
        [[3.5, 2.5]]
    """
    check_shape(sim, "sim", (None, None, None))
    N, h, w = sim.shape
    flat = sim.reshape(N, -1)
    idx = flat.argmax(-1)
    r0, c0 = idx // w, idx % w
    offs = torch.arange(-radius, radius + 1, device=sim.device)
    rr = (r0[:, None, None] + offs[None, :, None]).clamp(0, h - 1)  # (N, k, 1)
    cc = (c0[:, None, None] + offs[None, None, :]).clamp(0, w - 1)  # (N, 1, k)
    rr, cc = torch.broadcast_tensors(rr, cc)
    win = torch.gather(flat, 1, (rr * w + cc).reshape(N, -1))  # (N, k*k)
    logits = flat / temperature
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    p_win = torch.exp(win / temperature - lse)  # softmax mass per window pixel
    wts = p_win / p_win.sum(-1, keepdim=True).clamp_min(1e-30)
    u = (wts * (cc.reshape(N, -1).to(sim.dtype) + 0.5)).sum(-1)
    v = (wts * (rr.reshape(N, -1).to(sim.dtype) + 0.5)).sum(-1)
    peak = flat.gather(1, idx[:, None]).squeeze(1)
    conf = p_win.sum(-1).clamp(0.0, 1.0)
    if scale_by_peak:
        conf = conf * peak.clamp(0.0, 1.0)
    return torch.stack([u, v], dim=-1), conf
