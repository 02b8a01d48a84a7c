"""Training-time draws: the same random calls as before the registry, the right support and law."""

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import Transport
from sitcli.transport.time_sampling import TIME_DENSITIES, discrete_weights, sample_training_time

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


# ------------------------------------------------------------------ the densities against their CDFs

N = 100_000
# The Kolmogorov-Smirnov critical value at level 0.001: 1.95 / sqrt(N).
KS_CRITICAL = 1.95 / N**0.5
DENSITIES = [("uniform", {}), ("logit-normal", {}), ("logit-normal", {"logit_mean": -0.8, "logit_std": 0.6}),
             ("mode", {}), ("mode", {"mode_scale": -0.7}), ("cosmap", {})]


def ks_distance(samples, cdf):
    x = samples.sort().values
    f = cdf(x)
    n = len(x)
    upper = torch.arange(1, n + 1, dtype=F64) / n - f
    lower = f - torch.arange(0, n, dtype=F64) / n
    return max(upper.max().item(), lower.max().item())


@pytest.mark.parametrize("name,params", DENSITIES)
def test_continuous_draws_follow_the_analytic_cdf(name, params):
    tr = Transport("linear", "velocity", train_eps=0.02, time_density=name, time_density_params=params)
    t0, t1 = tr.train_interval()
    t = tr.sample_time(N, dtype=F64, generator=generator(11))
    assert t.min() >= t0 and t.max() <= t1
    density, full = TIME_DENSITIES[name], {**TIME_DENSITIES[name].params, **params}
    assert ks_distance(t, lambda x: density.cdf(full, (x - t0) / (t1 - t0))) < KS_CRITICAL


@pytest.mark.parametrize("name,params", DENSITIES)
def test_the_wrong_cdf_is_rejected_by_the_same_test(name, params):
    # The test above can fail: uniform draws against every other density's CDF (and the reverse).
    other = "logit-normal" if name != "logit-normal" else "cosmap"
    t = sample_training_time(N, (0.0, 1.0), dtype=F64, generator=generator(12), density=name, params=params)
    density = TIME_DENSITIES[other]
    assert ks_distance(t, lambda x: density.cdf(density.params, x)) > 5 * KS_CRITICAL


@pytest.mark.parametrize("name,params", DENSITIES)
def test_discrete_draws_follow_the_density_weighted_grid(name, params):
    T, interval = 12, (0.0, 1 - 1e-5)
    t = sample_training_time(N, interval, num_timesteps=T, dtype=F64, generator=generator(13), density=name,
                             params=params)
    grid = torch.linspace(*interval, T, dtype=F64)
    assert (t[:, None] == grid).any(dim=1).all()
    density, full = TIME_DENSITIES[name], {**TIME_DENSITIES[name].params, **params}
    weights = density.pdf(full, torch.linspace(0, 1, T, dtype=F64))
    weights = weights / weights.sum()
    torch.testing.assert_close(discrete_weights(name, params, T), weights)
    empirical = torch.stack([(t <= g).double().mean() for g in grid])
    assert (empirical - weights.cumsum(0)).abs().max().item() < KS_CRITICAL
    if name == "logit-normal":  # zero density at both ends: the end points are never drawn
        assert not ((t == grid[0]) | (t == grid[-1])).any()


@pytest.mark.parametrize("name,params", DENSITIES)
def test_pdf_is_the_derivative_of_the_cdf(name, params):
    density, full = TIME_DENSITIES[name], {**TIME_DENSITIES[name].params, **params}
    u, h = torch.linspace(0.05, 0.95, 19, dtype=F64), 1e-6
    numeric = (density.cdf(full, u + h) - density.cdf(full, u - h)) / (2 * h)
    torch.testing.assert_close(density.pdf(full, u), numeric, rtol=1e-6, atol=1e-6)


def test_sd3_logit_normal_mean_is_negated_in_sits_time():
    # SD3 draws t_SD3 = sigmoid(m + s z) with t_SD3 = 1 noise; sit's u = 1 - t_SD3 is logit-normal(-m, s).
    sd3 = 1 - torch.sigmoid(0.5 + 1.0 * torch.randn(N, dtype=F64, generator=generator(14)))
    density = TIME_DENSITIES["logit-normal"]
    assert ks_distance(sd3, lambda x: density.cdf({"logit_mean": -0.5, "logit_std": 1.0}, x)) < KS_CRITICAL
    assert ks_distance(sd3, lambda x: density.cdf({"logit_mean": 0.5, "logit_std": 1.0}, x)) > 5 * KS_CRITICAL


@pytest.mark.parametrize("kwargs,message", [
    ({"time_density": "lognorm"}, "unknown time density 'lognorm'"),
    ({"time_density": "uniform", "time_density_params": {"logit_mean": 1.0}}, "takes no logit_mean"),
    ({"time_density": "logit-normal", "time_density_params": {"logit_std": 0.0}}, "logit_std=0.0 must be positive"),
    ({"time_density": "mode", "time_density_params": {"mode_scale": 2.0}}, "mode_scale=2.0"),
])
def test_bad_densities_are_refused_when_the_transport_is_built(kwargs, message):
    with pytest.raises(InputError, match=message):
        Transport("linear", "velocity", **kwargs)


def test_uniform_density_with_default_parameters_draws_as_before():
    tr = Transport("linear", "velocity", time_density="uniform")
    a = tr.sample_time(64, dtype=F64, generator=generator(5))
    assert torch.equal(a, sample_training_time(64, tr.train_interval(), dtype=F64, generator=generator(5)))
