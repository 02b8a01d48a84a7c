"""log p(x) of data under a trained model, through the probability-flow ODE.

Along dX = v(X, t) dt the log-density changes as d/dt log p_t(X_t) = -div v(X_t, t), so

    log p_1(x1) = log N(x_0; 0, I) - int_{t0}^{t1} div v(x_t, t) dt,

where x_t is the ODE solution run backwards from x_{t1} = x1 (data) to t0 (noise). The state
(x_t, int_t^{t1} div v) is integrated in one solve (``integrate``). The divergence is exact (one
backward pass per dimension: for small dimensions) or Hutchinson's estimate eps^T (dv/dx) eps with
Rademacher probes eps drawn once per sample and held fixed over the solve (unbiased; for images).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.integrate import integrate, integration_times
from sitcli.transport.methods import LIKELIHOOD_METHODS, ode_method
from sitcli.transport.samplers import CountingModel
from sitcli.transport.transport import Transport

DIVERGENCES = ("exact", "hutchinson")


def _exact_divergence(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    flat_v = v.flatten(1)
    div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        div = div + grad.flatten(1)[:, i]
    return div


def _hutchinson_divergence(v: torch.Tensor, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad((v * probe).sum(), x)
    return (grad * probe).flatten(1).sum(dim=1)


def log_likelihood(
    transport: Transport,
    model: Callable,
    x1: torch.Tensor,
    method: str = "dopri5",
    atol: float = 1e-6,
    rtol: float = 1e-3,
    divergence: str = "exact",
    steps: int = 100,
    generator: torch.Generator | None = None,
    model_kwargs: dict | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """log p(x1) in nats, shape (B,), with a standard normal prior at t0.

    Args:
        method: one of ``methods.LIKELIHOOD_METHODS``: adaptive (``atol``/``rtol``) or fixed-grid
            (``steps`` steps).
        divergence: "exact" or "hutchinson".
        generator: draws the Hutchinson probes.
        prior_log_prob: log-density of x at t0, (B, ...) -> (B,); standard normal by default, which
            is exact only where alpha_t0 = 0 (t0 = 0 on linear and GVP).

    May be called under ``torch.no_grad`` or ``torch.inference_mode``: the divergence needs
    autograd, which this function switches on for itself (no graph outlives a step).
    """
    if divergence not in DIVERGENCES:
        raise InputError(f"unknown divergence {divergence!r}: choose exact or hutchinson")
    counter = CountingModel(model, model_kwargs)
    probe = None
    if divergence == "hutchinson":
        probe = torch.randint(
            0, 2, x1.shape, generator=generator, device="cpu" if generator is None else generator.device
        )
        probe = (2 * probe - 1).to(device=x1.device, dtype=x1.dtype)

    def dynamics(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = state[0].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            output, t_batch = counter(x, t)
            v = transport.velocity(output, x, t_batch)
            div = _exact_divergence(v, x) if probe is None else _hutchinson_divergence(v, x, probe)
        return v.detach(), div.detach()

    t0, t1 = transport.sample_interval()
    ode = ode_method(method, choices=LIKELIHOOD_METHODS)
    state = (x1.detach(), torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device))
    with torch.inference_mode(False), torch.no_grad():
        discrete_grid = transport.timestep_grid(dtype=torch.float64)
        times = integration_times(ode, t0, t1, steps, discrete_grid, x1.device, x1.dtype).flip(0)  # data to noise
        x0, integral = integrate(dynamics, state, ode, times, atol=atol, rtol=rtol)
    if prior_log_prob is not None:
        log_prior = prior_log_prob(x0)
    else:
        flat = x0.flatten(1)
        log_prior = -0.5 * (flat**2).sum(dim=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)
    # integral = int_{t1}^{t0} div v dt = -int_{t0}^{t1} div v dt
    return log_prior + integral
