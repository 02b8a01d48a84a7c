"""Sampling time grids: the spacings, snapping in discrete time, and Transport.time_grid on top."""

import math

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import GVP, VP, Linear, Transport, sample_ode, sample_sde
from sitcli.transport.time_conventions import noise_to_signal
from sitcli.transport.time_grids import SPACINGS, shift_time, snap_to_grid, time_grid, training_grid

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
    grid = time_grid(1e-3, 1 - 1e-3, 25, spacing, dtype=F64, interpolant=Linear())
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
    with pytest.raises(ValueError, match="unknown spacing 'log': uniform or cosine"):
        time_grid(0.0, 1.0, 4, "log")


@pytest.mark.parametrize("num_timesteps", [None, 1000])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_transport_time_grid_delegates(num_timesteps, spacing):
    tr = Transport("linear", "velocity", num_timesteps=num_timesteps)
    discrete = tr.timestep_grid(dtype=F64)
    steps = 12 if spacing == "edm" else 30  # edm's short steps near the data snap together sooner
    assert torch.equal(tr.time_grid(0.0, 1.0, steps, dtype=F64, spacing=spacing),
                       time_grid(0.0, 1.0, steps, spacing, discrete, dtype=F64, interpolant=tr.interpolant))
    assert tr.time_grid(0.0, 1.0, steps, spacing=spacing).dtype == torch.float32


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


# ------------------------------------------------------------------ time shift and the edm spacing

SHIFTS = [0.3, 3.0]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_timesteps", [None, 1000])
def test_shift_one_is_no_shift_bit_for_bit(spacing, num_timesteps):
    tr = Transport("gvp", "velocity", num_timesteps=num_timesteps)
    # edm's and logsnr's steps crowd at the data end and do not fit: refused both ways
    if spacing in ("edm", "logsnr") and num_timesteps:
        for shift in ({}, {"time_shift": 1.0}):
            with pytest.raises(InputError, match="do not fit"):
                tr.time_grid(1e-3, 1 - 1e-3, 10, spacing=spacing, **shift)
        return
    for dtype in (F64, torch.float32):
        assert torch.equal(tr.time_grid(1e-3, 1 - 1e-3, 10, dtype=dtype, spacing=spacing, time_shift=1.0),
                           tr.time_grid(1e-3, 1 - 1e-3, 10, dtype=dtype, spacing=spacing))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("s", SHIFTS)
def test_shifted_grids_are_the_shifted_points_of_a_grid_with_exact_ends(spacing, s):
    t0, t1 = 1e-3, 1 - 1e-3
    grid = time_grid(t0, t1, 16, spacing, dtype=F64, time_shift=s, interpolant=GVP())
    assert len(grid) == 17 and grid[0] == t0 and grid[-1] == t1 and bool((grid.diff() > 0).all())
    # SD3's map in its own time tau = 1 - t: tau' = s tau / (1 + (s - 1) tau), applied to the base grid.
    tau = 1 - time_grid(float(shift_time(t0, 1 / s)), float(shift_time(t1, 1 / s)), 16, spacing, dtype=F64,
                        interpolant=GVP())
    expected = 1 - s * tau / (1 + (s - 1) * tau)
    torch.testing.assert_close(grid[1:-1], expected[1:-1], rtol=0, atol=1e-14)
    # s > 1 spends more steps near the noise end (t = 0), s < 1 near the data.
    base = time_grid(t0, t1, 16, spacing, dtype=F64, interpolant=GVP())
    assert bool((grid[1:-1] < base[1:-1]).all()) == (s > 1)


@pytest.mark.parametrize("s", SHIFTS)
def test_shifted_uniform_variable_has_the_transformed_cdf(s):
    # phi_s(U), U ~ U[0, 1], has CDF P(phi_s(U) <= x) = phi_(1/s)(x): KS at 100,000 draws.
    n = 100_000
    x = shift_time(torch.rand(n, dtype=F64, generator=torch.Generator().manual_seed(7)), s).sort().values
    f = shift_time(x, 1 / s)
    d = max((torch.arange(1, n + 1, dtype=F64) / n - f).max().item(), (f - torch.arange(n, dtype=F64) / n).max().item())
    assert d < 1.95 / n**0.5
    wrong = shift_time(x, s)  # the map instead of its inverse fails the same test
    assert (wrong - torch.arange(1, n + 1, dtype=F64) / n).abs().max().item() > 0.05


