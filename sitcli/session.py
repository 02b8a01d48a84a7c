"""Where every job runs: its ranks and device, torch's thread count, TF32, and the folders it holds.

    from sitcli.session import session
    with session(device, tf32=cfg.tf32) as s:      # joins torchrun's process group, if any
        s.set_threads(cfg.threads)                   # restored when the job ends
        s.hold(out, "sit sample")                    # rank 0 locks the folder until the job ends
        ...

One context manager for train, sample, nll, fid, convert and cache-latents, so that a job called as a
library function leaves the process as it found it: the thread count, TF32 switches and process group are
restored, and every folder lock is released, whether the job returns or raises.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from sitcli import distributed
from sitcli.locks import FolderLock, lock_on_rank0
from sitcli.runtime import tf32 as tf32_switch


@dataclass
class Session:
    """A running job's ranks and device (``dist``) and what it must give back when it ends."""

    dist: distributed.Dist
    locks: list[FolderLock] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def set_threads(self, threads: int | None) -> None:
        """torch's intra-op thread count for this job; None or 0 keeps torch's default."""
        if threads:
            torch.set_num_threads(threads)

    def hold(self, folder: str | Path, job: str) -> None:
        """Lock ``folder`` on rank 0 until the job ends (``locks.FolderLock``); refused when another holds it."""
        lock = lock_on_rank0(folder, job)
        if lock is not None:
            self.locks.append(lock)


@contextlib.contextmanager
def session(device: str | torch.device | None = None, tf32: bool = False) -> Iterator[Session]:
    """Run a job on ``device`` (None: CUDA when available) and this process's torchrun rank, TF32 on when asked."""
    dist = distributed.setup(device)
    threads = torch.get_num_threads()
    job = Session(dist)
    try:
        with tf32_switch(tf32):
            yield job
    finally:
        for lock in reversed(job.locks):
            lock.release()
        torch.set_num_threads(threads)
        distributed.teardown(dist)
