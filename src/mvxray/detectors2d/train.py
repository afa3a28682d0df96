"""The training loop shared by mvxray's torch detectors (``faster_rcnn``).

The seed's recipe by default — AdamW 2e-4, a linear warm-up over 500 iterations from 1/3 of the
rate, then cosine annealing — with X-ray augmentations (:mod:`mvxray.detectors2d.augment`),
random crops biased towards the indications (small objects need many positive crops, and crops
make a CPU step cheap), atomic checkpoints every ``checkpoint_every`` iterations, ``resume``, a
progress bar, seeded determinism, CPU by default and CUDA when present.

A detector plugs in by exposing ``module`` (its ``nn.Module``), ``prepare(images)`` (raw full
``(B, 1, H, W)`` views → network channels and scale: normalization must see the whole view, so
crops are cut *after* it), ``training_loss(x, boxes)`` (prepared crops and their ``(N_b, 4)`` px
boxes → scalar loss) and ``save``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from mvxray.detectors2d.augment import BLUR_PX, photometric, random_crop, random_flip_rotate
from mvxray.detectors2d.base import SCALE_TOLERANCE, rescale_views, rig_px_mm
from mvxray.distributed import (
    any_process,
    average_gradients,
    broadcast_parameters,
    init_from_env,
)
from mvxray.io import atomic_torch_save


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`fit_detector`.

    Attributes:
        epochs: passes over all training views (ignored when ``max_iters`` is set).
        max_iters: total optimizer steps (overrides ``epochs``).
        max_minutes: wall-time budget: training stops (and saves) when it is spent, and the
            cosine anneals over whichever of iterations and time runs out first.
        batch_size: images (views, or crops of them) per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_iters: linear warm-up length, iterations.
        warmup_factor: the warm-up starts at ``warmup_factor · lr``.
        min_lr_factor: the cosine ends at ``min_lr_factor · lr``.
        crop_px: train on random ``crop_px`` squares (``None`` = whole views).
        crop_positive: fraction of crops placed around a ground-truth box.
        crops_per_view: crops cut from each prepared view (needs ``crop_px``): preparing a
            whole 256-px view per crop was a third of a YOLO step on 128-px crops, so several
            crops per view make a step cheaper; a step then draws ``batch_size /
            crops_per_view`` views.
        precision: ``"fp32"``; ``"bf16"`` runs the forward pass under bfloat16 autocast (CPUs
            with AMX / AVX-512-BF16 and recent GPUs make a step cheaper, others slower);
            ``"auto"``: bf16 where the device has native bf16, else fp32 (:func:`use_bf16`).
        augment: X-ray augmentations (flips / 90° rotations update the boxes; gamma, noise, blur).
        blur_px: the augmentation's largest Gaussian blur σ, in pixels of the raw view.
        grad_clip: max gradient norm.
        checkpoint_every: write ``last.pt`` every this many iterations (and at the end).
        seed: seeds torch and the sampler.
        device: ``"cpu"``, ``"cuda"``, ... (``None``: CUDA when present, else CPU).
        progress: show a progress bar.
    """

    epochs: int = 12
    max_iters: int | None = None
    max_minutes: float | None = None
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 1 / 3
    min_lr_factor: float = 0.01
    crop_px: int | None = None
    crop_positive: float = 0.7
    crops_per_view: int = 1
    precision: str = "fp32"
    augment: bool = True
    blur_px: float = BLUR_PX
    grad_clip: float = 10.0
    checkpoint_every: int = 200
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size: expected >= 1, found {self.batch_size}")
        if self.max_iters is None and self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs: expected >= 1, found {self.epochs}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"TrainConfig.max_iters: expected >= 1, found {self.max_iters}")
        k = self.crops_per_view
        if k < 1 or self.batch_size % k or (k > 1 and self.crop_px is None):
            raise ValueError(
                "TrainConfig.crops_per_view: expected a divisor of batch_size, and 1 without "
                f"crop_px; found {k} with batch_size={self.batch_size}, crop_px={self.crop_px}"
            )
        if self.blur_px < 0:
            raise ValueError(f"TrainConfig.blur_px: expected >= 0, found {self.blur_px}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(
                f"TrainConfig.precision: expected 'fp32', 'bf16' or 'auto', found {self.precision!r}"
            )

    @property
    def views_per_step(self) -> int:
        """Views drawn per step: each yields ``crops_per_view`` of the ``batch_size`` images."""
        return self.batch_size // self.crops_per_view


