"""RayEmb (seed 002): ray-embedding subspace matching of 3D points into X-ray views.

Modules: :mod:`.encoder` (per-pixel embedding networks), :mod:`.subspace` (the projector
``P = F F⁺`` and the similarity), :mod:`.model` (:class:`RayEmbModel`: locate 3D points in a new
view), :mod:`.train` (view bank + subspace InfoNCE), :mod:`.poses` (pose perturbations and
template orbits) and :mod:`.lifter` (:class:`RayEmbLifter`, the ``rayemb`` lifting head).
"""

from __future__ import annotations

from mvxray.lifting.rayemb.encoder import ENCODERS, EncoderConfig, normalize_images
from mvxray.lifting.rayemb.model import Located, RayEmbConfig, RayEmbModel
from mvxray.lifting.rayemb.subspace import (
    projection_matrix,
    refine_peaks,
    subspace_basis,
    subspace_similarity,
)

__all__ = [
    "ENCODERS",
    "EncoderConfig",
    "Located",
    "RayEmbConfig",
    "RayEmbModel",
    "normalize_images",
    "projection_matrix",
    "refine_peaks",
    "subspace_basis",
    "subspace_similarity",
]
