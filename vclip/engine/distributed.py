"""Process-group setup for ``torchrun`` and helpers that also work in a single process.

``torchrun`` (single or multi node) exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and initialises the default
process group (``nccl`` when the device is CUDA, ``gloo`` otherwise). Without ``WORLD_SIZE`` it is a
plain single process and no process group is created; every helper below then behaves as the
one-rank case (``rank() == 0``, ``all_gather_object(x) == [x]``, ...).
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vclip.errors import ConfigError

__all__ = [
    "DistInfo", "init_distributed", "is_dist", "is_main", "barrier", "world_size", "rank",
    "local_rank", "all_gather_object", "all_reduce_sum", "all_gather_with_grad", "cleanup",
]

log = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ConfigError(
                f"environment variable {name} is not set, but WORLD_SIZE is: launch with torchrun "
                f"(it sets {', '.join(_TORCHRUN_VARS)}, LOCAL_RANK)"
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a valid torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine (use device=cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) visible "
                f"(LOCAL_RANK={local_rank}; start at most one process per GPU)"
            )
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = "auto", *, timeout_s: float | None = None) -> DistInfo:
    """Set up this process. ``device``: ``auto`` (CUDA ``LOCAL_RANK`` if available, else CPU),
    ``cpu``, ``cuda`` (→ ``cuda:LOCAL_RANK``) or an explicit ``cuda:N``. Under torchrun the default
    process group is initialised from the environment (``env://``); calling again once it exists
    returns the current info."""
    if "WORLD_SIZE" not in os.environ:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=_resolve_device(device, 0))
    world = _env_int("WORLD_SIZE")
    r = _env_int("RANK")
    local = _env_int("LOCAL_RANK", default=r)
    if world < 1 or not 0 <= r < world:
        raise ConfigError(f"environment RANK={r} / WORLD_SIZE={world} are inconsistent")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} is not set, but WORLD_SIZE is: launch with torchrun")
    dev = _resolve_device(device, local)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE is set but this torch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if timeout_s is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, init_method="env://", rank=r, world_size=world, **kwargs)
        log.debug("process group initialised: backend=%s rank=%d/%d local_rank=%d device=%s",
                  backend, r, world, local, dev)
    return DistInfo(rank=r, world_size=world, local_rank=local, device=dev)


def is_dist() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", rank())) if is_dist() else 0


def is_main() -> bool:
    return rank() == 0


def _nccl() -> bool:
    return is_dist() and dist.get_backend() == "nccl"


def barrier() -> None:
    if not is_dist():
        return
    if _nccl():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in a single process."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it (unchanged in a single process). A CPU
    tensor under NCCL is reduced through the current CUDA device and copied back."""
    if not is_dist():
        return tensor
    if _nccl() and not tensor.is_cuda:
        tmp = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tmp, op=dist.ReduceOp.SUM)
        tensor.copy_(tmp)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenation over ranks along dim 0; backward: the gathered gradient summed over ranks
    (all-reduce), this rank's rows returned."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, me = dist.get_world_size(), dist.get_rank()
        comm = x.detach().contiguous()
        if _nccl() and not comm.is_cuda:
            comm = comm.to(torch.device("cuda", torch.cuda.current_device()))
        size = torch.tensor([comm.shape[0]], dtype=torch.long, device=comm.device)
        sizes_t = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes_t, size)
        sizes = [int(s.item()) for s in sizes_t]
        longest = max(sizes)
        if comm.shape[0] < longest:  # all_gather needs equal shapes: pad, gather, cut
            comm = torch.cat([comm, comm.new_zeros((longest - comm.shape[0], *comm.shape[1:]))])
        parts = [torch.empty_like(comm) for _ in range(world)]
        dist.all_gather(parts, comm)
        ctx.sizes, ctx.rank = sizes, me
        return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(x.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = all_reduce_sum(grad.contiguous().clone())
        start = sum(ctx.sizes[:ctx.rank])
        return g[start:start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 in rank order, differentiable (``x`` itself in a
    single process). Ranks may hold different numbers of rows.

    Backward sums the gradient of the gathered tensor over ranks (all-reduce) and returns this
    rank's rows: the gradient of the sum of every rank's loss with respect to this rank's rows. When
    every rank computes the same loss from the
    gathered tensor (a contrastive loss over the global batch), that is ``world_size`` × the local
    slice, so DDP's gradient *averaging* gives exactly the gradient of that loss on one process
    holding the global batch. (The official OST code returns the plain local slice: 1/world_size of
    it after averaging; vclip does not, because parameters that reach the loss without the gather —
    OST's text tower encoding the whole vocabulary on every rank — would then be scaled
    differently.)"""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    return _gather_across_ranks(x)


# outside torch.compile's graphs (a graph break); dynamo is imported on the first call only, as DDP does
@torch._disable_dynamo
def _gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    return _AllGatherWithGrad.apply(x)


def cleanup() -> None:
    """Destroy the default process group, if any, after collecting the garbage: a
    ``DistributedDataParallel`` module (its reducer) still alive when its gloo group is destroyed
    can abort the process at exit ("terminate called without an active exception"), so drop the
    last reference to it before calling this. Every rank waits for the others (a barrier) before
    the group goes."""
    if is_dist():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
