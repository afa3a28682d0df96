"""Training RayEmb from a CT: a bank of rendered views, 3D points, and subspace InfoNCE.

One step: pick a query view from the bank and T template views near it (principal axes within
``max_template_angle_deg``); sample 3D points inside the body that project into all of them;
span each point's subspace from its template embeddings (differentiable QR basis); score every
query pixel with ``sim(P, x) / temperature``; cross-entropy against the true projection
(a bilinear soft target over the four nearest pixel centres of the embedding grid) — InfoNCE
with every other pixel of the query as a negative. Each view of the group takes its turn as
the query against the other T (leave-one-out), which multiplies the supervision per encoder
pass by T + 1 at the cost of T + 1 similarity maps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mvxray import distributed
from mvxray.datasets.base import Volume
from mvxray.geometry import Rig, voxel_to_ct
from mvxray.lifting.rayemb.model import RayEmbModel
from mvxray.lifting.rayemb.subspace import subspace_similarity


@dataclass
class ViewBank:
    """Rendered views of one CT at known poses.

    Attributes:
        images: ``(R, 1, H, W)`` rendered views (any intensity scale).
        rig: the R views.
        points_ct: ``(P, 3)`` candidate 3D points inside the body, CT mm.
    """

    images: torch.Tensor
    rig: Rig
    points_ct: torch.Tensor


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule.

    Attributes:
        steps: optimizer steps.
        queries_per_step: query views per step.
        num_templates: T template views per query.
        points_per_query: 3D points per query.
        max_template_angle_deg: templates are bank views within this angle of the query.
        lr: AdamW learning rate (cosine-annealed).
        weight_decay: AdamW weight decay.
        margin_px: points must project this far inside every image.
        augment: photometric augmentation of every view (gamma, scale, noise).
        leave_one_out: every view of a group is a query against the others (else only the
            first), T + 1 supervised queries per encoder pass.
        max_minutes: stop after this wall time, minutes (the cosine schedule follows time then).
    """

    steps: int = 400
    queries_per_step: int = 2
    num_templates: int = 4
    points_per_query: int = 64
    max_template_angle_deg: float = 40.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    margin_px: float = 4.0
    augment: bool = True
    leave_one_out: bool = True
    max_minutes: float | None = None


def sample_body_points(
    volume: Volume,
    n: int,
    hu_min: float = 150.0,
    generator: torch.Generator | None = None,
    stride: int = 2,
) -> torch.Tensor:
    """Random 3D points inside the body (voxels at or above ``hu_min``), CT mm.

    Args:
        volume: CT in HU.
        n: number of points.
        hu_min: HU threshold (150 keeps bone and contrast-rich tissue: the structures that look
            different from every angle; lower it for soft-tissue phantoms).
        generator: RNG.
        stride: voxel subsampling of the candidate set (memory).

    Returns:
        ``(n, 3)`` float64 points, CT mm (voxel centres jittered by ±½ voxel).

    Raises:
        ValueError: no voxel reaches ``hu_min``.
    """
    d = volume.data[::stride, ::stride, ::stride]
    idx = (d >= hu_min).nonzero().to(torch.float64) * stride
    if idx.shape[0] == 0:
        raise ValueError(
            f"sample_body_points: no voxel at or above hu_min={hu_min} HU "
            f"(data range {float(volume.data.min()):.0f}..{float(volume.data.max()):.0f})"
        )
    pick = torch.randint(idx.shape[0], (n,), generator=generator)
    jitter = torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5
    return voxel_to_ct(idx[pick] + jitter * stride, volume.T_ct_from_voxel.to(torch.float64))


def _principal_axes(rig: Rig) -> torch.Tensor:
    return rig.T_cam_from_ct[:, 2, :3]


def _augment(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random gain, gamma and noise on a ``(1, 1, H, W)`` image (per-image normalization follows)."""
    x = img.clamp_min(0)
    x = x / x.amax().clamp_min(1e-6)
    gamma = math.exp((torch.rand(1, generator=g).item() - 0.5) * 0.6)
    x = x**gamma * (0.5 + torch.rand(1, generator=g).item() * 2.0)
    return x + 0.01 * torch.randn(x.shape, generator=g) * x.std()


def soft_targets(uv: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear one-hot: each position's unit mass split over its four nearest pixel centres.

    Args:
        uv: ``(N, 2)`` positions in grid px (pixel-centre rule, centre of (r, c) = (c+½, r+½)).
        h: grid rows.
        w: grid columns.

    Returns:
        ``(N, h·w)`` rows summing to 1 (row-major pixel index ``r·w + c``).

    Example:
        >>> soft_targets(torch.tensor([[1.0, 0.5]]), 1, 2).tolist()
        [[0.5, 0.5]]
    """
    c = (uv - 0.5).clamp(min=0.0)
    c = torch.minimum(c, torch.tensor([w - 1.0, h - 1.0], dtype=c.dtype, device=c.device))
    c0 = c.floor()
    f = c - c0
    target = torch.zeros(uv.shape[0], h * w, dtype=uv.dtype, device=uv.device)
    for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):
        cc = (c0[:, 0] + dc).clamp(max=w - 1).long()
        rr = (c0[:, 1] + dr).clamp(max=h - 1).long()
        wt = (f[:, 0] if dc else 1 - f[:, 0]) * (f[:, 1] if dr else 1 - f[:, 1])
        target.scatter_add_(1, (rr * w + cc)[:, None], wt[:, None])
    return target


