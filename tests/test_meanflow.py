"""transport/meanflow.py, the mean-flow loss and SiT's second time: exact answers on Gaussian mixtures.

The exact average velocity of a mixture is u(z_t, t, r) = (z_r - z_t) / (r - t) with z_r the exact
flow map, a tight-tolerance torchdiffeq solve of the mixture's closed-form velocity (sit's time:
t = 0 noise, r > t nearer the data). For one Gaussian the flow map is affine and in closed form,
so there the JVP target of training can be checked without any solver.
"""


import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from sitcli.training.losses import MeanFlowLoss, step_losses
from sitcli.transport import GaussianMixture, Transport, meanflow, sample_ode

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
GM = GaussianMixture([[-2.0, -1.0], [1.5, 2.0], [2.0, -2.0]], [0.3, 0.5, 0.4], [0.3, 0.3, 0.4])


def flow_map(mixture, z, t, r, interpolant="linear"):
    """z_t carried along the exact velocity from time t to time r (scalars), rtol = atol = 1e-10."""
    if t == r:
        return z
    velocity = lambda s, x: mixture.velocity(interpolant, x, s.expand(x.shape[0]))  # noqa: E731
    return odeint(velocity, z, torch.tensor([t, r], dtype=F64), method="dopri5", rtol=1e-10, atol=1e-10)[-1]


def exact_u(mixture, interpolant="linear"):
    """The mixture's exact average velocity as a mean-flow model callable (one solve per distinct (t, r))."""

    def u(x, t, r, **_):
        t0, r0 = float(t[0]), float(r[0])
        assert torch.all(t == t0) and torch.all(r == r0)
        return (flow_map(mixture, x, t0, r0, interpolant) - x) / (r0 - t0)

    return u


def test_one_step_with_the_exact_average_velocity_is_the_exact_flow_map():
    x0 = torch.randn(32, 2, dtype=F64)
    ode, _ = sample_ode(Transport("linear"), GM.model("linear", "velocity"), x0, "dopri5", atol=1e-10, rtol=1e-10)
    for steps in (1, 3):
        jumped, nfe = meanflow.sample_meanflow(exact_u(GM), x0, steps)
        assert nfe == steps
        assert (jumped - ode).abs().max() < 1e-6
    # The instantaneous velocity is no substitute: one Euler jump lands every sample near the data mean.
    euler = x0 + GM.velocity("linear", x0, torch.zeros(32, dtype=F64))
    assert (euler - ode).abs().max() > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("interpolant", ["linear", "gvp"])
def test_the_training_target_from_exact_v_and_exact_u_is_exact_u(interpolant):
    """u = v + (r - t) du/dt, du/dt by central differences along the exact flow (h = 1e-3: error ~h^2 u''')."""
    z = GM.sample(32, torch.Generator().manual_seed(1)) * 0.5 + torch.randn(32, 2, dtype=F64) * 0.7
    u = exact_u(GM, interpolant)
    h = 1e-3
    for t, r in ((0.2, 0.7), (0.05, 0.95), (0.5, 0.6)):
        ones = torch.ones(32, dtype=F64)
        z_t = flow_map(GM, z, 0.0, t, interpolant)
        z_plus, z_minus = flow_map(GM, z_t, t, t + h, interpolant), flow_map(GM, z_t, t, t - h, interpolant)
        du_dt = (u(z_plus, (t + h) * ones, r * ones) - u(z_minus, (t - h) * ones, r * ones)) / (2 * h)
        v = GM.velocity(interpolant, z_t, t * ones)
        target = meanflow.meanflow_target(v, du_dt, t * ones, r * ones)
        want = u(z_t, t * ones, r * ones)
        assert (target - want).abs().max() < 1e-5 * (1 + want.abs().max())
        assert (v - want).abs().max() > 1e-2  # the correction term matters


