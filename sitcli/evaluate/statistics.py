"""Streaming statistics of feature batches, accumulated in float64 so memory does not grow with N.

Pure math on tensors: no files, no network.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class GaussianStats:
    r"""Running mean and covariance of row vectors, merged batch by batch.

    Each batch :math:`B` (``n_b`` rows) is summarised by its mean :math:`m_b` and centred
    scatter :math:`C_b = \sum_{x \in B} (x - m_b)(x - m_b)^\top` and merged into the running
    :math:`(n, m, C)` with the pairwise update of Chan, Golub and LeVeque (1979):

    .. math::
        n' = n + n_b,\quad \delta = m_b - m,\quad m' = m + \delta\, n_b / n',\quad
        C' = C + C_b + \delta\delta^\top\, n\, n_b / n'.

    The covariance is :math:`C / (n - 1)`, the unbiased estimate ``numpy.cov`` returns.
    Centring each batch first avoids the cancellation of the one-pass
    :math:`\sum x x^\top - n\,m m^\top` form when means are large compared with spreads.
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu") -> None:
        self.dim = dim
        self.count = 0
        self._mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self._scatter = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, batch: Tensor) -> None:
        """Add the rows of ``batch`` (shape (n_b, dim), any float dtype, on any device)."""
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"expected a batch of shape (n, {self.dim}), got {tuple(batch.shape)}")
        n_b = batch.shape[0]
        if n_b == 0:
            return
        x = batch.to(device=self._mean.device, dtype=torch.float64)
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        n = self.count + n_b
        delta = mean_b - self._mean
        # In place: a dim x dim float64 temporary per batch (32 MB at 2048-d) fragments the heap
        # enough, next to DataLoader workers, to grow the process by gigabytes over 10,000 images.
        self._scatter.addmm_(centred.T, centred).addr_(delta, delta, alpha=self.count * n_b / n)
        self._mean += delta * (n_b / n)
        self.count = n

    def mean(self) -> np.ndarray:
        """The mean, float64 array of shape (dim,)."""
        return self._mean.cpu().numpy().copy()

    def covariance(self) -> np.ndarray:
        """The unbiased covariance, float64 array of shape (dim, dim); needs at least 2 rows."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return (self._scatter / (self.count - 1)).cpu().numpy()


class SplitScore:
    r"""Inception Score accumulated over fixed splits without keeping the predictions.

    For a split :math:`S` with class probabilities :math:`p_i = \mathrm{softmax}(\ell_i)` the
    score is :math:`\exp\big(\frac1{|S|}\sum_{i\in S} \mathrm{KL}(p_i \,\|\, \bar p)\big)` with
    :math:`\bar p = \frac1{|S|}\sum_{i \in S} p_i`. Since
    :math:`\frac1{|S|}\sum_i \mathrm{KL}(p_i\|\bar p) = \frac1{|S|}\sum_i\sum_y p_{iy}\log p_{iy}
    - \sum_y \bar p_y \log \bar p_y`, two running sums per split suffice.

    Split ``k`` of ``splits`` holds rows ``[k*N//splits, (k+1)*N//splits)`` in input order, the
    split rule of the original improved-gan code; ``N`` must be known up front.
    """

    def __init__(self, total: int, splits: int = 10) -> None:
        if splits < 1 or total < splits:
            raise ValueError(f"{splits} splits need at least {splits} samples, got {total}")
        self.total = total
        self.splits = splits
        self.bounds = [k * total // splits for k in range(splits + 1)]
        self.count = 0
        self._sum_p: Tensor | None = None  # (splits, classes)
        self._sum_plogp = torch.zeros(splits, dtype=torch.float64)

    def update(self, logits: Tensor) -> None:
        """Add the next rows of logits (n_b, classes), in input order."""
        p = torch.softmax(logits.to(torch.float64), dim=1).cpu()
        if self._sum_p is None:
            self._sum_p = torch.zeros(self.splits, p.shape[1], dtype=torch.float64)
        if self.count + len(p) > self.total:
            raise ValueError(f"more than the announced {self.total} rows")
        split_of_row = torch.bucketize(
            torch.arange(self.count, self.count + len(p)), torch.tensor(self.bounds[1:]), right=True
        )
        self._sum_p.index_add_(0, split_of_row, p)
        self._sum_plogp.index_add_(0, split_of_row, torch.xlogy(p, p).sum(dim=1))
        self.count += len(p)

    def result(self) -> tuple[float, float]:
        """Mean and (population) standard deviation of the per-split scores."""
        if self.count != self.total or self._sum_p is None:
            raise ValueError(f"saw {self.count} of {self.total} rows")
        sizes = torch.tensor(np.diff(self.bounds), dtype=torch.float64)
        p_bar = self._sum_p / sizes[:, None]
        mean_kl = self._sum_plogp / sizes - torch.xlogy(p_bar, p_bar).sum(dim=1)
        scores = torch.exp(mean_kl)
        return float(scores.mean()), float(scores.std(unbiased=False))
