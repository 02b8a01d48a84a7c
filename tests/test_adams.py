"""sit's variable-step Adams-Bashforth: Euler at order 1, exact on polynomials once it is past its start-up."""

import torch

from sitcli.transport.adams import adams_bashforth
from sitcli.transport.time_grids import time_grid

F64 = torch.float64


def test_order_one_is_explicit_euler():
    grid = time_grid(0.0, 1.0, 9, "cosine", dtype=F64)
    velocity = lambda t, x: torch.sin(3 * t) - x  # noqa: E731
    x = torch.tensor([0.5], dtype=F64)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = x + (t_next - t) * velocity(t, x)
    torch.testing.assert_close(adams_bashforth(velocity, torch.tensor([0.5], dtype=F64), grid, order=1), x)


def test_past_the_start_up_each_step_integrates_a_cubic_exactly():
    """With v = p(t) cubic, steps n >= 3 use four points and so integrate p exactly on any grid."""
    grid = torch.tensor([0.0, 0.05, 0.2, 0.3, 0.45, 0.7, 0.8, 1.0], dtype=F64)
    p = lambda t: 1 + t - 3 * t**2 + 4 * t**3  # noqa: E731
    antiderivative = lambda t: t + t**2 / 2 - t**3 + t**4  # noqa: E731
    velocity = lambda t, x: p(t) * torch.ones_like(x)  # noqa: E731
    x0 = torch.zeros(1, dtype=F64)
    full = adams_bashforth(velocity, x0, grid)
    start = adams_bashforth(velocity, x0, grid[:4])
    torch.testing.assert_close(full - start, antiderivative(grid[-1:]) - antiderivative(grid[3:4]), rtol=0, atol=1e-14)
    # ...and its start-up steps are not exact, which is what the cosine grid's short first steps are for.
    assert (start - (antiderivative(grid[3]) - antiderivative(grid[0]))).abs().item() > 1e-6


def test_one_evaluation_per_step():
    calls = []
    grid = time_grid(0.0, 1.0, 17, "cosine", dtype=F64)
    adams_bashforth(lambda t, x: calls.append(float(t)) or -x, torch.ones(2, dtype=F64), grid)
    assert calls == grid[:-1].tolist()
