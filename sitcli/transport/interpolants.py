"""Interpolants: how a noise sample and a data sample are mixed at time t.

Time runs from t = 0 (pure noise) to t = 1 (data), the convention of the official SiT code, so its
checkpoints run unchanged (the SiT paper writes time the other way round). With eps ~ N(0, I):

    x_t = alpha_t * x1 + sigma_t * eps,    alpha_0 = 0, sigma_0 = 1,   alpha_1 = 1, sigma_1 = 0.

Each interpolant gives alpha_t, sigma_t and their time derivatives; every other quantity the
objectives and samplers need is derived from these four in one place, on the base class:

    d_log_alpha(t) = alpha'_t / alpha_t
    eta(t)         = alpha'_t / alpha_t * sigma_t^2 - sigma_t * sigma'_t

eta is the coefficient that ties velocity to score,  v(x, t) = d_log_alpha(t) * x + eta(t) * score(x, t),
and it is also the diffusion of the forward "score-based diffusion model" SDE with these marginals
(the SBDM choice of w(t) in the samplers).
"""

from __future__ import annotations

import math

import torch

from sitcli.errors import InputError


class Interpolant:
    """x_t = alpha_t x1 + sigma_t eps. Subclasses define alpha, sigma and their derivatives."""

    name: str = "interpolant"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'_t / alpha_t (infinite where alpha_t = 0)."""
        return self.d_alpha(t) / self.alpha(t)

    def eta(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'_t / alpha_t * sigma_t^2 - sigma_t sigma'_t: velocity = d_log_alpha * x + eta * score."""
        sigma = self.sigma(t)
        return self.d_log_alpha(t) * sigma**2 - sigma * self.d_sigma(t)

    def singular_at_noise_end(self) -> bool:
        """Whether alpha_0 = 0, so that anything divided by alpha (data from noise, velocity from
        score or noise, the SBDM diffusion) blows up at t = 0."""
        return True

    def singular_at_data_end(self) -> bool:
        """Whether sigma'_t is infinite at t = 1, so that even the velocity is singular there."""
        return False

    def interpolate(self, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x1 + sigma_t eps, with t of shape (B,)."""
        t = expand_time(t, x1)
        return self.alpha(t) * x1 + self.sigma(t) * noise

    def conditional_velocity(self, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """d x_t / dt = alpha'_t x1 + sigma'_t eps for the fixed pair (x1, eps): the regression target
        of velocity prediction, and the tangent of the mean-flow JVP."""
        t = expand_time(t, x1)
        return self.d_alpha(t) * x1 + self.d_sigma(t) * noise

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Interpolant):
    """alpha_t = t, sigma_t = 1 - t: straight lines between noise and data (rectified flow)."""

    name = "linear"

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1 - t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def d_sigma(self, t):
        return -torch.ones_like(t)


class GVP(Interpolant):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2): the generalized variance-preserving path
    (alpha^2 + sigma^2 = 1 for all t)."""

    name = "gvp"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2)

    def d_alpha(self, t):
        return math.pi / 2 * torch.cos(t * math.pi / 2)

    def d_sigma(self, t):
        return -math.pi / 2 * torch.sin(t * math.pi / 2)


class VariancePreserving(Interpolant):
    """A path with alpha_t^2 + sigma_t^2 = 1 given through log alpha_t and its derivative:

        sigma_t = sqrt(1 - alpha_t^2),   sigma'_t = -alpha_t alpha'_t / sigma_t,   eta_t = alpha'_t / alpha_t.

    sigma'_t is infinite at t = 1 (sigma_1 = 0); eta is computed without it, so it stays finite.
    Subclasses define ``log_alpha`` and ``d_log_alpha``.
    """

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(self.log_alpha(t)).to(t.dtype)

    def sigma(self, t):
        # -expm1(2 log alpha) = 1 - alpha^2 without cancellation near t = 1.
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t))).to(t.dtype)

    def d_alpha(self, t):
        return self.d_log_alpha(t) * self.alpha(t)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def eta(self, t):
        # alpha'/alpha sigma^2 + alpha alpha' = alpha'/alpha (sigma^2 + alpha^2) = alpha'/alpha.
        return self.d_log_alpha(t)

    def singular_at_data_end(self) -> bool:
        return True


class VP(VariancePreserving):
    """The variance-preserving path of score-based diffusion with a linear beta schedule:

        log alpha_t = -(1 - t)^2 (beta_max - beta_min) / 4 - (1 - t) beta_min / 2,
        sigma_t = sqrt(1 - alpha_t^2).

    alpha_0 = exp(-(beta_max + beta_min) / 4) is small but not zero, and sigma'_t is infinite at t = 1.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = beta_min
        self.beta_max = beta_max

    def log_alpha(self, t):
        s = 1 - t
        return -(s**2) * (self.beta_max - self.beta_min) / 4 - s * self.beta_min / 2

    def d_log_alpha(self, t):
        return (1 - t) * (self.beta_max - self.beta_min) / 2 + self.beta_min / 2

    def singular_at_noise_end(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"VP(beta_min={self.beta_min}, beta_max={self.beta_max})"


INTERPOLANTS: dict[str, type[Interpolant]] = {"linear": Linear, "gvp": GVP, "vp": VP}


def get_interpolant(interpolant: str | Interpolant) -> Interpolant:
    """An interpolant by name ("linear", "gvp", "vp"), or the instance given."""
    if isinstance(interpolant, Interpolant):
        return interpolant
    key = str(interpolant).lower()
    if key not in INTERPOLANTS:
        raise InputError(f"unknown interpolant {interpolant!r}: choose one of {', '.join(INTERPOLANTS)}")
    return INTERPOLANTS[key]()


def expand_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample times (B,) to broadcast against x (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))
