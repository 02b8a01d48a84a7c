"""Interpolants: endpoints, the formulas of the SiT paper, derivatives against autograd, eta."""

import math

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import GaussianMixture, get_interpolant
from sitcli.transport.interpolants import VP

NAMES = ["linear", "gvp", "vp"]


@pytest.mark.parametrize("name", NAMES)
def test_endpoints(name):
    interp = get_interpolant(name)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    alpha, sigma = interp.alpha(t), interp.sigma(t)
    assert alpha[1] == pytest.approx(1.0) and sigma[1] == pytest.approx(0.0, abs=1e-12)
    assert sigma[0] == pytest.approx(1.0, abs=1e-4)
    if name == "vp":
        assert alpha[0] == pytest.approx(math.exp(-(20 + 0.1) / 4))  # small, not zero
        assert not interp.singular_at_noise_end() and interp.singular_at_data_end()
    else:
        assert alpha[0] == 0 and interp.singular_at_noise_end() and not interp.singular_at_data_end()


def test_formulas_of_each_path():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    lin, gvp, vp = (get_interpolant(n) for n in NAMES)
    torch.testing.assert_close(lin.alpha(t), t)
    torch.testing.assert_close(lin.sigma(t), 1 - t)
    torch.testing.assert_close(gvp.alpha(t), torch.sin(math.pi * t / 2))
    torch.testing.assert_close(gvp.sigma(t), torch.cos(math.pi * t / 2))
    log_alpha = -((1 - t) ** 2) * (20 - 0.1) / 4 - (1 - t) * 0.1 / 2
    torch.testing.assert_close(vp.alpha(t), torch.exp(log_alpha))
    torch.testing.assert_close(vp.sigma(t), torch.sqrt(1 - torch.exp(log_alpha) ** 2))
    for interp in (gvp, vp):  # variance preserving
        torch.testing.assert_close(interp.alpha(t) ** 2 + interp.sigma(t) ** 2, torch.ones_like(t))


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_autograd(name):
    interp = get_interpolant(name)
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64, requires_grad=True)
    d_alpha = torch.autograd.grad(interp.alpha(t).sum(), t)[0]
    d_sigma = torch.autograd.grad(interp.sigma(t).sum(), t)[0]
    torch.testing.assert_close(interp.d_alpha(t.detach()), d_alpha)
    torch.testing.assert_close(interp.d_sigma(t.detach()), d_sigma)
    torch.testing.assert_close(interp.d_log_alpha(t.detach()), d_alpha / interp.alpha(t.detach()))


@pytest.mark.parametrize("name", NAMES)
def test_eta_links_exact_velocity_and_score(name):
    """v = (alpha'/alpha) x + eta s on an exact Gaussian mixture, away from the singular ends."""
    interp = get_interpolant(name)
    gm = GaussianMixture([[-1.0, 0.5], [2.0, -1.0]], [0.4, 0.7])
    x = torch.randn(50, 2, dtype=torch.float64)
    for tv in (0.05, 0.3, 0.7, 0.95):
        t = torch.full((50,), tv, dtype=torch.float64)
        tt = t[:, None]
        v = gm.velocity(interp, x, t)
        rebuilt = interp.d_log_alpha(tt) * x + interp.eta(tt) * gm.score(interp, x, t)
        torch.testing.assert_close(v, rebuilt)


def test_eta_closed_forms():
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    torch.testing.assert_close(get_interpolant("linear").eta(t), (1 - t) / t)
    torch.testing.assert_close(get_interpolant("gvp").eta(t), math.pi / 2 / torch.tan(math.pi * t / 2))
    torch.testing.assert_close(get_interpolant("vp").eta(t), (1 - t) * 19.9 / 2 + 0.05)


def test_vp_sigma_is_accurate_near_data_end():
    t = torch.tensor([1 - 1e-7], dtype=torch.float64)
    vp = VP()
    # 1 - alpha^2 ~ 2 * 0.05 * 1e-7: a naive 1 - alpha**2 loses most digits here.
    assert vp.sigma(t).item() ** 2 == pytest.approx(1 - math.exp(2 * vp.log_alpha(t).item()), rel=1e-6)
    assert vp.sigma(t).item() == pytest.approx(math.sqrt(0.1 * 1e-7), rel=1e-3)


def test_unknown_interpolant_is_a_clear_error():
    with pytest.raises(InputError, match="choose one of linear, gvp, vp"):
        get_interpolant("cosine")
