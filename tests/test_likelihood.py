"""log_likelihood against the exact log-density of a Gaussian mixture."""

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import LIKELIHOOD_METHODS, GaussianMixture, Transport, log_likelihood

F64 = torch.float64
GM = GaussianMixture([[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]], [[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]], [0.3, 0.3, 0.4])


def data(n, seed=0):
    return GM.sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_exact_divergence_matches_the_exact_log_density():
    """Linear velocity: t0 = 0 is exactly N(0, I), so the default prior makes the answer exact."""
    tr = Transport("linear", "velocity")
    x1 = data(16)
    logp = log_likelihood(tr, GM.model("linear", "velocity"), x1, method="dopri5", atol=1e-8, rtol=1e-8)
    exact = GM.log_prob("linear", x1, 1.0)
    assert logp.shape == (16,)
    assert (logp - exact).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("interpolant,prediction", [("gvp", "score"), ("vp", "noise"), ("vp", "velocity")])
def test_other_transports_with_the_exact_prior(interpolant, prediction):
    """Where t0 > 0 or alpha_0 > 0, p_t0 is not exactly N(0, I): with the exact prior the answer is exact."""
    tr = Transport(interpolant, prediction)
    t0, t1 = tr.sample_interval()
    x1 = data(12, seed=1)
    prior = lambda x: GM.log_prob(interpolant, x, t0)  # noqa: E731
    logp = log_likelihood(tr, GM.model(interpolant, prediction), x1, atol=1e-8, rtol=1e-8, prior_log_prob=prior)
    assert (logp - GM.log_prob(interpolant, x1, t1)).abs().max() < 1e-5
    # The standard-normal prior is then an approximation, good to about a hundredth of a nat here.
    approx = log_likelihood(tr, GM.model(interpolant, prediction), x1, atol=1e-8, rtol=1e-8)
    assert (approx - GM.log_prob(interpolant, x1, t1)).abs().max() < 0.05


def test_fixed_grid_likelihood():
    tr = Transport("linear", "velocity")
    x1 = data(8, seed=2)
    logp = log_likelihood(tr, GM.model("linear", "velocity"), x1, method="rk4", steps=50)
    assert (logp - GM.log_prob("linear", x1, 1.0)).abs().max() < 1e-3


@pytest.mark.slow
def test_hutchinson_is_unbiased():
    tr = Transport("linear", "velocity")
    point = data(1, seed=3)
    x1 = point.repeat(400, 1)
    logp = log_likelihood(tr, GM.model("linear", "velocity"), x1, divergence="hutchinson", atol=1e-7, rtol=1e-7,
                          generator=torch.Generator().manual_seed(4))
    exact = GM.log_prob("linear", point, 1.0)
    stderr = logp.std() / 400**0.5
    assert logp.std() > 0  # the probes differ between rows
    assert (logp.mean() - exact).abs() < 4 * stderr + 1e-4


@pytest.mark.slow
def test_works_under_inference_mode_and_rejects_bad_names():
    tr = Transport("linear", "velocity")
    with torch.inference_mode():
        x1 = data(4, seed=5)
        logp = log_likelihood(tr, GM.model("linear", "velocity"), x1, method="rk4", steps=20)
    assert torch.isfinite(logp).all()
    with pytest.raises(InputError, match="unknown divergence"):
        log_likelihood(tr, GM.model("linear", "velocity"), x1, divergence="skilling")
    # adams steps one tensor, not the (x, integral) pair: not a likelihood method.
    with pytest.raises(InputError, match=f"unknown ODE method 'adams': choose one of {', '.join(LIKELIHOOD_METHODS)}$"):
        log_likelihood(tr, GM.model("linear", "velocity"), x1, method="adams")
    with pytest.raises(InputError, match="adaptive ODE method 'dopri5' steps off the discrete time grid"):
        log_likelihood(Transport(num_timesteps=100), GM.model("linear", "velocity"), x1, method="dopri5")