@pytest.mark.parametrize("interpolant", [Linear(), GVP(), VP()])
@pytest.mark.parametrize("rho", [1.0, 7.0])
@pytest.mark.parametrize("t1", [0.99, 1.0])
def test_edm_grid_is_rho_spaced_in_sigma(interpolant, rho, t1):
    t0 = 0.0 if interpolant.name != "vp" else 1e-3
    grid = time_grid(t0, t1, 12, "edm", dtype=F64, interpolant=interpolant, edm_rho=rho)
    assert len(grid) == 13 and grid[0] == t0 and grid[-1] == t1 and bool((grid.diff() > 0).all())
    sigma = noise_to_signal(interpolant, grid)
    # sigma(t0) is infinite for linear and GVP and about 152 for VP, above EDM's 80: the grid is t0,
    # then points from sigma = 80 evenly spaced in sigma^(1/rho) down to sigma(t1), or, where that is
    # below EDM's 0.002 (t1 = 1), down to 0.002 and then t1.
    inner = sigma[1:] if t1 < 1 else sigma[1:-1]
    last = float(noise_to_signal(interpolant, torch.tensor(t1, dtype=F64))) if t1 < 1 else 0.002
    ends = torch.tensor([80.0, last], dtype=F64)
    root = inner ** (1 / rho)
    torch.testing.assert_close(root[[0, -1]], ends ** (1 / rho), rtol=1e-10, atol=0)  # VP: sigma ~ sqrt(1 - t)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(len(root) - 1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("heun", 2), ("rk4", 4), ("adams", 1)])
@pytest.mark.parametrize("spacing,s", [(None, 3.0), ("edm", 1.0), ("cosine", 0.3)])
def test_nfe_is_exact_on_every_grid(method, per_step, spacing, s):
    calls = []
    model = lambda x, t, **_: calls.append(float(t[0])) or -x  # noqa: E731
    tr = Transport("linear", "velocity")
    x, nfe = sample_ode(tr, model, torch.randn(2, 3), method, 7, spacing=spacing, time_shift=s)
    assert nfe == len(calls) == 7 * per_step and torch.isfinite(x).all()
    _, nfe = sample_sde(tr, model, torch.randn(2, 3), "euler", 7, spacing=spacing, time_shift=s)
    assert nfe == 7


def test_adaptive_methods_refuse_a_shift_or_a_spacing():
    tr, model = Transport("linear", "velocity"), (lambda x, t, **_: -x)
    with pytest.raises(InputError, match="dopri5.*chooses its own steps.*time shift 3"):
        sample_ode(tr, model, torch.randn(2, 3), "dopri5", time_shift=3.0)
    with pytest.raises(InputError, match="spacing 'edm'"):
        sample_ode(tr, model, torch.randn(2, 3), "dopri5", spacing="edm")


@pytest.mark.parametrize("interpolant", [Linear(), GVP(), VP()])
def test_logsnr_is_uniform_in_log_snr_between_edm_caps(interpolant):
    """Inside the caps the steps are equal in lambda = log(alpha / sigma) = -log(sigma_t / alpha_t); the first
    step runs from t0 to sigma = 80 where sigma(t0) is above it (all three here, VP's sigma(0) being ~152) and
    the last from sigma = 0.002 to t1 = 1."""
    grid = time_grid(0.0, 1.0, 12, "logsnr", dtype=F64, interpolant=interpolant)
    assert grid[0] == 0 and grid[-1] == 1 and bool((grid.diff() > 0).all())
    lam = -torch.log(noise_to_signal(interpolant, grid[1:-1]))
    torch.testing.assert_close(lam[[0, -1]], torch.tensor([-math.log(80), -math.log(0.002)], dtype=F64))
    torch.testing.assert_close(lam.diff(), torch.full((10,), float(lam[-1] - lam[0]) / 10, dtype=F64))
    interior = time_grid(0.2, 0.8, 6, "logsnr", dtype=F64, interpolant=interpolant)  # no caps needed
    lam = -torch.log(noise_to_signal(interpolant, interior))
    torch.testing.assert_close(lam.diff(), torch.full((6,), float(lam[-1] - lam[0]) / 6, dtype=F64))
