"""Latent statistics in one streaming pass: the mean and variance of every latent element, exactly.

For latents z of shape (C, H, W) seen in batches, ``LatentStatistics`` keeps the count n, the mean
and the sum of squared deviations M2 of every element, in float64, merging batch by batch with
Chan et al.'s update (the same for merging the partial statistics of several ranks):

    n = n_a + n_b,   delta = mean_b - mean_a,   mean = mean_a + delta n_b / n,
    M2 = M2_a + M2_b + delta^2 n_a n_b / n,      var = M2 / n  (M2 / (n - 1) when ``unbiased``)

Per channel, the H W positions of a channel are pooled (n H W values): mean_c is the average of the
element means and var_c = avg_hw(var_e + (mean_e - mean_c)^2), again exact.

How this compares with the reference codes (read from their files):
    * RAE's ``calculate_stat.py`` (stats of shape (C, H, W), the "element" kind) keeps BatchNorm-style
      running statistics: after each batch mean <- 0.9 mean + 0.1 batch_mean and var <- 0.9 var +
      0.1 batch_var, starting from mean 0 and var 1, with batch_var the population variance
      (unbiased=False) of that batch; ranks are merged as avg(var_r) + var(mean_r). It stores the
      variance, without eps; RAE's encoder adds eps = 1e-5 before the square root. That estimate
      weights the last ~10 batches most, leaves out the spread of the batch means, and depends on
      batch size and order (their README: ~0.008 L1 from the released file on a rerun). Here the
      statistics are those of every latent, equally weighted, and the same whatever the batching;
      std = sqrt(var + eps) with RAE's eps, so a file made here is applied with RAE's formula.
    * LightningDiT's VA-VAE ``latents_stats.pt`` (the "channel" kind) is torch's mean and unbiased
      std over up to 10,000 random cached latents and all positions, without eps (``unbiased=True``,
      ``eps=0`` here give that estimator on all latents).
"""

from __future__ import annotations

import torch

from sitcli.autoencoder.normalization import RAE_EPS, LatentNormalization


class LatentStatistics:
    """Streaming per-element mean and variance of (B, C, H, W) latents, float64.

    Example:
        >>> stats = LatentStatistics()
        >>> for z in batches: stats.update(z)
        >>> norm = stats.normalization("element")      # RAE's kind, eps 1e-5
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, z: torch.Tensor) -> "LatentStatistics":
        """Add a batch of latents (B, C, H, W)."""
        if z.dim() != 4:
            raise ValueError(f"latents must be (B, C, H, W), got {tuple(z.shape)}")
        z = z.detach().double()  # on z's device; only the (C, H, W) sums come to the CPU
        mean = z.mean(0)
        return self._merge(z.shape[0], mean.cpu(), ((z - mean) ** 2).sum(0).cpu())

    def merge(self, other: "LatentStatistics") -> "LatentStatistics":
        """Add another pass's statistics (another rank's, or another shard's)."""
        if other.count == 0:
            return self
        return self._merge(other.count, other.mean, other.m2)

    def _merge(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> "LatentStatistics":
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b.clone(), m2_b.clone()
            return self
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"latents of shape {tuple(mean_b.shape)} after {tuple(self.mean.shape)}")
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n
        return self

    def element(self, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var), each (C, H, W) float64."""
        self._need(2 if unbiased else 1)
        return self.mean.clone(), self.m2 / (self.count - 1 if unbiased else self.count)

    def channel(self, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var), each (C, 1, 1) float64: every position of a channel pooled."""
        self._need(1)
        positions = self.mean.shape[1] * self.mean.shape[2]
        total = self.count * positions
        if unbiased and total < 2:
            raise ValueError("an unbiased variance needs at least 2 values per channel")
        mean = self.mean.mean(dim=(1, 2), keepdim=True)
        spread = (self.count * (self.mean - mean) ** 2).sum(dim=(1, 2), keepdim=True)  # between positions
        m2 = self.m2.sum(dim=(1, 2), keepdim=True) + spread
        return mean, m2 / (total - 1 if unbiased else total)

    def normalization(self, kind: str = "element", eps: float | None = None, unbiased: bool = False,
                      scale: float = 1.0, source: str = "") -> LatentNormalization:
        """n = (z - mean) / sqrt(var + eps) * scale for ``kind`` "element" or "channel"; eps defaults
        to RAE's 1e-5 for "element" and 0 for "channel" (LightningDiT's). Stored as float32; std is
        sqrt(float32(var) + eps) in float32, RAE's own arithmetic."""
        if kind not in ("element", "channel"):
            raise ValueError(f"kind must be 'element' or 'channel', got {kind!r}")
        eps = (RAE_EPS if kind == "element" else 0.0) if eps is None else float(eps)
        mean, var = self.element(unbiased) if kind == "element" else self.channel(unbiased)
        std = torch.sqrt(var.float() + eps)  # as RAE applies a float32 variance, so an exported var gives the same
        note = source or f"{self.count} latents, {'unbiased' if unbiased else 'population'} variance"
        return LatentNormalization(mean=mean.float(), std=std, scale=scale, eps=eps, source=note)

    def _need(self, n: int) -> None:
        if self.count < n:
            raise ValueError(f"latent statistics need at least {n} latent(s); {self.count} seen")
