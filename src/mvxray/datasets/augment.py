"""Augmentation of multi-view samples that keeps the calibration exact.

**Photometric** (seed 000's set, each with p = 0.5, per view): brightness, contrast, gamma,
Gaussian noise, Gaussian blur and salt-and-pepper from ``kornia.augmentation``; vignetting is
written here because kornia has no radial fall-off (its ``RandomGaussianIllumination`` adds an
off-centre Gaussian highlight/shadow, not a darkening towards the corners). kornia's intensity
ops assume images in [0, 1], so each view is min–max normalized, augmented, and mapped back to
its own range (the physical scale of the line integrals survives).

**Geometric** (per view, exact): every image warp is matched by a change of ``K`` and
``T_cam_from_ct`` such that projecting the (possibly mirrored) CT scene with the new calibration
gives the warped image — the 2D boxes are re-projected from the 3D boxes, so 2D/3D ground truth stay
identical by construction.

* *Scale* ``s`` about the image centre ``c0``: ``u' = s (u − c0) + c0`` ⇔ ``f' = s f``,
  ``c' = s (c − c0) + c0``; T unchanged.
* *In-plane rotation* θ about ``c0``: ``u' = R_θ (u − c0) + c0`` ⇔ the camera turns by θ about its
  z axis (``T' = R_z(θ) T``) and ``c' = R_θ (c − c0) + c0`` (needs square pixels, fx = fy).
* *Flips.* A single image flip is a mirror image: no rigid camera with fx, fy > 0 and points in
  front (z > 0) produces it from the same scene (``F K [R|t]`` factors as ``K' [R'|t']`` only with
  det R' = −1, or with every point behind the camera). It *is* exactly the image of the
  **mirrored scene**: with the CT frame mirrored by ``S = diag(−1, 1, 1)`` (x → −x; axis-aligned
  boxes stay axis-aligned), a horizontal flip ``u' = W − u`` is the camera ``T' = D T S`` with
  ``D = diag(−1, 1, 1)`` in the camera frame (det D·det S = +1, so T' is rigid, z unchanged) and
  ``c'_x = W − c_x``; a vertical flip uses ``D = diag(1, −1, 1)`` and ``c'_y = H − c_y``. Because
  S is shared by all views, a mirrored sample flips **every** view, each independently
  horizontally or vertically (the two differ by a 180° in-plane rotation, itself exact). The 3D
  boxes are mirrored with S and ``meta["T_aug_from_ct"]`` records S, so other CT-frame quantities
  can follow.

Without known 3D boxes (hand-written 2D-only cases) the 2D boxes are transformed directly
(corners mapped, enclosing box, clipped): exact for flips and scale, the enclosing box of the
rotated box for rotations. Rendered-mask boxes (``meta["boxes2d_mask"]``) are transformed the same
way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from kornia import augmentation as KA
from kornia.geometry.transform import warp_affine

from mvxray.datasets.base import MultiViewSample
from mvxray.geometry import Rig, project_boxes3d


@dataclass(frozen=True)
class PhotometricConfig:
    """Seed 000's photometric set; ranges apply to views min–max normalized to [0, 1]."""

    p: float = 0.5
    brightness: tuple[float, float] = (0.85, 1.15)
    contrast: tuple[float, float] = (0.8, 1.2)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    blur_sigma: tuple[float, float] = (0.1, 1.2)
    salt_pepper_amount: tuple[float, float] = (0.001, 0.01)
    vignetting: tuple[float, float] = (0.1, 0.4)  # darkening at the image corners


@dataclass(frozen=True)
class GeometricConfig:
    """Exact geometric augmentation (see the module docstring); probabilities per sample/view."""

    p_mirror: float = 0.5  # per sample: mirror the CT frame and flip every view
    p_rotate: float = 0.5  # per view
    max_rotation_deg: float = 15.0
    p_scale: float = 0.5  # per view
    scale: tuple[float, float] = (0.85, 1.15)


