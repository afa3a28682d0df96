"""Multi-process training under ``torchrun``: DistributedDataParallel with gloo on CPU, NCCL on GPU.

Every training loop (2D detectors, MV2D, RayEmb) calls :func:`init_from_env` once; without
``torchrun`` (``WORLD_SIZE`` unset or 1) everything is a no-op and training runs in one process.
:func:`spawn` starts such a job from Python (what ``torchrun --standalone`` does from the shell).
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes checkpoints and logs).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def init_from_env(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: force a device; default CUDA (``cuda:LOCAL_RANK``) when available, else CPU.

    Returns:
        This process's :class:`DistInfo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        # A process that exits with the group alive can abort ("terminate called without an
        # active exception"): gloo's worker threads free their tensors while the interpreter
        # is torn down (pytorch/pytorch#190489). Leave it while Python is still alive, so a
        # user's script that only calls ``fit`` under torchrun exits cleanly.
        atexit.register(_leave_group)
    return DistInfo(rank, world, local, dev)


def _leave_group() -> None:
    """Destroy the default process group if it still exists (a no-op after :func:`shutdown`)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when several processes train, else return it unchanged."""
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=True
    )


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what gets saved)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def make_sampler(
    dataset: Dataset[Any], info: DistInfo, shuffle: bool, seed: int
) -> DistributedSampler[Any] | None:
    """A sampler that gives each process its own shard of the dataset (``None`` in one process)."""
    if not info.enabled:
        return None
    return DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed
    )


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Average a scalar over processes (for logging)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's parameters and buffers (same start everywhere)."""
    if not info.enabled:
        return
    for t in module.state_dict().values():
        dist.broadcast(t, src=0)


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce and average the gradients of ``params`` across processes, in one flat buffer.

    This is the synchronization DistributedDataParallel performs after ``backward``; the
    detector loops call it directly because their losses are methods (ultralytics'
    ``model.loss``, torchvision's train-mode forward) that DDP's forward hook cannot wrap.
    """
    if not info.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def any_process(flag: bool, info: DistInfo) -> bool:
    """True if ``flag`` is true on any process (so all stop together, e.g. on a time budget)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    """Wait for every process."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled:
        _leave_group()


def spawn(fn: Callable[..., None], processes: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``processes`` local processes that form one training job.

    Each process gets torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``), so the training loops join the group through
    :func:`init_from_env` as they do under ``torchrun --standalone``; the group is left when
    ``fn`` returns. ``fn`` must be picklable (a module-level function). A process that raises
    stops the job and the error is raised here.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, found {processes}")
    with socket.socket() as s:  # a free port for the rendezvous (the OS picks one)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(
        _spawned, args=(processes, port, fn, args), nprocs=processes, join=True
    )


def _spawned(
    rank: int, processes: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]
) -> None:
    """One process of :func:`spawn`."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(processes),
        LOCAL_WORLD_SIZE=str(processes),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        fn(*args)
    finally:
        _leave_group()
