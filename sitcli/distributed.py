"""torch.distributed helpers: start from torchrun's environment, rank 0 does the I/O.

Under ``torchrun`` (one or many nodes) the environment holds RANK, WORLD_SIZE and LOCAL_RANK; the
process group uses NCCL when CUDA is available and gloo otherwise. Without torchrun everything
here degrades to a single process and no process group is created. A program that already set up
a process group (to run several jobs in one launch) keeps it: the jobs join and leave it as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sitcli.runtime import resolve_device


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # created the process group here (so teardown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    owns = world_size > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def world_size() -> int:
    """The number of ranks torchrun started (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def teardown(d: Dist) -> None:
    """Destroy the process group if ``setup`` created it; a caller's own group is left alone."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Rank 0 of the process group, or the single process without one."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on a copy); the identity in a single process."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj) -> list:
    """One picklable object per rank, gathered on every rank (only small trusted metadata)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensors(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` (same shape on every rank), gathered on every rank; ``[x]`` in a single process."""
    if not dist.is_initialized():
        return [x]
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return out
