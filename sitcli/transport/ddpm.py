"""DiT as a special case of SiT: the discrete DDPM schedule as an interpolant, and a model wrapper.

A DiT checkpoint (facebookresearch/DiT) is a noise-prediction network trained on the discrete
variance-preserving chain of DDPM: with the linear schedule beta_k = beta_start + k (beta_end -
beta_start) / (N - 1), k = 0 .. N - 1 (1e-4 .. 0.02, N = 1000), the network sees

    x_n = sqrt(abar_n) x1 + sqrt(1 - abar_n) eps,     abar_n = prod_{k <= n} (1 - beta_k),

at integer timesteps n = 0 .. N - 1 (n = N - 1 is the noisiest) and predicts eps (plus, with
learned sigma, as many variance channels again, which sit's samplers do not use).

In sit's time (t = 0 noise, t = 1 data) the DiT timestep of time t is

    s(t) = N (1 - t) - 1,

so t = k / N is timestep N - 1 - k, the training grid is t in {0, 1/N, ..., (N - 1)/N}, and t = 1 is
s = -1, where the product above is empty (abar = 1, clean data). Writing beta_k = b (c - k) with
b = (beta_end - beta_start) / (N - 1) and c = (1 - beta_start) / b turns the product into Gamma
functions, which continue it to every real s without changing it at the integers:

    log abar(s) = (s + 1) log b + lgamma(c + 1) - lgamma(c - s),
    d log abar / ds = log b + digamma(c - s),

and alpha_t = sqrt(abar(s(t))), sigma_t = sqrt(1 - abar(s(t))). The samplers therefore step on a
smooth path that passes exactly through DiT's noise levels; on grids aligned with the N steps the
network is fed exactly its integer training timesteps, in between the (smooth) sinusoidal timestep
embedding is evaluated at fractional ones.

This module is math only: the DiT network itself is called in sit's time through
``sitcli.loading.DiscreteTimestepModel``, which feeds it s(t).

Example:
    >>> tr = dit_transport()                                # Transport(DDPMInterpolant(), "noise")
    >>> net = DiscreteTimestepModel(dit_network)            # sitcli.loading: takes sit's t, feeds DiT's timestep
    >>> x, nfe = sample_ode(tr, net, torch.randn(4, 4, 32, 32), method="heun", steps=50)
"""

from __future__ import annotations

import math
import torch

from sitcli.transport.interpolants import VariancePreserving
from sitcli.transport.transport import Transport

DIT_NUM_TIMESTEPS = 1000
DIT_BETA_START = 1e-4
DIT_BETA_END = 0.02


def timestep_from_time(t: torch.Tensor, num_timesteps: int = DIT_NUM_TIMESTEPS) -> torch.Tensor:
    """DiT's timestep s = N (1 - t) - 1 for sit's time t (float; N - 1 - k on the grid t = k / N, up to rounding)."""
    return num_timesteps * (1 - t) - 1


def time_from_timestep(s: torch.Tensor | float, num_timesteps: int = DIT_NUM_TIMESTEPS):
    """Inverse of ``timestep_from_time``: t = 1 - (s + 1) / N."""
    return 1 - (s + 1) / num_timesteps


class DDPMInterpolant(VariancePreserving):
    """DDPM's discrete linear-beta VP chain, continued to real time (formulas in the module docstring).

    Args:
        num_timesteps: N, the length of the chain (1000 for DiT).
        beta_start, beta_end: the first and last beta of the linear schedule (1e-4 and 0.02 for DiT).

    alpha_0 = sqrt(abar_{N-1}) (about 6e-3 for DiT) is small but not zero, so nothing is singular
    at the noise end; sigma'_t is infinite at t = 1, as for the continuous VP path.
    Computed in float64 (the Gamma-function form cancels large numbers) and returned in t's dtype.
    """

    name = "ddpm"

    def __init__(
        self,
        num_timesteps: int = DIT_NUM_TIMESTEPS,
        beta_start: float = DIT_BETA_START,
        beta_end: float = DIT_BETA_END,
    ):
        if num_timesteps < 2 or not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"invalid DDPM schedule: need num_timesteps >= 2 and 0 < beta_start < beta_end < 1, got "
                f"{num_timesteps}, {beta_start}, {beta_end}"
            )
        self.num_timesteps = int(num_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self._b = (self.beta_end - self.beta_start) / (self.num_timesteps - 1)
        self._c = (1 - self.beta_start) / self._b

    def alphas_cumprod(self) -> torch.Tensor:
        """abar_n for n = 0 .. N - 1, by the plain product (float64), as the DDPM code computes it."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=torch.float64)
        return torch.cumprod(1 - betas, dim=0)

    def log_abar(self, s: torch.Tensor) -> torch.Tensor:
        """log abar(s) at real timesteps s in [-1, N - 1] (float64)."""
        s = s.double()
        return (s + 1) * math.log(self._b) + math.lgamma(self._c + 1) - torch.lgamma(self._c - s)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.log_abar(timestep_from_time(t.double(), self.num_timesteps))

    def d_log_alpha(self, t):
        # d/dt (1/2 log abar(s(t))) with ds/dt = -N.
        s = timestep_from_time(t.double(), self.num_timesteps)
        return (-0.5 * self.num_timesteps * (math.log(self._b) + torch.digamma(self._c - s))).to(t.dtype)

    def singular_at_noise_end(self) -> bool:
        return False

    def __repr__(self) -> str:
        return (
            f"DDPMInterpolant(num_timesteps={self.num_timesteps}, beta_start={self.beta_start}, "
            f"beta_end={self.beta_end})"
        )


def dit_transport(
    num_timesteps: int = DIT_NUM_TIMESTEPS,
    beta_start: float = DIT_BETA_START,
    beta_end: float = DIT_BETA_END,
    sample_eps: float | None = None,
    discrete: bool = False,
) -> Transport:
    """The transport of a DiT checkpoint: DDPM interpolant, noise prediction.

    Nothing is singular at the noise end (alpha_0 > 0) and the data end is kept off by the
    transport's default eps, 1e-3 = 1 / N for DiT: samplers integrate over t in [0, 1 - 1/N], from
    DiT's timestep N - 1 down to 0, its training range. ``discrete=True`` also snaps fixed-grid
    samplers onto the training grid t = k / N, i.e. DiT's integer timesteps.
    """
    return Transport(
        interpolant=DDPMInterpolant(num_timesteps, beta_start, beta_end),
        prediction="noise",
        sample_eps=sample_eps,
        num_timesteps=num_timesteps if discrete else None,
    )
