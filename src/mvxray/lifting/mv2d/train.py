"""Training loop of the MV2D lifter: frozen 2D detections (or ground truth), batches of cases,
AdamW + linear warm-up + cosine annealing (seed 000's schedule), deep supervision, atomic
checkpoints with resume, a progress bar, and torchrun/DDP when launched that way.

Joint 2D+3D training (``joint_detector``) adds the detector's own loss on crops of a few views
of every case to the 3D loss, ``L = L2d + λ3d·L3d`` (seed 000), and steps both networks with one
optimizer; with the ``detector`` encoder they share the backbone, so L3d also shapes the
detector's features. The queries then come from the ground-truth boxes (jittered): a detector
that is still learning proposes nothing useful to lift.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mvxray import distributed
from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.heads import set_loss_3d, total_loss
from mvxray.io import atomic_torch_save
from mvxray.lifting.mv2d.inputs import collate, detections_from_truth, query_targets


@dataclass(frozen=True)
class MV2DTrainConfig:
    """Optimisation settings (defaults: seed 000's AdamW 2e-4, cosine to 1e-3·lr, warm-up from 1/3).

    Attributes:
        epochs: passes over the training cases.
        max_steps: stop after this many steps (overrides ``epochs`` when set).
        batch_size: cases per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_iters: linear warm-up steps from ``lr / 3`` (capped at a fifth of the run).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        grad_clip: gradient-norm clip (0 = off).
        box_jitter_frac: std of the noise added to each training box edge, fraction of its size.
        augment: seed 000's photometric augmentation and, when training on ground-truth boxes,
            the exact geometric one (mirror, in-plane rotation, scale with the calibration
            updated) — :class:`mvxray.datasets.augment.MultiViewAugment`.
        ckpt_every: steps between checkpoints.
        seed: random seed.
        max_minutes: when set, the run length (and so the cosine schedule) is fitted to this
            wall time (minutes), measured over the first steps; ``epochs`` / ``max_steps`` stay upper bounds.
        joint_views: joint training: views per case (drawn at random) in each step's 2D loss.
        joint_crop_px: joint training: the 2D loss sees random crops of this size (``None``:
            whole views), placed around an indication 70 % of the time, as in
            :mod:`mvxray.detectors2d.train`.
    """

    epochs: int = 24
    max_steps: int | None = None
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_iters: int = 500
    min_lr_ratio: float = 1e-3
    grad_clip: float = 10.0
    box_jitter_frac: float = 0.05
    augment: bool = True
    ckpt_every: int = 100
    seed: int = 0
    max_minutes: float | None = None
    joint_views: int = 2
    joint_crop_px: int | None = 128

    def __post_init__(self) -> None:
        if self.joint_views < 1:
            raise ValueError(f"joint_views: expected >= 1, found {self.joint_views}")


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear 1/3 → 1 over ``warmup`` steps, then cosine to ``min_ratio``.

    Example:
        >>> [round(lr_factor(s, 10, 2, 0.0), 3) for s in (0, 1, 2, 6, 10)]
        [0.333, 0.667, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return 1 / 3 + (2 / 3) * step / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def _jitter(dets: list[Detections2D], frac: float, g: torch.Generator) -> list[Detections2D]:
    if frac <= 0:
        return dets
    out = []
    for d in dets:
        wh = (d.boxes[:, 2:] - d.boxes[:, :2]).repeat(1, 2)
        b = d.boxes + torch.randn(d.boxes.shape, generator=g) * frac * wh
        b = torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1)
        out.append(Detections2D(b, d.scores, d.labels))
    return out


def train_mv2d(
    model: torch.nn.Module,
    loss_config: Any,
    train: Sequence[MultiViewSample],
    detect: Callable[[MultiViewSample], list[Detections2D]] | None,
    config: MV2DTrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    extra_state: dict[str, Any] | None = None,
    joint_detector: Any | None = None,
) -> dict[str, Any]:
    """Train ``model`` (an :class:`~mvxray.lifting.mv2d.model.MV2DNet`) in place.

    Args:
        model: the network.
        loss_config: :class:`mvxray.heads.LossConfig`.
        train: training cases (any sequence of :class:`MultiViewSample`).
        detect: the frozen 2D detector as ``sample → detections``; ``None`` uses the ground truth.
        config: optimisation settings.
        out_dir: where ``mv2d_last.pt`` (checkpoint) goes; no checkpoints when ``None``.
        resume: continue from ``out_dir/mv2d_last.pt`` when it exists.
        progress: show a progress bar.
        extra_state: stored in every checkpoint (e.g. the lifter's config).
        joint_detector: train this torch detector (``module``, ``prepare``, ``training_loss``:
            :class:`~mvxray.detectors2d.train.TrainableTorchDetector`) jointly; needs
            ``detect=None``.

    Returns:
        ``{"steps", "loss", "loss_first", "seconds", "history"}`` (history: per-step 3D
        losses) and, when joint, ``loss_2d`` (mean of the last 10 steps).
    """
    if len(train) == 0:
        raise ValueError("train: no training cases")
    if joint_detector is not None and detect is not None:
        raise ValueError("joint training lifts the ground-truth boxes: pass detect=None")
    info = distributed.init_from_env(next(model.parameters()).device)
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed + info.rank)
    # the 2D detector is frozen: detect once per case
    dets = [detect(train[i]) for i in range(len(train))] if detect is not None else []
    index = list(range(len(train)))
    sampler = distributed.make_sampler(index, info, shuffle=True, seed=config.seed)  # type: ignore[arg-type]
    loader = DataLoader(
        index,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=list,
        generator=torch.Generator().manual_seed(config.seed),
    )
    per_epoch = len(loader)
    total = config.max_steps or config.epochs * per_epoch
    plan = {"total": total, "warmup": min(config.warmup_iters, total // 5)}
    params = list(model.parameters())
    if joint_detector is not None:  # its network may already be inside (shared backbone)
        seen = {id(p) for p in params}
        joint_detector.module.to(info.device)
        params += [p for p in joint_detector.module.parameters() if id(p) not in seen]
        # two forward paths (2D loss, 3D loss) through shared weights: average gradients by
        # hand instead of DDP, which expects every parameter to be used by its own forward
        net = model
        for module in (model, joint_detector.module):
            distributed.broadcast_parameters(module, info)
    else:
        net = distributed.wrap_model(model, info)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, plan["total"], plan["warmup"], config.min_lr_ratio)
    )
    ckpt = Path(out_dir) / "mv2d_last.pt" if out_dir is not None else None
    step, history, history_2d = 0, [], []
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history = int(state["step"]), list(state["history"])
        history_2d = list(state.get("history_2d", []))
        if joint_detector is not None and "joint_detector" in state:
            joint_detector.module.load_state_dict(state["joint_detector"])
    aug = None
    if config.augment:
        from mvxray.datasets.augment import GeometricConfig, MultiViewAugment

        # a frozen detector's boxes cannot follow an image warp: geometric only on ground truth
        aug = MultiViewAugment(geometric=GeometricConfig() if detect is None else None)
    device = info.device
    model.train()
    if joint_detector is not None:
        joint_detector.module.train()
    t0 = time.time()
    bar = tqdm(total=total, initial=step, disable=not (progress and info.is_main), desc="mv2d")

    def save() -> None:
        if ckpt is not None and info.is_main:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "history": history,
                    "history_2d": history_2d,
                    "train_config": asdict(config),
                    **(
                        {"joint_detector": joint_detector.module.state_dict()}
                        if joint_detector is not None
                        else {}
                    ),
                    **(extra_state or {}),
                },
                ckpt,
            )

    epoch = step // max(per_epoch, 1)
    # the run length is re-fitted to the time budget as the step time becomes known
    start_step, upper, probes = step, plan["total"], (3, 10, 30, 100, 300, 1000)
    while step < plan["total"]:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            if step >= plan["total"]:
                break
            samples = [train[i] for i in batch]
            if aug is not None:
                samples = [aug(s) for s in samples]
            batch_dets = [
                detections_from_truth(s) if detect is None else dets[i]
                for s, i in zip(samples, batch)
            ]
            inp = collate(samples, [_jitter(d, config.box_jitter_frac, g) for d in batch_dets])
            inp = inp.to(device)
            preds, _ = net(inp)
            gt_boxes = [s.boxes3d.float().to(device) for s in samples]
            gt_labels = [s.labels.to(device) for s in samples]
            targets = query_targets(samples, inp)
            parts = [
                set_loss_3d(p, inp.valid, gt_boxes, gt_labels, loss_config, targets) for p in preds
            ]
            loss3d = torch.stack([p["loss_3d"] for p in parts]).mean()
            loss2d = torch.zeros((), device=device)
            if joint_detector is not None:
                loss2d = _loss_2d(joint_detector, samples, config, g, device)
            loss = total_loss(loss3d, loss2d, loss_config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if joint_detector is not None:
                distributed.average_gradients(params, info)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            value = distributed.all_reduce_mean(float(loss3d.detach()), info)
            history.append(value)
            if joint_detector is not None:
                history_2d.append(distributed.all_reduce_mean(float(loss2d.detach()), info))
            bar.update(1)
            bar.set_postfix(loss3d=f"{value:.3f}", reg=f"{float(parts[-1]['reg'].detach()):.3f}")
            if step % config.ckpt_every == 0:
                save()
            done = step - start_step
            if config.max_minutes and done in probes:
                # the same estimate on every process, so they all stop at the same step
                per_step = distributed.all_reduce_mean((time.time() - t0) / done, info)
                fit = start_step + int(60 * config.max_minutes / max(per_step, 1e-6))
                plan["total"] = max(step + 1, min(upper, fit))
                if done == probes[0]:
                    plan["warmup"] = min(config.warmup_iters, plan["total"] // 5)
                bar.total = plan["total"]
        epoch += 1
    bar.close()
    save()
    distributed.barrier(info)
    out = {
        "steps": step,
        "loss": _tail_mean(history),
        "loss_first": history[0] if history else math.nan,
        "seconds": time.time() - t0,
        "history": history,
    }
    if joint_detector is not None:
        out["loss_2d"] = _tail_mean(history_2d)
    return out


def _tail_mean(values: list[float], n: int = 10) -> float:
    return sum(values[-n:]) / len(values[-n:]) if values else math.nan


def _loss_2d(
    detector: Any,
    samples: list[MultiViewSample],
    config: MV2DTrainConfig,
    g: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """The detector's own training loss on ``joint_views`` random views of every case, cut
    into crops as in :func:`mvxray.detectors2d.train.training_batch` (the samples are
    already augmented)."""
    from mvxray.detectors2d.train import training_batch

    images, boxes = [], []
    for s in samples:
        V = s.images.shape[0]
        for v in torch.randperm(V, generator=g)[: min(config.joint_views, V)].tolist():
            images.append(s.images[v, :1].float())
            boxes.append(s.boxes2d[v][s.visible2d[v].bool()].float().reshape(-1, 4))
    x, b = training_batch(detector, images, boxes, config.joint_crop_px, g, augment=False)
    return detector.training_loss(x.to(device), [bb.to(device) for bb in b])
