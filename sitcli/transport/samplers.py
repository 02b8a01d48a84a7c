"""Samplers: carry N(0, I) noise at t = 0 to data at t = 1 with a trained model.

Both take any callable ``model(x, t, **model_kwargs)`` (t of shape (B,)), convert its output with
the transport, and return ``(samples, nfe)`` where nfe counts model evaluations (a classifier-free
guided call counts one, its two passes being one doubled batch; an autoguided call two, one per network).
Samples keep the dtype and device of ``x0``.

ODE (probability flow):  dX = v(X, t) dt,   solved by ``integrate`` with a method of ``methods``.
SDE:                     dX = [v(X, t) + w(t) s(X, t)] dt + sqrt(2 w(t)) dW,   see ``diffusion``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from sitcli.errors import InputError
from sitcli.transport.diffusion import check_diffusion_coefficient, diffusion_coefficient
from sitcli.transport.integrate import integrate, integration_times
from sitcli.transport.methods import LAST_STEPS, ode_method, sde_method
from sitcli.transport.searched import SearchedSolver, searched_sample
from sitcli.transport.time_grids import snap_to_grid
from sitcli.transport.transport import Transport

Generator = torch.Generator | Sequence[torch.Generator] | None


class CountingModel:
    """Calls ``model(x, t, **kwargs)`` with t broadcast to shape (B,) and counts the evaluations: one
    per call, or ``model.evaluations(t)`` where the model says how many networks a call runs
    (autoguidance runs two)."""

    def __init__(self, model: Callable, model_kwargs: dict | None):
        self.model = model
        self.model_kwargs = model_kwargs or {}
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        self.nfe += self.model.evaluations(t) if hasattr(self.model, "evaluations") else 1
        return self.model(x, t, **self.model_kwargs).to(x.dtype), t


def _grad_mode(x0: torch.Tensor):
    # Sampling builds no graph unless the caller asked for gradients through x0.
    return contextlib.nullcontext() if x0.requires_grad else torch.no_grad()


def ode_time_grid(
    transport: Transport,
    method: str = "adams",
    steps: int = 50,
    spacing: str | None = None,
    time_shift: float = 1.0,
    edm_rho: float = 7.0,
    device=None,
    dtype=torch.float32,
    solver: SearchedSolver | None = None,
) -> torch.Tensor:
    """The increasing times an ODE ``method`` steps on from noise to data (``integrate.integration_times``): the
    ``steps`` + 1 points of ``spacing`` (None: the method's own), shifted by ``time_shift`` and snapped to the
    discrete grid in discrete time; a searched ``solver``'s own times for "searched"; (t0, t1) for adaptive
    methods, which refuse a spacing or a shift. Built before any sampling, so that every refusal of these settings
    comes before work is done."""
    if ode_method(method).kind == "searched":
        return searched_time_grid(transport, solver, device, dtype)
    t0, t1 = transport.sample_interval()
    return integration_times(
        ode_method(method),
        t0,
        t1,
        steps,
        transport.timestep_grid(dtype=torch.float64),
        device,
        dtype,
        spacing,
        time_shift,
        transport.interpolant,
        edm_rho,
    )


def searched_time_grid(transport: Transport, solver: SearchedSolver | None, device=None,
                       dtype=torch.float32) -> torch.Tensor:
    """A searched solver's times; in discrete time they must be training times (``sit search-solver`` searches
    such a model's solver on its snapped grid, with the times fixed)."""
    if solver is None:
        raise InputError("--method searched needs --solver FILE, a solver made for this model by sit search-solver")
    times = solver.times.to(torch.float64)
    discrete = transport.timestep_grid(dtype=torch.float64)
    if discrete is not None and not torch.allclose(snap_to_grid(times, discrete), times, rtol=0, atol=1e-12):
        raise InputError("this searched solver steps between the model's training times (discrete time): search "
                         "one for this model with sit search-solver, which keeps to them")
    return times.to(device=device, dtype=dtype)


def sample_ode(
    transport: Transport,
    model: Callable,
    x0: torch.Tensor,
    method: str = "adams",
    steps: int = 50,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    model_kwargs: dict | None = None,
    spacing: str | None = None,
    time_shift: float = 1.0,
    edm_rho: float = 7.0,
    time_grid: torch.Tensor | None = None,
    solver: SearchedSolver | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrate the probability-flow ODE from noise x0 at t0 to data at t1.

    Args:
        method: a name in ``methods.ODE_METHODS``: fixed grid "euler" | "heun" | "midpoint" | "rk4"
            (``steps`` steps, so nfe is steps x 1, 2, 2, 4); multistep "adams" (4th-order Adams-Bashforth on a
            cosine grid, nfe = steps); exponential "dpm++2m" | "dpm++3m" | "unipc" (in the log-SNR, uniform grid,
            logsnr on VP; nfe = steps); "searched" with ``solver`` (its own steps); or adaptive "dopri5" |
            "dopri8" | "bosh3" | "tsit5" (``atol``, ``rtol``).
        time_grid: the times to step on (``ode_time_grid``); None builds it from ``steps``, ``spacing``,
            ``time_shift`` and ``edm_rho`` (from ``solver`` for "searched": its times are the grid).
        solver: the ``searched.SearchedSolver`` of method "searched" (``sitcli.solver_file.read_solver``).
    Returns:
        (samples, nfe).
    """
    counter = CountingModel(model, model_kwargs)

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        output, t_batch = counter(x, t)
        return transport.velocity(output, x, t_batch)

    if time_grid is None:
        time_grid = ode_time_grid(transport, method, steps, spacing, time_shift, edm_rho, x0.device, x0.dtype,
                                  solver=solver)
    with _grad_mode(x0):
        if ode_method(method).kind == "searched":
            if solver is None or len(time_grid) != solver.nfe + 1:
                raise ValueError("method 'searched' runs on its solver's times: pass solver= and its time grid")
            x, _ = searched_sample(velocity, x0, solver)
        else:
            x = integrate(velocity, x0, ode_method(method), time_grid.to(device=x0.device, dtype=x0.dtype), atol=atol,
                          rtol=rtol, interpolant=transport.interpolant)
    return x, counter.nfe


def standard_normal_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """N(0, I) noise shaped like x; with a list of generators, row i is drawn from generator i,
    so a sample's noise does not depend on the batch it is drawn in."""
    if generator is None or isinstance(generator, torch.Generator):
        device = x.device if generator is None else generator.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
    return torch.stack(rows).to(x.device)


def sde_time_grid(
    transport: Transport,
    steps: int = 250,
    w: str = "sigma",
    last_step: str | None = "euler",
    last_step_size: float = 0.04,
    spacing: str | None = None,
    time_shift: float = 1.0,
    edm_rho: float = 7.0,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """The times of the SDE's steps before its last step (``sample_sde``): from t0 (where w(t) and the score
    are finite) to 1 - last_step_size with a last step, to t1 without; uniform unless ``spacing``. Built before
    any sampling, so that every refusal of these settings comes before work is done."""
    last_step = "none" if last_step is None else str(last_step).lower()
    t0, t1 = transport.sample_interval(sde=True, w=check_diffusion_coefficient(w))
    if last_step != "none":
        t1 = 1.0 - last_step_size
        if not t0 < t1 < 1:
            raise InputError(f"--last-step-size {last_step_size:g} must lie in (0, {1 - t0:g}): e.g. 0.04")
        if steps < 2:
            raise InputError("--steps must be >= 2 with a last step (one SDE step plus the last step)")
    return transport.time_grid(
        t0,
        t1,
        steps - 1 if last_step != "none" else steps,
        device=device,
        dtype=dtype,
        spacing=spacing or "uniform",
        time_shift=time_shift,
        edm_rho=edm_rho,
    )


def sample_sde(
    transport: Transport,
    model: Callable,
    x0: torch.Tensor,
    method: str = "euler",
    steps: int = 250,
    w: str = "sigma",
    w_norm: float = 1.0,
    last_step: str | None = "euler",
    last_step_size: float = 0.04,
    generator: Generator = None,
    model_kwargs: dict | None = None,
    spacing: str | None = None,
    time_shift: float = 1.0,
    edm_rho: float = 7.0,
    time_grid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrate dX = [v + w(t) s] dt + sqrt(2 w(t)) dW from noise x0 at t0 to data.

    One model output gives both v and s, so an Euler-Maruyama step costs one evaluation and a
    Heun step two (its second evaluation is skipped where sigma_t = 0, where the score is undefined).

    Args:
        method: "euler" (Euler-Maruyama) or "heun" (stochastic Heun: noise first, then a Heun step).
        steps: number of steps, counting the last step: with ``last_step`` the SDE takes
            steps - 1 steps from t0 to 1 - last_step_size and then the last step to t = 1;
            with ``last_step="none"`` it takes ``steps`` steps from t0 to t1.
        w, w_norm: the diffusion coefficient (``diffusion.DIFFUSION_COEFFICIENTS``) and its scale.
        last_step: how the final ``last_step_size`` of time is crossed without noise:
            "euler" (the default): one probability-flow ODE step x + v h. It follows the marginals
            whatever w(t) is, so it is right for every diffusion coefficient and interpolant.
            "mean": the official code's default, a drift step x + (v + w s) h without noise; for a
            large w it pulls every sample towards its posterior mean and narrows the distribution
            (examples/README.md measures it). Kept by name to reproduce the official code.
            "tweedie": the posterior mean E[x1 | x] in one jump. "none": the SDE runs to t1.
        generator: a torch.Generator, or one per sample row (per-sample seeds).
        time_grid: the SDE's times before its last step (``sde_time_grid``); None builds it from ``steps``,
            ``w``, ``last_step``, ``last_step_size``, ``spacing``, ``time_shift`` and ``edm_rho``.
    Returns:
        (samples, nfe).
    """
    w = check_diffusion_coefficient(w)
    sde_method(method)  # an unknown name is refused, not run as Heun
    last_step = "none" if last_step is None else str(last_step).lower()
    if last_step not in LAST_STEPS:
        raise ValueError(f"unknown last step {last_step!r}: choose one of {', '.join(LAST_STEPS)}")
    if time_grid is None:
        time_grid = sde_time_grid(
            transport, steps, w, last_step, last_step_size, spacing, time_shift, edm_rho, x0.device, x0.dtype
        )
    grid = time_grid.to(device=x0.device, dtype=x0.dtype)

    interpolant = transport.interpolant
    counter = CountingModel(model, model_kwargs)

    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output, t_batch = counter(x, t)
        v = transport.velocity(output, x, t_batch)
        return v + diffusion_coefficient(w, interpolant, t, w_norm) * transport.score(output, x, t_batch)

    def noise_scale(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(2 * diffusion_coefficient(w, interpolant, t, w_norm) * h)

    x = x0
    with _grad_mode(x0):
        for t, t_next in zip(grid[:-1], grid[1:]):
            h = t_next - t
            if method == "euler":
                x = x + drift(x, t) * h + noise_scale(t, h) * standard_normal_like(x, generator)
            else:
                x_hat = x + noise_scale(t, h) * standard_normal_like(x, generator)
                k1 = drift(x_hat, t)
                x = x_hat + h * k1
                if float(interpolant.sigma(t_next)) > 0:
                    x = x_hat + h / 2 * (k1 + drift(x, t_next))
        if last_step != "none":
            t = grid[-1]
            h = 1 - t
            if last_step == "mean":
                x = x + drift(x, t) * h
            else:
                output, t_batch = counter(x, t)
                if last_step == "tweedie":
                    x = transport.data(output, x, t_batch)
                else:
                    x = x + transport.velocity(output, x, t_batch) * h
    return x, counter.nfe
