"""Training-time draws: the same random calls as before the registry, the right support and law."""

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import Transport
from sitcli.transport.time_sampling import TIME_DENSITIES, sample_training_time

F64 = torch.float64


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_continuous_draws_are_the_uniform_formula_bit_for_bit(dtype):
    t0, t1 = 1e-3, 1 - 1e-3
    t = sample_training_time(257, (t0, t1), dtype=dtype, generator=generator(3))
    expected = t0 + (t1 - t0) * torch.rand(257, dtype=dtype, generator=generator(3))
    assert t.dtype == dtype and torch.equal(t, expected)


def test_discrete_draws_are_an_index_into_the_grid_bit_for_bit():
    t = sample_training_time(300, (0.0, 1 - 1e-5), num_timesteps=7, dtype=F64, generator=generator(4))
    index = torch.randint(0, 7, (300,), generator=generator(4))
    expected = torch.linspace(0.0, 1 - 1e-5, 7, dtype=F64)[index]
    assert torch.equal(t, expected) and len(t.unique()) == 7


@pytest.mark.parametrize("interpolant,prediction,num_timesteps", [("linear", "velocity", None), ("vp", "noise", None),
                                                                  ("linear", "score", 11)])
def test_transport_sample_time_delegates(interpolant, prediction, num_timesteps):
    tr = Transport(interpolant, prediction, num_timesteps=num_timesteps)
    a = tr.sample_time(64, dtype=F64, generator=generator(5))
    b = sample_training_time(64, tr.train_interval(), num_timesteps, dtype=F64, generator=generator(5))
    assert torch.equal(a, b)


def test_uniform_draws_cover_the_interval_evenly():
    t0, t1 = 0.2, 0.7
    t = sample_training_time(40000, (t0, t1), dtype=F64, generator=generator(6))
    assert t.min() >= t0 and t.max() <= t1
    # Mean and variance of U[0.2, 0.7]: 0.45 and 0.5^2 / 12 (4 standard errors).
    assert abs(t.mean().item() - 0.45) < 4 * (0.5**2 / 12 / 40000) ** 0.5
    assert abs(t.var().item() - 0.5**2 / 12) < 1e-3


def test_unknown_density_is_refused():
    assert "uniform" in TIME_DENSITIES
    with pytest.raises(InputError, match="unknown time density 'lognorm': choose one of uniform"):
        sample_training_time(4, (0.0, 1.0), density="lognorm")
