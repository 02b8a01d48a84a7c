"""The order of training batches on every rank: ``(index, flip)`` items from (seed, epoch) alone."""

from __future__ import annotations

from typing import Iterator

import torch

from sitcli.errors import InputError


class EpochBatches:
    """Infinite sequence of per-rank batches of ``(index, flip)``; the position is (epoch, batch).

    Epoch e shuffles the data with a generator seeded by (seed, e) and draws one flip bit per item;
    global batch k of the epoch is items [k*B, (k+1)*B) of that order (B = global batch size), and
    rank r takes the r-th of its ``world_size`` equal slices. The incomplete last batch is dropped.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, flip: bool, rank: int = 0, world_size: int = 1, start_step: int = 0
    ):
        check_batch_size(n, batch_size, world_size)
        self.batches_per_epoch = n // batch_size
        self.n, self.batch_size, self.seed, self.flip = n, batch_size, seed, flip
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g)
        flips = (
            torch.randint(0, 2, (self.n,), generator=g).bool() if self.flip else torch.zeros(self.n, dtype=torch.bool)
        )
        return order, flips

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch, batch = divmod(self.start_step, self.batches_per_epoch)
        per_rank = self.batch_size // self.world_size
        while True:
            order, flips = self.epoch_order(epoch)
            for k in range(batch, self.batches_per_epoch):
                lo = k * self.batch_size + self.rank * per_rank
                yield [(int(order[i]), bool(flips[order[i]])) for i in range(lo, lo + per_rank)]
            epoch, batch = epoch + 1, 0


def check_batch_size(n: int, batch_size: int, world_size: int = 1) -> None:
    """Refuse a global batch that the ranks cannot share equally or that the data set cannot fill once."""
    if batch_size % world_size:
        raise InputError(f"--batch-size {batch_size} is not divisible by the {world_size} ranks; pick a multiple")
    if n < batch_size:
        raise InputError(f"the data set has {n} items, fewer than --batch-size {batch_size}; lower --batch-size")


def batches(
    dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0, num_workers: int = 0
) -> Iterator:
    """Per-rank ``(x, y)`` batches forever, starting at training step ``start_step``."""
    from torch.utils.data import DataLoader

    sampler = EpochBatches(len(dataset), batch_size, seed, dataset.flip, rank, world_size, start_step)
    if num_workers == 0:
        return _checked(dataset, (dataset.__getitems__(items) for items in sampler))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_identity,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=True,
        prefetch_factor=4,
    )
    return _checked(dataset, iter(loader))


def _checked(dataset, batches: Iterator) -> Iterator:
    """``batches``, each passed to the data set's ``check_batch`` (if it has one) in this process, so that a
    damaged batch is refused in one line, not from inside a worker process."""
    check = getattr(dataset, "check_batch", None)
    for batch in batches:
        if check is not None:
            check(batch)
        yield batch


def _identity(batch):
    return batch
