"""One ODE integration for the samplers and the likelihood: dy/dt = f(t, y) from times[0] to times[-1].

``integration_times`` chooses the times a method runs on, ``integrate`` runs it; between the two
a caller may reverse the times (the likelihood integrates from data back to noise) or pass a grid
of its own. By the method's kind (``methods``):

    fixed        torchdiffeq on exactly the given grid (its grid_constructor returns it)
    multistep    sit's own solver on the given grid
    exponential  sit's exponential integrator on the given grid, in the log-SNR of ``interpolant``
    adaptive     torchdiffeq from times[0] to times[-1] under atol / rtol, made to land on every
                 given time (step_t) rather than step past it and interpolate back, so f is never
                 evaluated outside the interval

A searched solver (kind "searched") brings its own times and coefficients: ``samplers.sample_ode`` runs it.

The dynamics follow torchdiffeq: ``f(t, y)`` with t a 0-dim tensor and y a tensor, or a tuple of
tensors for fixed and adaptive methods.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchdiffeq import odeint

import sitcli.transport.tsit5  # noqa: F401  (registers method "tsit5" with torchdiffeq)
from sitcli.errors import InputError
from sitcli.transport.interpolants import Interpolant
from sitcli.transport.methods import ODEMethod, fixed_grid_names, ode_method
from sitcli.transport.time_grids import time_grid

State = torch.Tensor | tuple[torch.Tensor, ...]


def integration_times(
    method: str | ODEMethod,
    t0: float,
    t1: float,
    steps: int = 50,
    discrete_grid: torch.Tensor | None = None,
    device=None,
    dtype=torch.float32,
    spacing: str | None = None,
    time_shift: float = 1.0,
    interpolant: Interpolant | None = None,
    edm_rho: float = 7.0,
) -> torch.Tensor:
    """The increasing times ``method`` runs on from t0 to t1.

    Fixed-step methods: the steps + 1 points of ``spacing`` (None: the method's own for this
    interpolant, ``ODEMethod.grid_spacing``), shifted by ``time_shift``, snapped onto ``discrete_grid``
    (the training times of discrete time) when one is given (``time_grids.time_grid``). Adaptive methods:
    (t0, t1); they choose their own steps, so they are refused in discrete time and with a spacing or a
    time shift.
    """
    method = ode_method(method) if isinstance(method, str) else method
    if method.kind == "adaptive":
        if discrete_grid is not None:
            raise InputError(
                f"adaptive ODE method {method.name!r} steps off the discrete time grid: use {fixed_grid_names()}"
            )
        if time_shift != 1 or spacing is not None:
            what = f"time shift {time_shift:g}" if time_shift != 1 else f"spacing {spacing!r}"
            raise InputError(
                f"adaptive ODE method {method.name!r} chooses its own steps, so a {what} means nothing to it: "
                f"use a fixed-grid method ({fixed_grid_names()}) or adams, or drop the option"
            )
        return torch.tensor([t0, t1], device=device, dtype=dtype)
    if method.kind == "searched":
        raise ValueError("a searched solver steps on its own times (samplers.ode_time_grid with solver=)")
    spacing = spacing or method.grid_spacing(None if interpolant is None else interpolant.name)
    return time_grid(t0, t1, steps, spacing, discrete_grid, device=device, dtype=dtype,
                     time_shift=time_shift, interpolant=interpolant, edm_rho=edm_rho)


def integrate(
    dynamics: Callable[[torch.Tensor, State], State],
    state: State,
    method: str | ODEMethod,
    times: torch.Tensor,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    interpolant: Interpolant | None = None,
) -> State:
    """The solution at times[-1] of d state/dt = dynamics(t, state), state given at times[0].

    ``times`` is monotone, either way in time (increasing for exponential methods); ``atol`` and ``rtol``
    matter only to adaptive methods, ``interpolant`` only to exponential ones (dynamics is then its velocity).
    """
    method = ode_method(method) if isinstance(method, str) else method
    if method.kind == "multistep":
        return method.solver(dynamics, state, times)
    if method.kind == "exponential":
        if interpolant is None:
            raise ValueError(f"{method.name} steps in the log-SNR of an interpolant: pass interpolant=")
        return method.solver(dynamics, state, times, interpolant)[0]
    if method.kind == "searched":
        raise ValueError("a searched solver brings its own times and coefficients: run it with sample_ode(solver=)")
    if method.kind == "fixed":
        options = {"grid_constructor": lambda *_: times}
        solution = odeint(dynamics, state, times[[0, -1]], method=method.solver, options=options)
    else:
        options = {"step_t": times[1:]}
        solution = odeint(dynamics, state, times, method=method.solver, atol=atol, rtol=rtol, options=options)
    return tuple(s[-1] for s in solution) if isinstance(state, tuple) else solution[-1]