class TrainableTorchDetector(Protocol):
    """What :func:`fit_detector` needs from a detector."""

    name: str
    config: Any  # a frozen dataclass with ``object_px_mm`` (training records the views' scale)

    @property
    def module(self) -> nn.Module: ...

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, float]: ...

    def training_loss(self, x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor: ...

    def save(self, path: str | Path) -> None: ...


def collect_views(
    dataset: Any, object_px_mm: float | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """All views of a dataset of :class:`~mvxray.datasets.base.MultiViewSample` → per view a
    ``(1, H, W)`` float32 image and its ``(N, 4)`` visible ground-truth boxes (px), shown at one
    scale at the object, and that scale (mm per pixel): ``object_px_mm`` (a detector's trained
    scale, when fine-tuning) or else the median of the views' :attr:`Rig.object_pixel_mm`.
    Views of another scale are resampled to it (:func:`~mvxray.detectors2d.base.rescale_views`)
    with their boxes — as :func:`~mvxray.detectors2d.base.predict_sample` will show them to the
    trained detector.

    Raises:
        ValueError: the dataset is empty.
    """
    images, boxes, scales = [], [], []
    for sample in dataset:
        scale = rig_px_mm(sample.rig)
        for v in range(sample.images.shape[0]):
            images.append(sample.images[v, :1].float().cpu())
            boxes.append(sample.boxes2d[v][sample.visible2d[v].bool()].float().cpu().reshape(-1, 4))
            scales.append(scale)
    if not images:
        raise ValueError("training set is empty: no views to train on")
    target = object_px_mm or float(torch.tensor(scales).median())
    for i, scale in enumerate(scales):
        factor = scale / target
        if abs(factor - 1.0) > SCALE_TOLERANCE:
            H, W = images[i].shape[-2:]
            images[i] = rescale_views(images[i], factor)
            h, w = images[i].shape[-2:]
            boxes[i] = boxes[i] * torch.tensor([w / W, h / H, w / W, h / H])
    return images, boxes, target


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (:attr:`TrainConfig.precision`) means bfloat16 autocast on ``device``."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":  # emulated bf16 (pre-Ampere GPUs) would be slower, not faster
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:  # private but the only probe: AMX tiles or AVX-512-BF16 run bf16 natively
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def lr_factor(cfg: TrainConfig, it: int, progress: float) -> float:
    """The learning-rate factor: linear warm-up over ``warmup_iters`` iterations from
    ``warmup_factor``, then cosine annealing over the schedule's ``progress`` ∈ [0, 1] after it.

    Example:
        >>> cfg = TrainConfig(warmup_iters=10, min_lr_factor=0.0)
        >>> round(lr_factor(cfg, 0, 0.0), 3), lr_factor(cfg, 10, 0.0), round(lr_factor(cfg, 60, 0.5), 3)
        (0.333, 1.0, 0.5)
    """
    if it < cfg.warmup_iters:
        return cfg.warmup_factor + (1 - cfg.warmup_factor) * it / cfg.warmup_iters
    t = min(1.0, max(0.0, progress))
    return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))


