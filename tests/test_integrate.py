"""The one ODE dispatch: which times each kind of method runs on, and exact answers on simple ODEs."""

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport.integrate import integrate, integration_times
from sitcli.transport.interpolants import get_interpolant
from sitcli.transport.methods import ODE_METHODS, fixed_grid_names
from sitcli.transport.time_grids import time_grid, training_grid

F64 = torch.float64


def test_adaptive_methods_are_refused_in_discrete_time():
    grid = training_grid(0.0, 1.0, 100, dtype=F64)
    for name, method in ODE_METHODS.items():
        if method.kind == "searched":  # its times come from its file (samplers.searched_time_grid)
            with pytest.raises(ValueError, match="own times"):
                integration_times(name, 0.0, 1.0, 10, discrete_grid=grid)
        elif method.kind == "adaptive":
            with pytest.raises(InputError, match=rf"^adaptive ODE method '{name}' steps off the discrete time grid: "
                                                 rf"use {fixed_grid_names()}$"):
                integration_times(name, 0.0, 1.0, 10, discrete_grid=grid)
        else:
            times = integration_times(name, 0.0, 1.0, 10, discrete_grid=grid, dtype=F64)
            assert len(times) == 11 and torch.isin(times, grid).all()


def test_times_follow_the_method():
    assert torch.equal(integration_times("rk4", 0.1, 0.9, 6, dtype=F64), time_grid(0.1, 0.9, 6, dtype=F64))
    assert torch.equal(integration_times("adams", 0.1, 0.9, 6, dtype=F64), time_grid(0.1, 0.9, 6, "cosine", dtype=F64))
    assert integration_times("dopri5", 0.1, 0.9, 6, dtype=F64).tolist() == [0.1, 0.9]


@pytest.mark.parametrize("name,reverse", [(n, r) for n, m in ODE_METHODS.items() for r in (False, True)
                                          if m.kind != "searched" and not (r and m.kind == "exponential")])
def test_every_method_integrates_a_cubic_in_time(name, reverse):
    """dy/dt = 4 t^3 from 0 to 1 adds 1 (subtracts 1 backwards): 4th-order Runge-Kutta (Simpson's rule
    here) is exact for cubics, the adaptive methods meet their tolerance, the rest converge. The exponential
    integrators read the dynamics as the velocity of the linear interpolant and run forwards only."""
    times = integration_times(name, 0.0, 1.0, 20, dtype=F64)
    times = times.flip(0) if reverse else times
    seen = []

    def dynamics(t, y):
        seen.append(float(t))
        return 4 * t**3 * torch.ones_like(y)

    y = integrate(dynamics, torch.zeros(3, dtype=F64), name, times, atol=1e-10, rtol=1e-10,
                  interpolant=get_interpolant("linear"))
    error = (y - (-1 if reverse else 1)).abs().max().item()
    method = ODE_METHODS[name]
    exact = method.kind == "adaptive" or (method.kind == "fixed" and method.order >= 4)
    # The exponential integrators' first step (from lambda = -inf) and last (into sigma = 0) have order 1, and on
    # the uniform grid their log-SNR steps grow without bound near t = 1: 3.3e-3 (2M), 2.3e-2 (3M), 1.6e-3 (UniPC).
    tolerance = 1e-8 if exact else 0.05 if method.kind == "exponential" else {1: 0.2, 2: 0.01}.get(method.order, 1e-3)
    assert error < tolerance, (name, error)
    assert 0.0 <= min(seen) and max(seen) <= 1.0  # the adaptive ones land on the end, never past it


@pytest.mark.parametrize("name", [n for n, m in ODE_METHODS.items() if m.kind in ("fixed", "adaptive")])
def test_tuple_states_for_fixed_and_adaptive_methods(name):
    """The likelihood's state: (x, integral) with dx/dt = -x, d integral/dt = x, run backwards."""
    times = integration_times(name, 0.0, 1.0, 200, dtype=F64).flip(0)
    x1 = torch.tensor([1.0, 2.0], dtype=F64)
    x0, integral = integrate(lambda t, s: (-s[0], s[0]), (x1, torch.zeros(2, dtype=F64)), name, times,
                             atol=1e-10, rtol=1e-10)
    e = torch.exp(torch.tensor(1.0, dtype=F64))
    tolerance = 0.02 if name == "euler" else 1e-4
    torch.testing.assert_close(x0, x1 * e, rtol=tolerance, atol=0)
    torch.testing.assert_close(integral, x1 - x1 * e, rtol=tolerance, atol=0)
