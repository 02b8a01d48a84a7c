"""RAE's dimension-dependent time shift in sit's time (sitcli/transport/time_grids.py, time_sampling.py,
transport.py), checked against RAE's own formulas (src/stage2/transport/transport.py, integrators.py)
written here in RAE's time tau (tau = 1 noise)."""

import math

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import Transport
from sitcli.transport.time_grids import dimension_time_shift, resolve_time_shift, shift_time, time_grid
from sitcli.transport.time_sampling import sample_training_time

F64 = torch.float64


def rae_shift(tau, s):
    """RAE: t = s t / (1 + (s - 1) t), in its time (1 = noise)."""
    return s * tau / (1 + (s - 1) * tau)


def test_the_shift_of_raes_latents_is_sqrt_48():
    s = dimension_time_shift((768, 16, 16))
    assert round(s, 3) == 6.928 and math.isclose(s, math.sqrt(48), rel_tol=0, abs_tol=1e-15)
    assert dimension_time_shift((4, 32, 32)) == 1.0  # SD-VAE latents of 256 images: 4096 numbers, no shift
    assert math.isclose(dimension_time_shift((32, 16, 16)), math.sqrt(2))  # an f16c32 VAE at 256
    assert resolve_time_shift("dimension", (768, 16, 16)) == s
    assert resolve_time_shift(3.0) == 3.0 and resolve_time_shift("2.5") == 2.5
    with pytest.raises(InputError, match="needs the latent shape"):
        resolve_time_shift("dimension")
    with pytest.raises(InputError, match="one of dimension"):
        resolve_time_shift("resolution", (4, 32, 32))
    with pytest.raises(InputError, match="s > 0"):
        resolve_time_shift(0.0)


def test_sits_shift_is_raes_in_reversed_time():
    s = dimension_time_shift((768, 16, 16))
    tau = torch.linspace(0, 1, 101, dtype=F64)
    torch.testing.assert_close(shift_time(1 - tau, s), 1 - rae_shift(tau, s), rtol=0, atol=1e-15)
    # s > 1 moves every time towards noise: RAE's tau up, sit's t down.
    t = torch.tensor([0.25, 0.5, 0.75], dtype=F64)
    assert bool((shift_time(t, s) < t).all())
    assert math.isclose(float(shift_time(torch.tensor(0.5, dtype=F64), s)), 1 / (1 + s), rel_tol=1e-15)


def test_training_times_are_the_drawn_times_shifted_as_rae_shifts_them():
    s = dimension_time_shift((768, 16, 16))
    g = torch.Generator().manual_seed(0)
    plain = sample_training_time(5000, (0.0, 1.0), dtype=F64, generator=g, density="logit-normal")
    g = torch.Generator().manual_seed(0)
    shifted = sample_training_time(5000, (0.0, 1.0), dtype=F64, generator=g, density="logit-normal", time_shift=s)
    # RAE draws tau (logit-normal(0, 1) is symmetric, so tau = 1 - t is the same law), then shifts it.
    torch.testing.assert_close(shifted, 1 - rae_shift(1 - plain, s), rtol=0, atol=1e-15)
    # The median of logit-normal(0, 1) is 1/2; shifted, 1 / (1 + s) (about 0.126: most steps near noise).
    assert abs(float(shifted.median()) - 1 / (1 + s)) < 0.01
    # The transport draws the same times (time first, then noise, from one generator).
    tr = Transport("linear", "velocity", time_density="logit-normal", time_shift=s)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(tr.sample_time(5000, dtype=F64, generator=g), shifted, rtol=0, atol=0)
    assert "time_shift=6.9282" in repr(tr) and "time_shift" not in repr(Transport())


def test_a_shift_in_discrete_time_is_refused():
    with pytest.raises(InputError, match="continuous time"):
        Transport("linear", "velocity", num_timesteps=10, time_shift=2.0)
    with pytest.raises(InputError, match="continuous time"):
        sample_training_time(4, (0.0, 1.0), num_timesteps=10, time_shift=2.0)
    with pytest.raises(InputError, match="s > 0"):
        Transport(time_shift=0.0)


def test_raes_50_point_euler_grid_is_sits_shifted_grid_of_49_steps():
    # RAE's ODE sampler: tau = 1 - linspace(0, 0.999, 50), shifted; torchdiffeq's euler steps between the 50
    # points (49 steps) and stops at the shifted tau of 0.001, without a last step to tau = 0.
    s = dimension_time_shift((768, 16, 16))
    tau = rae_shift(1 - torch.linspace(0, 1 - 1 / 1000, 50, dtype=F64), s)
    end = float(shift_time(torch.tensor(0.999, dtype=F64), s))
    ours = time_grid(0.0, end, 49, time_shift=s, dtype=F64)
    torch.testing.assert_close(ours, 1 - tau, rtol=0, atol=1e-12)
    assert abs(end - 0.993113) < 1e-6  # sit's time of RAE's last point: the samples are decoded from there
