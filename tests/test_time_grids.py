"""Sampling time grids: the spacings, snapping in discrete time, and Transport.time_grid on top."""

import math

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import Transport
from sitcli.transport.time_grids import SPACINGS, snap_to_grid, time_grid, training_grid

F64 = torch.float64


def test_uniform_is_linspace_and_cosine_is_its_formula():
    assert torch.equal(time_grid(0.1, 0.9, 8, dtype=F64), torch.linspace(0.1, 0.9, 9, dtype=F64))
    u = torch.arange(9, dtype=F64) / 8
    expected = 0.1 + 0.8 * (1 - torch.cos(math.pi * u)) / 2
    grid = time_grid(0.1, 0.9, 8, "cosine", dtype=F64)
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-15)
    assert grid[0] == 0.1 and grid[-1] == 0.9  # the ends exactly


@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_spacing_increases_from_t0_to_t1(spacing):
    grid = time_grid(1e-3, 1 - 1e-3, 25, spacing, dtype=F64)
    assert len(grid) == 26 and grid[0] == 1e-3 and grid[-1] == 1 - 1e-3
    assert bool((grid.diff() > 0).all())


def test_snapping_lands_on_training_times():
    grid = training_grid(0.0, 1.0, 11, dtype=F64)
    times = time_grid(0.0, 1.0, 5, discrete_grid=grid, dtype=F64)
    assert torch.isin(times, grid).all() and len(times) == 6
    assert torch.equal(snap_to_grid(torch.tensor([0.04, 0.06, 0.5], dtype=F64), grid),
                       torch.tensor([0.0, 0.1, 0.5], dtype=F64))
    with pytest.raises(InputError, match=r"20 steps do not fit on the 11-point time grid.*use fewer steps or more"):
        time_grid(0.0, 1.0, 20, discrete_grid=grid)


def test_bad_arguments():
    with pytest.raises(InputError, match="steps=0 is invalid"):
        time_grid(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="unknown spacing 'log': uniform or cosine"):
        time_grid(0.0, 1.0, 4, "log")


@pytest.mark.parametrize("num_timesteps", [None, 1000])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_transport_time_grid_delegates(num_timesteps, spacing):
    tr = Transport("linear", "velocity", num_timesteps=num_timesteps)
    discrete = tr.timestep_grid(dtype=F64)
    assert torch.equal(tr.time_grid(0.0, 1.0, 30, dtype=F64, spacing=spacing),
                       time_grid(0.0, 1.0, 30, spacing, discrete, dtype=F64))
    assert tr.time_grid(0.0, 1.0, 30, spacing=spacing).dtype == torch.float32


def test_cosine_time_grid_is_dense_at_both_ends_and_exact_at_the_ends():
    grid = Transport("linear", "velocity").time_grid(0.0, 1.0, 10, dtype=F64, spacing="cosine")
    steps = grid.diff()
    assert grid[0] == 0 and grid[-1] == 1 and bool((steps > 0).all())
    assert steps[0] == pytest.approx(steps[-1]) and steps[0] < steps[5] / 5
    with pytest.raises(ValueError, match="spacing"):
        Transport("linear", "velocity").time_grid(0.0, 1.0, 10, spacing="log")
    # In discrete time its short end steps snap onto one training time sooner than a uniform grid's.
    discrete = Transport("linear", "velocity", num_timesteps=1000)
    assert len(discrete.time_grid(0.0, 1.0, 50, spacing="cosine")) == 51
    with pytest.raises(InputError, match="fewer steps or a uniform-grid method"):
        discrete.time_grid(0.0, 1.0, 100, spacing="cosine")
    assert len(discrete.time_grid(0.0, 1.0, 100)) == 101