def training_batch(
    detector: TrainableTorchDetector,
    images: list[torch.Tensor],
    boxes: list[torch.Tensor],
    crop_px: int | None,
    g: torch.Generator,
    augment: bool,
    crop_positive: float = 0.7,
    crops_per_view: int = 1,
    blur_px: float = BLUR_PX,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Prepared (normalized on the *whole* view), augmented, cropped inputs and their boxes.

    Args:
        detector: prepares the views (its normalization and channels).
        images: raw ``(1, H, W)`` views.
        boxes: their ``(N, 4)`` px boxes.
        crop_px: random square crops of this size (``None`` or larger than a view: whole views).
        g: the sampling generator.
        augment: photometric before and flips / quarter turns after preparation.
        crop_positive: fraction of crops placed around a ground-truth box.
        crops_per_view: crops cut from each prepared view (each with its own flip / turn).
        blur_px: the photometric blur's largest σ, px.
    """
    ims, bxs = [], []
    with torch.no_grad():
        for raw, bx in zip(images, boxes):
            raw = photometric(raw, g, blur_px=blur_px) if augment else raw
            x, scale = detector.prepare(raw[None])
            for _ in range(crops_per_view):
                im, b = x[0], bx.to(x.device) * scale
                if crop_px is not None and crop_px < max(im.shape[-2:]):
                    im, b = random_crop(im, b, crop_px, crop_positive, g)
                if augment:
                    im, b = random_flip_rotate(im, b, g)
                ims.append(im)
                bxs.append(b)
    return torch.stack(ims), bxs


def fit_detector(
    detector: TrainableTorchDetector,
    train: Any,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Train ``detector`` in place on the views of ``train``.

    Args:
        detector: a torch detector (see :class:`TrainableTorchDetector`).
        train: iterable of :class:`~mvxray.datasets.base.MultiViewSample`.
        config: the schedule.
        out: directory for ``last.pt`` (resumable training state) and ``model.pt`` (the
            detector); ``None`` writes nothing.
        resume: continue from ``out/last.pt`` if it exists.

    Returns:
        ``{"loss_initial", "loss_final", "iterations", "seconds", "processes"}``: the loss on a
        fixed probe batch (same crops, same RNG) before and after training, steps done, wall
        time, and the number of processes that trained together (each on its own batch).
    """
    cfg = config or TrainConfig()
    # Under torchrun every process draws the same global batches and trains on its share of
    # each; gradients are averaged every step (see mvxray.distributed).
    info = init_from_env(cfg.device)
    device = info.device
    torch.manual_seed(cfg.seed)
    images, boxes, object_px_mm = collect_views(train, detector.config.object_px_mm)
    if detector.config.object_px_mm is None:
        # The scale predict_sample will show it views at, and the height its filters refer to.
        heights = sorted(int(im.shape[-2]) for im in images)
        detector.config = replace(
            detector.config,
            object_px_mm=round(object_px_mm, 6),
            filter_height=heights[len(heights) // 2],
        )
    # The largest box a crop can hold, in view px (configs without the field are left alone).
    if cfg.crop_px is not None and getattr(detector.config, "max_box_px", 0) is None:
        _, scale = detector.prepare(images[0][None])  # crops are cut from prepared views
        if cfg.crop_px < scale * max(images[0].shape[-2:]):
            detector.config = replace(detector.config, max_box_px=cfg.crop_px / scale)
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(images)
    per_epoch = max(1, n // cfg.views_per_step)
    total = cfg.max_iters or cfg.epochs * per_epoch
    module = detector.module.to(device)
    broadcast_parameters(module, info)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    probe_idx = list(range(min(cfg.views_per_step, n)))
    probe = training_batch(
        detector,
        [images[i] for i in probe_idx],
        [boxes[i] for i in probe_idx],
        cfg.crop_px,
        torch.Generator().manual_seed(cfg.seed + 1),
        False,
        cfg.crop_positive,
        cfg.crops_per_view,
    )
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=use_bf16(cfg.precision, device))

    def probe_loss() -> float:
        state = torch.get_rng_state()
        torch.manual_seed(cfg.seed + 2)  # the samplers inside the loss draw from torch's RNG
        module.train()
        for m in module.modules():  # losses need training mode; batch norm must not update
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        with torch.no_grad(), autocast:
            value = float(
                detector.training_loss(probe[0].to(device), [b.to(device) for b in probe[1]])
            )
        torch.set_rng_state(state)
        return value

    it, loss_initial, elapsed0 = 0, None, 0.0
    out_dir = Path(out) if out is not None else None
    last = out_dir / "last.pt" if out_dir is not None else None
    if resume and last is not None and last.is_file():
        st = torch.load(last, map_location="cpu", weights_only=True)
        module.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        g.set_state(st["sampler_rng"])
        torch.set_rng_state(st["torch_rng"])
        it, loss_initial, elapsed0 = (
            int(st["iteration"]),
            st["loss_initial"],
            float(st["elapsed_s"]),
        )
    if loss_initial is None:
        loss_initial = probe_loss()

    def checkpoint() -> None:
        if last is None or not info.is_main:
            return
        atomic_torch_save(
            {
                "model": module.state_dict(),
                "optimizer": opt.state_dict(),
                "sampler_rng": g.get_state(),
                "torch_rng": torch.get_rng_state(),
                "iteration": it,
                "loss_initial": loss_initial,
                "elapsed_s": elapsed0 + time.monotonic() - t0,
                "config": asdict(cfg),
            },
            last,
        )

    from tqdm.auto import tqdm

    budget_s = 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    bar = tqdm(
        total=total if budget_s is None else None,  # under a time budget: count, no fake ETA
        initial=it,
        disable=not (cfg.progress and info.is_main),
        desc=f"train {detector.name}" + (f" x{info.world_size} processes" if info.enabled else ""),
    )
    t0 = time.monotonic()
    order: list[int] = []
    running = float("nan")
    module.train()
    while it < total:
        elapsed = elapsed0 + time.monotonic() - t0
        if any_process(budget_s is not None and elapsed > budget_s, info):
            break
        # Under a time budget the cosine follows whichever runs out first: iterations or time.
        span = max(1, total - cfg.warmup_iters)
        progress = (it - cfg.warmup_iters) / span
        if budget_s is not None:
            progress = max(progress, elapsed / budget_s)
        lr = cfg.lr * lr_factor(cfg, it, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        step = cfg.views_per_step * info.world_size
        while len(order) < step:
            order += torch.randperm(n, generator=g).tolist()
        idx, order = order[:step][info.rank :: info.world_size], order[step:]
        ims, bxs = training_batch(
            detector,
            [images[i] for i in idx],
            [boxes[i] for i in idx],
            cfg.crop_px,
            g,
            cfg.augment,
            cfg.crop_positive,
            cfg.crops_per_view,
            cfg.blur_px,
        )
        with autocast:
            loss = detector.training_loss(ims.to(device), [b.to(device) for b in bxs])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train {detector.name}: non-finite loss at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params, info)
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        it += 1
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.9 * running + 0.1 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.1e}")
        if it % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    seconds = elapsed0 + time.monotonic() - t0
    checkpoint()
    module.eval()
    loss_final = probe_loss()
    module.eval()
    if out_dir is not None and info.is_main:
        detector.save(out_dir / "model.pt")
    return {
        "loss_initial": float(loss_initial),
        "loss_final": loss_final,
        "iterations": float(it),
        "seconds": seconds,
        "processes": float(info.world_size),
    }