def _vignette(x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Multiply ``(V, C, H, W)`` by ``1 − strength · (r / r_corner)²`` about the image centre."""
    H, W = x.shape[-2:]
    v = torch.arange(H, device=x.device, dtype=x.dtype) + 0.5 - H / 2
    u = torch.arange(W, device=x.device, dtype=x.dtype) + 0.5 - W / 2
    r2 = (v[:, None] ** 2 + u[None] ** 2) / ((H / 2) ** 2 + (W / 2) ** 2)
    return x * (1 - strength.view(-1, 1, 1, 1).to(x) * r2)


class Photometric(torch.nn.Module):
    """Per-view photometric augmentation of ``(V, C, H, W)`` images (any intensity scale)."""

    def __init__(self, config: PhotometricConfig = PhotometricConfig()) -> None:
        super().__init__()
        c = config
        self.config = c
        self.ops = torch.nn.ModuleList(
            [
                KA.RandomBrightness(c.brightness, p=c.p),
                KA.RandomContrast(c.contrast, p=c.p),
                KA.RandomGamma(c.gamma, p=c.p),
                KA.RandomGaussianNoise(std=c.noise_std, p=c.p),
                KA.RandomGaussianBlur(5, c.blur_sigma, p=c.p),
                KA.RandomSaltAndPepperNoise(c.salt_pepper_amount, p=c.p),
            ]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        span = (hi - lo).clamp(min=torch.finfo(images.dtype).tiny)
        x = (images - lo) / span
        C = x.shape[1]
        if C != 1 and C != 3:  # kornia's intensity ops expect 1 or 3 channels
            raise ValueError(f"images: expected 1 or 3 channels, found {C}")
        for op in self.ops:
            x = op(x)
        V = x.shape[0]
        apply = torch.rand(V, device=x.device) < self.config.p
        lo_s, hi_s = self.config.vignetting
        strength = (lo_s + (hi_s - lo_s) * torch.rand(V, device=x.device)) * apply
        x = _vignette(x, strength)
        return x * span + lo


def _mirror_boxes(boxes3d: torch.Tensor) -> torch.Tensor:
    """Mirror CT boxes by x → −x: (xmin, …, xmax, …) → (−xmax, …, −xmin, …)."""
    out = boxes3d.clone()
    out[..., 0], out[..., 3] = -boxes3d[..., 3], -boxes3d[..., 0]
    return out


def _map_boxes2d(boxes: torch.Tensor, A: torch.Tensor, b: torch.Tensor, H: int, W: int):
    """Boxes ``(V, M, 4)`` through ``u' = A_v u + b_v``: enclosing box of the 4 corners, clipped."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack(
        [torch.stack(p, -1) for p in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], -2
    )  # (V, M, 4, 2)
    mapped = torch.einsum("vij,vmkj->vmki", A.to(boxes), corners) + b.to(boxes)[:, None, None]
    out = torch.cat([mapped.amin(-2), mapped.amax(-2)], -1)
    lim = torch.tensor([W, H, W, H], dtype=out.dtype)
    return torch.minimum(out.clamp(min=0), lim)