def infonce_loss(
    model: RayEmbModel,
    embeddings: torch.Tensor,
    rig: Rig,
    points_ct: torch.Tensor,
    queries: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subspace InfoNCE over a group of views of one object, each view in turn the query.

    View ``i`` is scored against the subspaces spanned by the other views' embeddings at the
    points' projections (leave-one-out), so one encoder pass over T + 1 images supervises
    T + 1 queries.

    Args:
        model: the RayEmb model (temperature, rank threshold).
        embeddings: ``(V, D, h, w)`` embeddings of the V ≥ 2 views.
        rig: the V views.
        points_ct: ``(N, 3)`` points visible in every view, CT mm.
        queries: only the first ``queries`` views act as queries (default: all).

    Returns:
        loss: scalar mean cross-entropy (nats).
        err_px: ``(Q, N)`` distance from each arg-max pixel centre to the true projection,
            image px.
    """
    V, _, h, w = embeddings.shape
    uv, _, _ = rig.project(points_ct.to(rig.K.dtype))  # (V, N, 2) image px
    scale = torch.tensor([w / rig.width, h / rig.height], device=embeddings.device)
    g_all = uv.to(embeddings.device).float() * scale
    losses, errs = [], []
    for i in range(V if queries is None else min(queries, V)):
        others = [j for j in range(V) if j != i]
        basis = model.template_bases(
            embeddings[others], rig.subset(others), points_ct, differentiable=True
        )
        sim = subspace_similarity(embeddings[i], basis)  # (N, h, w)
        logits = sim.reshape(sim.shape[0], -1) / model.config.temperature
        losses.append(F.cross_entropy(logits, soft_targets(g_all[i], h, w)))
        with torch.no_grad():
            idx = logits.argmax(-1)
            pred = torch.stack([(idx % w).float() + 0.5, (idx // w).float() + 0.5], -1)
            errs.append(((pred - g_all[i]) / scale).norm(dim=-1))
    return torch.stack(losses).mean(), torch.stack(errs)


def _visible_in_all(rig: Rig, pts: torch.Tensor, margin: float) -> torch.Tensor:
    uv, z, _ = rig.project(pts)
    ok = (z > 0) & (uv[..., 0] > margin) & (uv[..., 1] > margin)
    ok &= (uv[..., 0] < rig.width - margin) & (uv[..., 1] < rig.height - margin)
    return ok.all(0)


def fit_rayemb(
    model: RayEmbModel,
    bank: ViewBank | Sequence[ViewBank],
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on a view bank with the subspace InfoNCE loss.

    Args:
        model: the model (trained in place, left in eval mode).
        bank: rendered views + candidate 3D points; several banks (e.g. one per case) are
            drawn from uniformly, templates always from the query's own bank.
        cfg: the schedule.
        log: optional progress printer (called every ~10 % of the steps).

    Returns:
        ``{"loss_first", "loss_last", "err_px_last", "seconds"}``: mean loss of the first and last
        10 % of the steps, mean arg-max error (image px) of the last 10 %, wall time.

    Raises:
        ValueError: fewer views in the bank than ``num_templates + 1``.
    """
    cfg = cfg or TrainConfig()
    banks = [bank] if isinstance(bank, ViewBank) else list(bank)
    for b in banks:
        if b.rig.num_views < cfg.num_templates + 1:
            raise ValueError(
                f"bank: need at least {cfg.num_templates + 1} views, found {b.rig.num_views}"
            )
    # Under torchrun each process draws its own queries (seed + rank) from the same start
    # (parameters broadcast) and gradients are averaged every step.
    info = distributed.init_from_env(model.device)
    distributed.broadcast_parameters(model, info)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(model.config.seed + info.rank)
    dev = model.device
    cos_max = math.cos(math.radians(cfg.max_template_angle_deg))
    cosangs = []
    for b in banks:
        axes = _principal_axes(b.rig)
        cosangs.append((axes @ axes.T).clamp(-1, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    window = max(1, cfg.steps // 10)
    losses: list[float] = []
    errs: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        elapsed = time.perf_counter() - t0
        progress = step / max(1, cfg.steps)
        if cfg.max_minutes is not None:
            budget_s = 60 * cfg.max_minutes
            if distributed.any_process(elapsed > budget_s, info):
                break
            progress = max(progress, elapsed / budget_s)
        # Warm-up over the first 5 %, then cosine to zero; progress is steps or time, whichever
        # runs out first, so a time budget still ends at a low learning rate.
        scale = progress / 0.05 if progress < 0.05 else 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * max(scale, 0.01)
        opt.zero_grad()
        total = torch.zeros((), device=dev)
        n_used = 0
        for _ in range(cfg.queries_per_step):
            bi = int(torch.randint(len(banks), (1,), generator=g))
            bank_i, cosang = banks[bi], cosangs[bi]
            R = bank_i.rig.num_views
            q = int(torch.randint(R, (1,), generator=g))
            near = cosang[q] >= cos_max
            near[q] = False
            cand = near.nonzero().flatten()
            if cand.numel() < cfg.num_templates:
                cand = torch.argsort(-cosang[q])[1:]
            tpl = cand[torch.randperm(cand.numel(), generator=g)[: cfg.num_templates]]
            views = [q, *tpl.tolist()]
            sub = bank_i.rig.subset(views)
            pick = torch.randint(
                bank_i.points_ct.shape[0], (cfg.points_per_query * 4,), generator=g
            )
            pts = bank_i.points_ct[pick]
            pts = pts[_visible_in_all(sub, pts, cfg.margin_px)][: cfg.points_per_query]
            if pts.shape[0] < 4:
                continue
            imgs = bank_i.images[views]
            if cfg.augment:
                imgs = torch.cat([_augment(imgs[k : k + 1], g) for k in range(len(views))])
            emb = model.embed(imgs.to(dev))
            loss, err = infonce_loss(model, emb, sub, pts, None if cfg.leave_one_out else 1)
            total = total + loss
            n_used += 1
            errs.append(float(err.mean()))
        if n_used:
            (total / n_used).backward()
            losses.append(float(total.detach()) / n_used)
        distributed.average_gradients(params, info)
        if not distributed.any_process(n_used > 0, info):
            continue
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        if log is not None and info.is_main and (step + 1) % window == 0:
            log(
                f"step {step + 1}/{cfg.steps}  loss {sum(losses[-window:]) / window:.3f}  "
                f"err {sum(errs[-window:]) / len(errs[-window:]):.2f} px"
            )
    model.eval()
    w = max(1, len(losses) // 10)
    return {
        "loss_first": sum(losses[:w]) / w if losses else float("nan"),
        "loss_last": sum(losses[-w:]) / w if losses else float("nan"),
        "err_px_last": sum(errs[-w:]) / max(1, len(errs[-w:])) if errs else float("nan"),
        "seconds": time.perf_counter() - t0,
    }


def build_bank(
    volume: Volume,
    rig: Rig,
    renderer: Callable[[Volume, Rig], torch.Tensor],
    num_points: int = 4096,
    hu_min: float = 150.0,
    seed: int = 0,
) -> ViewBank:
    """Render ``rig``'s views of ``volume`` and sample candidate 3D points.

    Args:
        volume: CT in HU.
        rig: the bank's views (e.g. perturbed copies of a rig, see
            :func:`~mvxray.lifting.rayemb.poses.perturb_poses`).
        renderer: ``(volume, rig) → (V, 1, H, W)``, normally
            :func:`mvxray.datasets.render.render_views`.
        num_points: candidate points.
        hu_min: HU threshold of the points (see :func:`sample_body_points`).
        seed: RNG seed of the points.
    """
    images = renderer(volume, rig).float().cpu()
    g = torch.Generator().manual_seed(seed)
    return ViewBank(images, rig, sample_body_points(volume, num_points, hu_min, g))


def points_in_views(
    images: torch.Tensor,
    rig: Rig,
    n: int,
    radius_mm: float = 150.0,
    quantile: float = 0.3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """3D points inside the imaged object when no CT is at hand (training from samples).

    Draws points uniformly in the cube ±``radius_mm`` about the CT origin and keeps those that
    project, in every view, onto a pixel brighter than that image's ``quantile`` (i.e. onto the
    object rather than air).

    Args:
        images: ``(V, 1, H, W)`` views.
        rig: their rig.
        n: points wanted (fewer may come back).
        radius_mm: half-size of the sampling cube, mm.
        quantile: per-image intensity quantile a pixel must exceed.
        generator: RNG.

    Returns:
        ``(≤ n, 3)`` float64 CT mm.
    """
    cand = (torch.rand(n * 8, 3, generator=generator, dtype=torch.float64) * 2 - 1) * radius_mm
    uv, _z, vis = rig.project(cand)
    ok = vis.all(0)
    flat = images[:, 0].reshape(images.shape[0], -1).float()
    thr = torch.quantile(flat, quantile, dim=1)  # (V,)
    c = uv[..., 0].clamp(0, rig.width - 1).long()
    r = uv[..., 1].clamp(0, rig.height - 1).long()
    val = torch.stack([flat[v, r[v] * rig.width + c[v]] for v in range(images.shape[0])])
    ok &= (val > thr[:, None]).all(0)
    return cand[ok][:n]
