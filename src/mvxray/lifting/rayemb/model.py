"""The RayEmb model: an encoder plus subspace matching of 3D points into new views.

:meth:`RayEmbModel.locate` is the poster's landmark estimator: project the 3D points into the
template views (known poses), sample the template embeddings there, span one subspace per
point, and return the pixel of the query view whose embedding is closest to it (sub-pixel
refined) with a confidence.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvxray.geometry import Rig, check_shape
from mvxray.io import atomic_torch_save
from mvxray.lifting.rayemb.encoder import EncoderConfig, build_encoder, normalize_images
from mvxray.lifting.rayemb.subspace import (
    refine_peaks,
    sample_embeddings,
    subspace_basis,
    subspace_similarity,
)


@dataclass(frozen=True)
class RayEmbConfig:
    """Model and training settings.

    Attributes:
        encoder: the encoder's configuration.
        temperature: InfoNCE / soft-argmax temperature on the similarity (in [0, 1] units).
        rtol: relative rank threshold of the template subspaces.
        peak_radius: half window of the sub-pixel refinement, embedding-grid px.
        seed: RNG seed of initialization and training.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temperature: float = 0.05
    rtol: float = 1e-4
    peak_radius: int = 2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RayEmbConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        enc = EncoderConfig(**d.pop("encoder", {}))
        return cls(encoder=enc, **d)


@dataclass
class Located:
    """Where 3D points appear in a query view.

    Attributes:
        uv: ``(N, 2)`` image px (u right, v down; pixel-centre rule).
        confidence: ``(N,)`` in [0, 1] (see :func:`~.subspace.refine_peaks`).
        similarity: ``(N,)`` the peak similarity ``sim(P, x̂)``.
        maps: ``(N, h, w)`` similarity maps on the embedding grid (only if requested).
    """

    uv: torch.Tensor
    confidence: torch.Tensor
    similarity: torch.Tensor
    maps: torch.Tensor | None = None


class RayEmbModel(nn.Module):
    """Ray-embedding encoder with subspace-based landmark localization.

    Args:
        config: the model configuration.

    Example:
        >>> from mvxray.lifting.rayemb.encoder import EncoderConfig
        >>> m = RayEmbModel(RayEmbConfig(EncoderConfig(emb_dim=4, width=4, depth=1)))
        >>> m.embed(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, config: RayEmbConfig | None = None) -> None:
        super().__init__()
        self.config = config or RayEmbConfig()
        torch.manual_seed(self.config.seed)
        self.encoder = build_encoder(self.config.encoder)
        self.extra: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return next(self.parameters()).device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` any-scale images → ``(B, D, h, w)`` embeddings (first channel used)."""
        check_shape(images, "images", (None, None, None, None))
        return self.encoder(normalize_images(images[:, :1].to(self.device)))

    def template_bases(
        self,
        template_emb: torch.Tensor,
        template_rig: Rig,
        points_ct: torch.Tensor,
        differentiable: bool = False,
    ) -> torch.Tensor:
        """One subspace basis per 3D point from its rays in the template views.

        Args:
            template_emb: ``(T, D, h, w)`` template embeddings.
            template_rig: the T template views (poses in the CT frame).
            points_ct: ``(N, 3)`` CT mm.
            differentiable: QR basis (training) instead of the rank-thresholded SVD.

        Returns:
            ``(N, D, T)`` orthonormal bases (masked columns are zero).
        """
        T, _, h, w = template_emb.shape
        if T != template_rig.num_views:
            raise ValueError(
                f"template_emb: {T} templates but template_rig has {template_rig.num_views} views"
            )
        uv, _, _ = template_rig.project(points_ct.to(template_rig.K.dtype))  # (T, N, 2) image px
        scale = torch.tensor(
            [w / template_rig.width, h / template_rig.height], dtype=uv.dtype, device=uv.device
        )
        e = sample_embeddings(template_emb, (uv * scale).to(template_emb.device))  # (T, N, D)
        Fm = e.permute(1, 2, 0)  # (N, D, T)
        basis, _ = subspace_basis(Fm, self.config.rtol, differentiable=differentiable)
        return basis

    @torch.no_grad()
    def locate(
        self,
        query: torch.Tensor,
        templates: torch.Tensor,
        template_rig: Rig,
        points_ct: torch.Tensor,
        return_maps: bool = False,
        chunk: int = 64,
    ) -> Located:
        """Find 3D points in a query view by subspace matching.

        Args:
            query: ``(1, C, H, W)`` or ``(C, H, W)`` the new X-ray (any intensity scale).
            templates: ``(T, C, H', W')`` template DRRs rendered at ``template_rig``'s poses.
            template_rig: the T template views.
            points_ct: ``(N, 3)`` 3D points, CT mm.
            return_maps: keep the ``(N, h, w)`` similarity maps.
            chunk: points per batch (memory bound).

        Returns:
            :class:`Located` with ``uv`` in query image px.
        """
        if query.dim() == 3:
            query = query.unsqueeze(0)
        check_shape(points_ct, "points_ct", (None, 3))
        H, W = query.shape[-2:]
        q_emb = self.embed(query)[0]  # (D, h, w)
        t_emb = self.embed(templates)
        h, w = q_emb.shape[-2:]
        uvs, confs, peaks, maps = [], [], [], []
        for s in range(0, points_ct.shape[0], chunk):
            basis = self.template_bases(t_emb, template_rig, points_ct[s : s + chunk])
            sim = subspace_similarity(q_emb, basis.to(q_emb.dtype))  # (n, h, w)
            uv, conf = refine_peaks(sim, self.config.peak_radius, self.config.temperature)
            uvs.append(uv)
            confs.append(conf)
            peaks.append(sim.reshape(sim.shape[0], -1).amax(-1))
            if return_maps:
                maps.append(sim)
        scale = torch.tensor([W / w, H / h], dtype=torch.float64)
        return Located(
            uv=torch.cat(uvs).double().cpu() * scale,
            confidence=torch.cat(confs).cpu(),
            similarity=torch.cat(peaks).cpu(),
            maps=torch.cat(maps).cpu() if return_maps else None,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write config and weights atomically to one ``.pt`` file.

        Args:
            path: destination file.
            extra: JSON-serializable provenance stored beside the weights.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": "mvxray.rayemb",
            "config": json.dumps(self.config.to_dict()),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "extra": json.dumps(extra or {}),
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> RayEmbModel:
        """Inverse of :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a saved RayEmb model.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"RayEmb model: no such file {path}")
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or payload.get("kind") != "mvxray.rayemb":
            raise ValueError(f"RayEmb model: {path} is not a saved mvxray RayEmb model")
        model = cls(RayEmbConfig.from_dict(json.loads(payload["config"])))
        model.load_state_dict(payload["state_dict"])
        model.extra = json.loads(payload["extra"])
        return model.eval()
