"""Running under ``torchrun``: where a process sits, joining the process group, and the few
collectives the search and training loops share.

Training wraps its network in DistributedDataParallel. The search cannot: each bilevel step trains
one of two parameter groups and freezes the other (``requires_grad`` toggled step by step), which
DDP's reducer, built once over the parameters that need gradients, does not allow. The search
therefore averages the gradients of the group it is about to step with one all-reduce
(:func:`average_gradients`), after backward and before clipping and the optimiser step, which is
what DDP would compute.

Every helper is a no-op when no process group is initialised, so the same code runs plainly.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from edgenas.errors import EdgenasError

#: seconds a rank waits for the others to join; ``EDGENAS_DIST_TIMEOUT`` overrides
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a ``torchrun`` job (world 1, rank 0 when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def dist_from_env() -> DistInfo:
    """Read ``torchrun``'s RANK/WORLD_SIZE/LOCAL_RANK; a plain run is world 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def _timeout() -> datetime.timedelta:
    text = os.environ.get("EDGENAS_DIST_TIMEOUT", "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise EdgenasError(f"EDGENAS_DIST_TIMEOUT={text!r} is not a number of seconds",
                           "set it to e.g. 600, or unset it") from None
    if not seconds > 0:
        raise EdgenasError(f"EDGENAS_DIST_TIMEOUT={text!r} is not positive", "set it to e.g. 600, or unset it")
    return datetime.timedelta(seconds=seconds)


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group ``torchrun`` set up: NCCL on GPUs, gloo on the CPU.

    On CUDA each process takes the GPU of its local rank; returns the device this rank uses. A rank
    that cannot reach the others within ``EDGENAS_DIST_TIMEOUT`` seconds raises an EdgenasError.
    """
    info = dist_from_env()
    if not info.active:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise EdgenasError(f"local rank {info.local_rank} has no GPU ({torch.cuda.device_count()} visible)",
                               "use --nproc_per_node no larger than the number of GPUs")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = _timeout()
        try:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
            # gloo connects lazily on some versions: one collective proves every rank is there
            barrier()
        except (RuntimeError, ValueError, OSError) as e:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise EdgenasError(
                f"rank {info.rank} of {info.world} could not reach the other processes at {where} within "
                f"{timeout.total_seconds():g} s ({reason})",
                "start every process with the same torchrun --rdzv-endpoint/--master-addr and --nnodes, "
                "check the port is open between the nodes, or raise EDGENAS_DIST_TIMEOUT") from None
    return info, device


def shutdown() -> None:
    """Leave the process group once every rank is done (destroying it explicitly, not at interpreter
    exit, where the backend's destructors can abort a process whose peers already left)."""
    if is_active():
        dist.barrier()
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_active():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (no-op when not distributed)."""
    if not is_active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a one-element list when not distributed)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Replace each ``p.grad`` by its mean over the ranks, in one all-reduce.

    Every rank runs the same graph, so the same parameters have gradients on every rank (those
    without one, e.g. of an operator the step did not use, are skipped everywhere alike). The grads
    travel as one flat buffer: one collective per step, not one per tensor.
    """
    if not is_active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def sum_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the ranks in place (one all-reduce for all of them)."""
    ts = list(tensors)
    if not is_active() or not ts:
        return
    flat = torch.cat([t.reshape(-1).double() for t in ts])
    dist.all_reduce(flat)
    offset = 0
    for t in ts:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Each rank normalises with statistics of its own batches (DDP broadcasts buffers only at the
    start of a forward), so after the last step the ranks' running statistics differ; evaluation
    and checkpoints need one agreed set.
    """
    if not is_active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buf in unwrap(model).buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():  # one broadcast per dtype, not one per BatchNorm
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
