"""A converted REPA checkpoint samples to the images of REPA's own samplers (its samplers.py) from the same noise.

REPA's update rules, written here from its equations (read, not copied), in its time s (s = 1 noise,
s = 0 data; x_s = alpha_s x + sigma_s eps, linear: alpha = 1 - s, sigma = s; cosine: alpha = cos(pi s / 2),
sigma = sin(pi s / 2)); u(x, s) is its network, the velocity d x_s / ds; the state is float64, the
network is called in float32:

* Euler (ODE), N steps: s_k = 1 - k / N, k = 0..N, and x <- x + (s_{k+1} - s_k) u(x, s_k).
* Heun (ODE), N steps, same grid: the predictor x' = x + h u(x, s_k) with h = s_{k+1} - s_k, then,
  on every step but the last, the corrector x <- x + h (u(x, s_k) + u(x', s_{k+1})) / 2; the last step
  keeps the predictor (2N - 1 evaluations).
* Euler-Maruyama (SDE), N steps: s = N points evenly from 1 to 0.04, then 0. With g(s) = 2 s (for both
  paths) and the score from the velocity, score = (r u - x) / (sigma^2 - r sigma' sigma) with
  r = alpha / alpha', each of the first N - 1 steps is x <- x + h (u - g score / 2) + sqrt(g |h|) z
  (z ~ N(0, I), one draw per step), and the last step, 0.04 -> 0, is the drift alone, without noise.

sit's time is t = 1 - s and the converted network is v(x, t) = -u(x, 1 - t) (formats/repa.py). So:

* Euler N = sit's euler N steps on [0, 1] (grids coincide: t_k = k / N; linear and gvp alike).
* Heun N = sit's heun (torchdiffeq's heun2) on the first N - 1 steps of the same grid, then one Euler
  step: sit's `--method heun --steps N` also corrects the last step (2N evaluations), so it is REPA's
  rule with the corrector kept on the last step; both are checked.
* Euler-Maruyama N = sit's `--sampler sde --method euler --steps N --w linear --w-norm 1 --last-step mean
  --last-step-size 0.04`: REPA's reverse SDE dx = [u - g score / 2] ds + sqrt(g) dW is sit's
  dX = [v + w score] dt + sqrt(2 w) dW with w(t) = g / 2 = 1 - t ("linear"; for the linear path also
  "sigma"), its grid 1 - linspace(1, 0.04, N) is sit's uniform grid of N - 1 steps from 0 to 0.96, and
  its noiseless drift step is sit's "mean" last step. The noise is the same sequence when sit's
  generator is seeded as REPA's global RNG (one float64 draw shaped like x per step).
"""

import math

import pytest
import torch

from sitcli.loading import load_model
from sitcli.transport.integrate import integrate
from sitcli.transport.samplers import sample_ode, sample_sde
from helpers import repa_file

ARCH = dict(input_size=8, in_channels=4, hidden_size=32, depth=2, num_heads=2, patch_size=2)


def path_terms(path_type, s):
    """alpha, sigma and their s-derivatives of REPA's path at time s."""
    if path_type == "linear":
        return 1 - s, s, -torch.ones_like(s), torch.ones_like(s)
    c, n = torch.cos(math.pi * s / 2), torch.sin(math.pi * s / 2)
    return c, n, -math.pi / 2 * n, math.pi / 2 * c


def call(u, x, s, y):
    """REPA's call: float32 in, float64 out."""
    with torch.no_grad():
        return u(x.float(), torch.full((x.shape[0],), float(s)), y).double()


def repa_ode(u, x, y, steps, heun=False, correct_last=False):
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    x = x.double()
    for k in range(steps):
        h = s[k + 1] - s[k]
        d = call(u, x, s[k], y)
        x_next = x + h * d
        if heun and (k < steps - 1 or correct_last):
            x_next = x + h * (d + call(u, x_next, s[k + 1], y)) / 2
        x = x_next
    return x


def repa_euler_maruyama(u, x, y, steps, path_type, generator):
    s = torch.cat([torch.linspace(1, 0.04, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = x.double()

    def drift(x, s_k):
        v = call(u, x, s_k, y)
        alpha, sigma, d_alpha, d_sigma = path_terms(path_type, s_k)
        r = alpha / d_alpha
        score = (r * v - x) / (sigma**2 - r * d_sigma * sigma)
        return v - 0.5 * (2 * s_k) * score

    for k in range(steps - 1):
        h = s[k + 1] - s[k]
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        x = x + drift(x, s[k]) * h + torch.sqrt(2 * s[k]) * torch.sqrt(h.abs()) * z
    return x + drift(x, s[-2]) * (s[-1] - s[-2])


@pytest.fixture(params=["linear", "cosine"])
def repa(request, tmp_path):
    """(REPA's network u in its time, the converted sit model in float64 state, its transport, path type)."""
    path, u = repa_file(tmp_path, request.param, **ARCH)
    loaded = load_model(path, num_heads=2)
    sit_model = loaded.model.eval()

    def v(x, t, y):  # the same float32 network calls as REPA's sampler makes
        return sit_model(x.float(), t.float(), y).double()

    return u, v, loaded.transport, request.param


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 3, 5])


def test_euler_is_repas_euler(repa, one_thread):
    u, v, transport, _ = repa
    x, y = inputs()
    got, nfe = sample_ode(transport, v, x, "euler", 6, model_kwargs={"y": y})
    assert nfe == 6
    torch.testing.assert_close(got, repa_ode(u, x, y, 6), rtol=1e-4, atol=5e-5)


def test_heun_is_repas_heun_up_to_its_uncorrected_last_step(repa, one_thread):
    u, v, transport, _ = repa
    x, y = inputs()
    steps = 5
    assert transport.sample_interval() == (0.0, 1.0)  # linear and gvp velocity: the ODE runs from 0 to 1, as REPA's
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)

    def velocity(t, x):
        return transport.velocity(v(x, t.expand(x.shape[0]), y), x, t.expand(x.shape[0]))

    with torch.no_grad():
        head = integrate(velocity, x, "heun", grid[:-1])  # sit's heun on the first N - 1 steps
        last = head + (grid[-1] - grid[-2]) * velocity(grid[-2], head)
    want = repa_ode(u, x, y, steps, heun=True)
    torch.testing.assert_close(last, want, rtol=1e-4, atol=5e-5)
    full, nfe = sample_ode(transport, v, x, "heun", steps, model_kwargs={"y": y})
    assert nfe == 2 * steps
    torch.testing.assert_close(full, repa_ode(u, x, y, steps, heun=True, correct_last=True), rtol=1e-4, atol=5e-5)
    assert (full - want).abs().max() > 1e-3  # the last corrector is a visible difference, not round-off


def test_euler_maruyama_is_repas_with_w_linear_and_the_mean_last_step(repa, one_thread):
    u, v, transport, path_type = repa
    x, y = inputs()
    steps = 8
    want = repa_euler_maruyama(u, x, y, steps, path_type, torch.Generator().manual_seed(7))
    ws = ["linear", "sigma"] if path_type == "linear" else ["linear"]
    for w in ws:
        got, nfe = sample_sde(transport, v, x, "euler", steps, w=w, w_norm=1.0, last_step="mean",
                              last_step_size=0.04, generator=torch.Generator().manual_seed(7), model_kwargs={"y": y})
        assert nfe == steps
        torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5)
    # The noise matters: another seed gives other images (so the match above is not the drift alone).
    other = repa_euler_maruyama(u, x, y, steps, path_type, torch.Generator().manual_seed(8))
    assert (other - want).abs().max() > 1e-2