class MultiViewAugment:
    """Geometric (exact calibration update) then photometric augmentation of a sample.

    Args:
        geometric: configuration, or None to skip.
        photometric: configuration, or None to skip.

    Call with ``(sample, seed=None)``; a seed makes the draw reproducible (it uses its own RNG
    state and leaves the global one untouched). Parameters are drawn independently per view
    (the mirror, a property of the 3D scene, per sample).
    """

    def __init__(
        self,
        geometric: GeometricConfig | None = GeometricConfig(),
        photometric: PhotometricConfig | None = PhotometricConfig(),
    ) -> None:
        self.geometric = geometric
        self.photometric = Photometric(photometric) if photometric is not None else None

    def __call__(self, sample: MultiViewSample, seed: int | None = None) -> MultiViewSample:
        if seed is None:
            return self._apply(sample)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._apply(sample)

    def _apply(self, sample: MultiViewSample) -> MultiViewSample:
        out = self._geometric(sample) if self.geometric is not None else sample
        if self.photometric is not None:
            out = replace(out, images=self.photometric(out.images.float()))
        return out

    def _geometric(self, sample: MultiViewSample) -> MultiViewSample:
        g = self.geometric if self.geometric is not None else GeometricConfig(0.0, 0.0, 0.0, 0.0)
        rig = sample.rig
        V, H, W = rig.num_views, rig.height, rig.width
        K = rig.K.to(torch.float64).clone()
        T = rig.T_cam_from_ct.to(torch.float64).clone()
        mirror = bool(torch.rand(()) < g.p_mirror)
        horizontal = torch.rand(V) < 0.5
        rotate = torch.rand(V) < g.p_rotate
        theta = torch.deg2rad((torch.rand(V, dtype=torch.float64) * 2 - 1) * g.max_rotation_deg)
        theta = torch.where(rotate, theta, torch.zeros_like(theta))
        do_scale = torch.rand(V) < g.p_scale
        s = g.scale[0] + (g.scale[1] - g.scale[0]) * torch.rand(V, dtype=torch.float64)
        s = torch.where(do_scale, s, torch.ones_like(s))
        if bool(rotate.any()) and not torch.allclose(K[:, 0, 0], K[:, 1, 1], rtol=1e-9):
            raise ValueError("in-plane rotation needs square pixels (fx == fy); set p_rotate=0")

        # Image map u' = A u + b per view (our pixel coordinates), composed step by step.
        A = torch.eye(2, dtype=torch.float64).repeat(V, 1, 1)
        b = torch.zeros(V, 2, dtype=torch.float64)
        S4 = torch.eye(4, dtype=torch.float64)
        if mirror:
            S4[0, 0] = -1.0
            D = torch.ones(V, 3, dtype=torch.float64)
            D[horizontal, 0] = -1.0
            D[~horizontal, 1] = -1.0
            D4 = torch.diag_embed(torch.cat([D, torch.ones(V, 1, dtype=torch.float64)], -1))
            T = D4 @ T @ S4
            K[horizontal, 0, 2] = W - K[horizontal, 0, 2]
            K[~horizontal, 1, 2] = H - K[~horizontal, 1, 2]
            A = torch.diag_embed(D[:, :2])
            b = torch.stack(
                [torch.where(horizontal, W, 0.0), torch.where(horizontal, 0.0, H)], -1
            ).to(torch.float64)
        c0 = torch.tensor([W / 2, H / 2], dtype=torch.float64)
        cos, sin = torch.cos(theta), torch.sin(theta)
        Rt = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        Rs = s[:, None, None] * Rt  # (V, 2, 2)
        Rz = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
        Rz[:, :2, :2] = Rt
        T = Rz @ T
        K[:, 0, 0] *= s
        K[:, 1, 1] *= s
        K[:, :2, 2] = torch.einsum("vij,vj->vi", Rs, K[:, :2, 2] - c0) + c0
        A = Rs @ A
        b = torch.einsum("vij,vj->vi", Rs, b - c0) + c0

        # Warp: kornia's warp_affine maps source to destination in pixel *index* coordinates
        # (index = u − 0.5), so u' = A u + b becomes i' = A i + (A·½ + b − ½).
        half = torch.full((V, 2), 0.5, dtype=torch.float64)
        M = torch.cat([A, (torch.einsum("vij,vj->vi", A, half) + b - half)[..., None]], -1)
        images = warp_affine(
            sample.images.float(), M.float().to(sample.images.device), (H, W), align_corners=True
        )

        new_rig = Rig(K, T, H, W, rig.pixel_mm.to(torch.float64).clone())
        boxes3d = sample.boxes3d.to(torch.float64)
        known = bool(torch.isfinite(boxes3d).all())
        if mirror and known:
            boxes3d = _mirror_boxes(boxes3d)
        if known and boxes3d.shape[0] > 0:
            boxes2d, ok = project_boxes3d(boxes3d, K, T, H, W)
        else:
            boxes2d = _map_boxes2d(sample.boxes2d.to(torch.float64), A, b, H, W)
            ok = (boxes2d[..., 2] > boxes2d[..., 0]) & (boxes2d[..., 3] > boxes2d[..., 1])
        meta: dict[str, Any] = dict(sample.meta)
        if "boxes2d_mask" in meta:
            meta["boxes2d_mask"] = _map_boxes2d(
                torch.as_tensor(meta["boxes2d_mask"], dtype=torch.float64), A, b, H, W
            )
        meta["T_aug_from_ct"] = S4
        meta["augment"] = {
            "mirror_ct_x": mirror,
            "flip": [("h" if bool(h) else "v") if mirror else None for h in horizontal],
            "rotation_deg": [math.degrees(float(t)) for t in theta],
            "scale": [float(x) for x in s],
        }
        return replace(
            sample,
            images=images,
            rig=new_rig,
            boxes3d=boxes3d.to(sample.boxes3d.dtype),
            boxes2d=boxes2d.to(sample.boxes2d.dtype),
            visible2d=sample.visible2d & ok,
            meta=meta,
        )
