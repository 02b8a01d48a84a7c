"""`Transport`: one choice of interpolant, model prediction, loss weight and time.

It knows which times are safe for its combination. The formulas in ``objectives`` divide by
alpha_t (zero at t = 0 for linear and GVP) when a score or noise model is turned into a velocity,
by sigma_t (zero at t = 1) when anything is turned into a score, and the VP path's sigma'_t is
infinite at t = 1. Where a combination touches such an end, time is kept ``eps`` away from it:

    noise end (t = 0) is kept off when alpha_0 = 0 and the model is not a velocity model
                      (or, when sampling, the SDE uses the SBDM diffusion, infinite there);
    data end  (t = 1) is kept off for VP, for score and noise models, and for the likelihood
                      loss weight (1 / eta_t is infinite there).

By default only the singular ends are moved in, by 1e-3 (1e-5 when training VP); a ``train_eps`` or
``sample_eps`` that is given moves both ends in by that much. Either may be given without the other.
An explicit 0 where an end is singular is refused with a message saying so.

Training times are drawn from ``time_density`` (``time_sampling.TIME_DENSITIES``: uniform,
logit-normal, mode, cosmap) stretched over the training interval; its parameters are checked here,
when the transport is built, so a bad one is refused before a run writes anything.

Discrete time (``num_timesteps=T``): training draws t from the T-point grid spanning the training
interval (weighted by the density), and fixed-grid and multistep samplers step on points of that grid.

Training: ``training_loss`` is ``draw_time_and_noise``, the model at x_t, then ``regression_loss``;
a training loop that adds loss terms calls the pieces itself, on the same draws.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport import objectives, time_grids, time_sampling
from sitcli.transport.diffusion import check_diffusion_coefficient
from sitcli.transport.interpolants import Interpolant, get_interpolant


class Transport:
    """The transport between N(0, I) at t = 0 and the data at t = 1.

    Args:
        interpolant: "linear", "gvp", "vp", or an ``Interpolant`` instance.
        prediction: what the model outputs: "velocity", "score" or "noise".
        loss_weight: None, "velocity" or "likelihood" (see ``objectives``).
        train_eps: distance kept from singular ends of [0, 1] while training (None = default).
        sample_eps: the same while sampling and computing likelihoods (None = default).
        num_timesteps: None for continuous time, or T >= 2 for a T-point time grid.
        time_density: the density of training times, a name in ``time_sampling.TIME_DENSITIES``.
        time_density_params: its parameters (``logit_mean``, ``logit_std``, ``mode_scale``); the
            density's defaults for those not given.
        time_shift: s > 0 of the shift phi_s applied to every drawn training time (1: none; RAE's
            ``time_grids.dimension_time_shift`` for its latents). Sampling grids take their own.

    Example:
        >>> tr = Transport("linear", "velocity")
        >>> loss = tr.training_loss(model, x1, {"y": y})      # (B,)
    """

    def __init__(
        self,
        interpolant: str | Interpolant = "linear",
        prediction: str = "velocity",
        loss_weight: str | None = None,
        train_eps: float | None = None,
        sample_eps: float | None = None,
        num_timesteps: int | None = None,
        time_density: str = "uniform",
        time_density_params: dict | None = None,
        time_shift: float = 1.0,
    ):
        self.interpolant = get_interpolant(interpolant)
        self.prediction = objectives.check_prediction(prediction)
        self.loss_weight = objectives.check_loss_weight(loss_weight)
        self.train_eps = train_eps
        self.sample_eps = sample_eps
        self.num_timesteps = None if num_timesteps is None else int(num_timesteps)
        self._train_interval = self._interval(train_eps, training=True)
        self.time_density = time_density
        self.time_density_params = time_sampling.time_density(time_density, time_density_params)[1]
        if not (time_shift > 0 and math.isfinite(time_shift)):
            raise InputError(f"time_shift={time_shift} is invalid: pass s > 0 (1 is no shift)")
        if time_shift != 1 and self.num_timesteps is not None:
            raise InputError("a time shift of the training times needs continuous time: drop --num-timesteps or "
                             "the shift")
        self.time_shift = float(time_shift)

    def __repr__(self) -> str:
        return (
            f"Transport(interpolant={self.interpolant!r}, prediction={self.prediction!r}, "
            f"loss_weight={self.loss_weight!r}, train_eps={self.train_eps}, sample_eps={self.sample_eps}, "
            f"num_timesteps={self.num_timesteps}, time_density={self.time_density!r}, "
            f"time_density_params={self.time_density_params}"
            + (f", time_shift={self.time_shift:g})" if self.time_shift != 1 else ")")
        )

    # ---------------------------------------------------------------- time intervals

    def singular_ends(self, training: bool = False, w: str | None = None) -> tuple[bool, bool]:
        """(noise end, data end): whether t = 0 and t = 1 must be avoided for this use."""
        not_velocity = self.prediction != "velocity"
        noise_end = self.interpolant.singular_at_noise_end() and (not_velocity or w == "SBDM")
        data_end = self.interpolant.singular_at_data_end() or not_velocity
        if training and self.loss_weight == "likelihood":
            data_end = True
        return noise_end, data_end

    def _interval(self, eps: float | None, training: bool, w: str | None = None) -> tuple[float, float]:
        noise_end, data_end = self.singular_ends(training, w)
        if eps is None:
            default = 1e-5 if (training and self.interpolant.name == "vp") else 1e-3
            return (default if noise_end else 0.0), (1 - default if data_end else 1.0)
        if eps == 0 and (noise_end or data_end):
            name = "train_eps" if training else "sample_eps"
            end = "t = 0 (noise)" if noise_end else "t = 1 (data)"
            why = "w=SBDM" if (noise_end and w == "SBDM" and self.prediction == "velocity") else (
                f"prediction={self.prediction}, loss_weight={self.loss_weight}")
            raise InputError(
                f"{name}=0 is not allowed for the {self.interpolant.name} interpolant with {why}: it is singular "
                f"at {end}; pass {name} > 0 (e.g. 1e-3) or leave it unset for the default"
            )
        return eps, 1 - eps

    def train_interval(self) -> tuple[float, float]:
        """[t0, t1] from which training times are drawn."""
        return self._train_interval

    def sample_interval(self, sde: bool = False, w: str | None = None) -> tuple[float, float]:
        """[t0, t1] over which samplers and the likelihood integrate (before any SDE last step)."""
        w = check_diffusion_coefficient(w) if (sde and w is not None) else None
        return self._interval(self.sample_eps, training=False, w=w)

    # ---------------------------------------------------------------- time grids and training times

    def timestep_grid(self, device=None, dtype=torch.float32) -> torch.Tensor | None:
        """The T training times (discrete time), or None in continuous time."""
        if self.num_timesteps is None:
            return None
        return time_grids.training_grid(*self._train_interval, self.num_timesteps, device=device, dtype=dtype)

    def time_grid(
        self, t0: float, t1: float, steps: int, device=None, dtype=torch.float32, spacing: str = "uniform",
        time_shift: float = 1.0, edm_rho: float = 7.0,
    ) -> torch.Tensor:
        """steps + 1 increasing times from t0 to t1 on ``spacing`` (a name in ``time_grids.SPACINGS``;
        edm on this interpolant's noise level), shifted by ``time_shift``; in discrete time, snapped
        to the training grid."""
        discrete_grid = self.timestep_grid(dtype=torch.float64)
        return time_grids.time_grid(t0, t1, steps, spacing, discrete_grid, device=device, dtype=dtype,
                                    time_shift=time_shift, interpolant=self.interpolant, edm_rho=edm_rho)

    def sample_time(
        self, batch: int, device=None, dtype=torch.float32, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training times, shape (batch,): from the time density on [t0, t1], or on the grid in discrete time."""
        return time_sampling.sample_training_time(
            batch, self._train_interval, self.num_timesteps, device=device, dtype=dtype, generator=generator,
            density=self.time_density, params=self.time_density_params, time_shift=self.time_shift,
        )

    # ---------------------------------------------------------------- training

    def draw_time_and_noise(
        self,
        x1: torch.Tensor,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, eps) for a batch of data x1: t from ``sample_time``, then eps ~ N(0, I) shaped like x1,
        both from ``generator`` in that order. A t or noise that is given is kept, not drawn."""
        if t is None:
            t = self.sample_time(x1.shape[0], device=x1.device, dtype=x1.dtype, generator=generator)
        if noise is None:
            noise = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
        return t, noise

    def regression_loss(
        self, output: torch.Tensor, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample loss, shape (B,), of a model ``output`` at x_t built from (x1, noise, t)."""
        return objectives.regression_loss(self.interpolant, self.prediction, self.loss_weight, output, x1, noise, t)

    def training_loss(
        self,
        model: Callable,
        x1: torch.Tensor,
        model_kwargs: dict | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample loss, shape (B,), for data x1; t and noise are drawn unless given."""
        t, noise = self.draw_time_and_noise(x1, generator, t=t, noise=noise)
        return objectives.training_loss(
            self.interpolant, self.prediction, self.loss_weight, model, x1, noise, t, model_kwargs
        )

    # ---------------------------------------------------------------- conversions of the model output

    def velocity(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return objectives.predicted_velocity(self.interpolant, self.prediction, output, x, t)

    def score(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return objectives.predicted_score(self.interpolant, self.prediction, output, x, t)

    def data(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return objectives.predicted_data(self.interpolant, self.prediction, output, x, t)
