"""A Gaussian-mixture data distribution with every field in closed form, for any interpolant.

With data x1 ~ sum_k pi_k N(mu_k, diag(s_k^2)) and x_t = alpha_t x1 + sigma_t eps, the marginal is

    p_t = sum_k pi_k N(alpha_t mu_k, diag(v_k)),   v_k = alpha_t^2 s_k^2 + sigma_t^2,

and with responsibilities r_k(x) (the posterior weights of the components given x_t = x):

    score      s(x, t)  = -sum_k r_k (x - alpha_t mu_k) / v_k
    data mean  x1(x, t) = sum_k r_k [mu_k + alpha_t s_k^2 / v_k (x - alpha_t mu_k)]
    noise      e(x, t)  = -sigma_t s(x, t)
    velocity   v(x, t)  = alpha'_t x1(x, t) + sigma'_t e(x, t)

These are exact answers for samplers (whose results are compared with p_1) and for the likelihood
(compared with log p_1). Nothing here is specific to images: x has shape (B, D).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.transport.interpolants import Interpolant, expand_time, get_interpolant


class GaussianMixture:
    """sum_k weights_k N(means_k, diag(stds_k^2)), means (K, D), stds (K,) or (K, D), weights (K,)."""

    def __init__(self, means, stds, weights=None, dtype=torch.float64):
        self.means = torch.as_tensor(means, dtype=dtype)
        if self.means.dim() == 1:
            self.means = self.means[:, None]
        K, D = self.means.shape
        stds = torch.as_tensor(stds, dtype=dtype)
        self.stds = stds[:, None].expand(K, D).clone() if stds.dim() == 1 else stds
        weights = torch.full((K,), 1.0 / K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=self.means.dtype, generator=generator)
        return self.means[component] + self.stds[component] * noise

    def _marginal(self, interpolant: Interpolant, x: torch.Tensor, t: torch.Tensor):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        t_ = expand_time(t, x)[:, None]  # (B, 1, 1) against components (K, D)
        alpha, sigma = interpolant.alpha(t_), interpolant.sigma(t_)
        means = alpha * self.means.to(x)  # (B, K, D)
        variances = alpha**2 * self.stds.to(x) ** 2 + sigma**2
        diff = x[:, None, :] - means
        log_components = -0.5 * (diff**2 / variances + torch.log(2 * math.pi * variances)).sum(dim=2)
        log_joint = torch.log(self.weights.to(x)) + log_components  # (B, K)
        return t, alpha, diff, variances, log_joint

    def log_prob(self, interpolant: Interpolant | str, x: torch.Tensor, t) -> torch.Tensor:
        """log p_t(x), shape (B,)."""
        return torch.logsumexp(self._marginal(get_interpolant(interpolant), x, t)[-1], dim=1)

    def cdf(self, interpolant: Interpolant | str, x: torch.Tensor, t) -> torch.Tensor:
        """P(X_t <= x) for a one-dimensional mixture, shape (B,)."""
        _, _, diff, variances, _ = self._marginal(get_interpolant(interpolant), x, t)
        z = diff[..., 0] / variances[..., 0].sqrt()
        return (self.weights.to(x) * 0.5 * torch.erfc(-z / math.sqrt(2))).sum(dim=1)

    def score(self, interpolant: Interpolant | str, x: torch.Tensor, t) -> torch.Tensor:
        _, _, diff, variances, log_joint = self._marginal(get_interpolant(interpolant), x, t)
        r = torch.softmax(log_joint, dim=1)[..., None]
        return -(r * diff / variances).sum(dim=1)

    def noise(self, interpolant: Interpolant | str, x: torch.Tensor, t) -> torch.Tensor:
        interpolant = get_interpolant(interpolant)
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return -interpolant.sigma(expand_time(t, x)) * self.score(interpolant, x, t)

    def data_mean(self, interpolant: Interpolant | str, x: torch.Tensor, t) -> torch.Tensor:
        """E[x1 | x_t = x]."""
        _, alpha, diff, variances, log_joint = self._marginal(get_interpolant(interpolant), x, t)
        r = torch.softmax(log_joint, dim=1)[..., None]
        stds2 = self.stds.to(x) ** 2
        return (r * (self.means.to(x) + alpha * stds2 / variances * diff)).sum(dim=1)

    def velocity(self, interpolant: Interpolant | str, x: torch.Tensor, t) -> torch.Tensor:
        interpolant = get_interpolant(interpolant)
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        t_ = expand_time(t, x)
        return interpolant.d_alpha(t_) * self.data_mean(interpolant, x, t) + interpolant.d_sigma(t_) * self.noise(
            interpolant, x, t
        )

    def model(self, interpolant: Interpolant | str, prediction: str) -> Callable:
        """An exact "model" callable ``(x, t) -> prediction`` (velocity, score or noise)."""
        interpolant = get_interpolant(interpolant)
        field = {"velocity": self.velocity, "score": self.score, "noise": self.noise}[prediction]

        def exact_model(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
            return field(interpolant, x, t)

        return exact_model