def gaussian_u(mu, s):
    """Closed-form average velocity of N(mu, s^2 I) under the linear interpolant: the flow map is affine,
    z_r = m_r + (sd_r / sd_t)(z_t - m_t) with m_t = t mu, sd_t^2 = t^2 s^2 + (1 - t)^2."""
    def sd(t):
        return torch.sqrt(t**2 * s**2 + (1 - t) ** 2)[:, None]

    def u(z, t, r):
        z_r = r[:, None] * mu + sd(r) / sd(t) * (z - t[:, None] * mu)
        return (z_r - z) / (r - t)[:, None]

    return u


def test_the_jvp_target_of_a_gaussian_is_its_exact_average_velocity():
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), 0.4
    one = GaussianMixture(mu[None], [s])
    u = gaussian_u(mu, s)
    z = torch.randn(16, 2, dtype=F64)
    t, r = torch.rand(16, dtype=F64) * 0.5, 0.55 + torch.rand(16, dtype=F64) * 0.45
    v = one.velocity("linear", z, t)
    value, du_dt = meanflow.total_derivative(u, z, t, r, v)
    assert torch.allclose(value, u(z, t, r))
    assert torch.allclose(meanflow.meanflow_target(v, du_dt, t, r), u(z, t, r), atol=1e-10)
    # ... and the closed form is the flow map of the oracle's velocity (a check of the oracle used above).
    solved = (flow_map(one, z[:1], float(t[0]), float(r[0])) - z[:1]) / (r[0] - t[0])
    assert torch.allclose(u(z[:1], t[:1], r[:1]), solved, atol=1e-8)


def test_time_pairs_are_ordered_with_the_share_of_r_not_t():
    tr = Transport("linear")
    t, r = meanflow.draw_times(tr.sample_time, 20000, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.all(t <= r) and 0 <= float(t.min()) and float(r.max()) <= 1
    assert abs(float((r > t).float().mean()) - 0.25) < 0.015
    # r = t rows keep the density of min(a, b): 1 - (1 - u)^2 for uniform u.
    assert abs(float((t < 0.5).float().mean()) - 0.75) < 0.015
    assert meanflow.adaptive_weight(torch.full((3, 4), 2.0), 0.0, 1e-3).tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(meanflow.adaptive_weight(torch.full((2, 4), 2.0), 1.0, 1.0), torch.full((2,), 0.2))


class MLP(nn.Module):
    """A small network u(x, t, r) on 2-D points, with SiT's calling convention."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t, y=None, r=None, drop_labels=True):
        r = t if r is None else r
        return self.net(torch.cat([x, torch.stack([torch.sin(math.pi * t), torch.cos(math.pi * t), r - t, t], 1)], 1))


def sliced_w1(a, b, projections=128):
    d = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(1), dtype=a.dtype)
    d = d / d.norm(dim=0)
    return float(((a @ d).sort(0).values - (b @ d).sort(0).values).abs().mean())


@pytest.mark.slow
def test_a_small_network_trained_with_the_objective_samples_the_mixture_in_one_step():
    """400 steps of the mean-flow loss on four Gaussians: one jump lands within 6x the sliced-W1 floor of
    two real sets of 2000 (measured: 0.17 against a floor of 0.041); one Euler jump of the exact velocity is
    at 1.8, over 40x the floor."""
    torch.manual_seed(0)
    mixture = GaussianMixture([[-2.0, -2.0], [2.0, 2.0], [-2.0, 2.0], [2.0, -2.0]], [0.3] * 4, dtype=torch.float32)
    model, tr = MLP(), Transport("linear")
    term = MeanFlowLoss(model, tr, share=0.25, p=1.0, c=1e-3, omega=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss, parts = step_losses(model, tr, [term], mixture.sample(256, g), None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    assert list(parts) == ["meanflow"]
    n = 2000
    real, other = mixture.sample(n, g), mixture.sample(n, g)
    floor = sliced_w1(real, other)
    x, nfe = meanflow.sample_meanflow(model, torch.randn(n, 2, generator=g), 1)
    assert nfe == 1
    assert sliced_w1(x, real) < 6 * floor, (sliced_w1(x, real), floor)
    z = torch.randn(n, 2, generator=g)
    assert sliced_w1(z + mixture.velocity("linear", z, torch.zeros(n)), real) > 40 * floor
