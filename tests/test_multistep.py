"""DPM-Solver++ and UniPC (``transport/multistep.py``): their orders on the exact mixture field, equality with
diffusers' flow schedulers on a tiny SiT, the ends of the time interval, guidance and discrete time.

The orders are measured between log-SNR -4 and 3 (lambda = log(alpha / sigma)), where every point has a finite
lambda and the warm-up steps fall where the data prediction hardly moves, so the slope is the method's own; the
ends of [0, 1] (lambda = -inf and +inf) are checked apart.
"""

import math
from functools import partial

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from sitcli.errors import InputError
from sitcli.guidance import AutoGuidance, ClassifierFreeGuidance
from sitcli.transport import GaussianMixture, Transport, get_interpolant
from sitcli.transport.multistep import (
    dpm_solver_pp,
    g_coefficients,
    log_snr_schedule,
    unipc,
)
from sitcli.transport.objectives import predicted_data
from sitcli.transport.samplers import CountingModel
from sitcli.transport.time_conventions import to_time
from sitcli.transport.time_grids import time_grid
from helpers import random_sit

F64 = torch.float64
GM = GaussianMixture([[-1.0], [2.0]], [0.3, 0.5], [0.4, 0.6])


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def exact_transport_map(interpolant, x0, t0, t1):
    """F_t1^{-1}(F_t0(x0)), the 1-D probability-flow map, by inverting the mixture's CDF on a fine grid."""
    u = GM.cdf(interpolant, x0, torch.tensor(t0, dtype=F64))
    grid = torch.linspace(-7, 9, 400001, dtype=F64)[:, None]
    cdf = GM.cdf(interpolant, grid, torch.tensor(t1, dtype=F64))
    return torch.from_numpy(np.interp(u.numpy(), cdf.numpy(), grid[:, 0].numpy()))[:, None]


def mixture_velocity(interpolant):
    return lambda t, x: GM.velocity(interpolant, x, t.expand(x.shape[0]))


def noise(n, seed=0):
    return torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_g_coefficients_are_their_integrals_on_both_sides_of_the_series_switch():
    for h in (1e-4, 0.3, 0.999, 1.0, 2.5, 12.0):
        g = g_coefficients(h, 4)
        for j in range(4):
            exact = quad(lambda w, h=h, j=j: math.exp(-w) * (1 - w / h) ** j, 0, h, epsabs=1e-15, epsrel=1e-13)[0]
            assert g[j] == pytest.approx(exact, rel=1e-10, abs=1e-16), (h, j)
    assert g_coefficients(math.inf, 3) == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------- orders of convergence

ORDERS = {
    "dpm++2m": (partial(dpm_solver_pp, order=2), 2),
    "dpm++3m": (partial(dpm_solver_pp, order=3), 3),
    "unipc-1 (bh2)": (partial(unipc, order=1), 2),
    "unipc-2 (bh2)": (partial(unipc, order=2), 3),
    "unipc-3 (bh2)": (partial(unipc, order=3), 4),
    "unipc-2 (bh1)": (partial(unipc, order=2, variant="bh1"), 3),
}


def log_log_slope(solver, interpolant_name, steps=(24, 48, 96)):
    interpolant = get_interpolant(interpolant_name)
    t0, t1 = (float(to_time(interpolant, 2 * lam, "logsnr")) for lam in (-4.0, 3.0))  # sit's logsnr is 2 lambda
    x0 = noise(200)
    exact = exact_transport_map(interpolant, x0, t0, t1)
    errors = []
    for n in steps:
        grid = time_grid(t0, t1, n, "logsnr", dtype=F64, interpolant=interpolant)
        x, nfe = solver(mixture_velocity(interpolant), x0, grid, interpolant, lower_order_final=False)
        assert nfe == n
        errors.append((x - exact).abs().mean().item())
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.parametrize("interpolant", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("name", ORDERS)
def test_error_falls_at_the_theoretical_order(name, interpolant):
    """Slopes measured (24/48/96 steps; linear, gvp = vp): 2M 1.99, 2.07; 3M 3.16, 3.17; UniPC-1/2/3 (bh2)
    2.05/2.89/4.16, 2.07/2.90/4.15; UniPC-2 (bh1) 2.98, 2.99."""
    solver, order = ORDERS[name]
    slope, errors = log_log_slope(solver, interpolant)
    assert abs(slope - order) < 0.3, (slope, errors)


def test_the_published_3m_is_second_order_and_the_exact_one_third():
    """LuChengTHU/dpm-solver and diffusers weigh 3M's quadratic term by g_2 / 2 (their phi_3): slope 2.2,
    where the exact integral of the quadratic gives 3.2 on the same grids."""
    published, _ = log_log_slope(partial(dpm_solver_pp, order=3, published_3m=True), "linear")
    exact, _ = log_log_slope(partial(dpm_solver_pp, order=3), "linear")
    assert abs(published - 2) < 0.3 and abs(exact - 3) < 0.3, (published, exact)


def test_gvp_and_vp_give_the_same_answer_on_the_same_log_snr_grid():
    """Both paths have alpha^2 + sigma^2 = 1, so at equal lambda they are the same state: an exponential
    integrator in lambda cannot tell them apart, whatever their clocks."""
    lams = torch.linspace(-4.0, 3.0, 13, dtype=F64)
    x0 = noise(50)
    results = []
    for name in ("gvp", "vp"):
        interpolant = get_interpolant(name)
        grid = to_time(interpolant, 2 * lams, "logsnr")
        results.append([solver(mixture_velocity(interpolant), x0, grid, interpolant)[0]
                        for solver in (partial(dpm_solver_pp, order=3), partial(unipc, order=3))])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_unip_bh2_of_order_2_without_corrector_is_dpm_solver_2m():
    interpolant = get_interpolant("gvp")
    grid = time_grid(0.0, 1.0, 9, "uniform", dtype=F64)
    x0 = noise(30)
    a, _ = unipc(mixture_velocity(interpolant), x0, grid, interpolant, order=2, corrector=False)
    b, _ = dpm_solver_pp(mixture_velocity(interpolant), x0, grid, interpolant, order=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    c, _ = unipc(mixture_velocity(interpolant), x0, grid, interpolant, order=2)
    assert (c - a).abs().max() > 1e-4  # and the corrector does change it


# ---------------------------------------------------------------- the whole interval and its ends


@pytest.mark.parametrize("interpolant", ["linear", "gvp"])
@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_whole_interval_from_pure_noise_to_data_converges(interpolant, spacing):
    """From t = 0 (alpha = 0, lambda = -inf) to t = 1 (sigma = 0, lambda = +inf): finite, and the error falls
    with every doubling. Not at the methods' orders: the step into sigma = 0 has order 1 (as in the papers and
    diffusers), and the logsnr grid's first and last steps are fixed (sigma 80 and 0.002, as edm), which leaves
    a floor near 1e-4. Measured at 80 steps: 2e-4 to 2e-3."""
    interp = get_interpolant(interpolant)
    x0 = noise(200, seed=3)
    exact = exact_transport_map(interp, x0, 0.0, 1.0)
    for solver in (partial(dpm_solver_pp, order=2), partial(dpm_solver_pp, order=3), partial(unipc, order=2),
                   partial(unipc, order=3)):
        errors = []
        for n in (5, 10, 20, 40, 80):
            grid = time_grid(0.0, 1.0, n, spacing, dtype=F64, interpolant=interp)
            x, nfe = solver(mixture_velocity(interp), x0, grid, interp)
            assert nfe == n and bool(torch.isfinite(x).all())
            errors.append((x - exact).abs().mean().item())
        assert all(b < a for a, b in zip(errors, errors[1:])) and errors[-1] < min(errors[0] / 30, 2e-3), errors


def test_the_step_into_sigma_zero_is_the_data_prediction():
    """For linear it is the Euler step x + (1 - t) v; every order and method takes it at order 1."""
    interpolant = get_interpolant("linear")
    velocity = mixture_velocity(interpolant)
    x0 = noise(20)
    t = torch.tensor(0.6, dtype=F64)
    for solver in (partial(dpm_solver_pp, order=3), partial(unipc, order=3)):
        x, _ = solver(velocity, x0, torch.tensor([0.6, 1.0], dtype=F64), interpolant)
        torch.testing.assert_close(x, x0 + 0.4 * velocity(t, x0), rtol=0, atol=1e-14)
    gvp = get_interpolant("gvp")
    _, sigma, lam = log_snr_schedule(gvp, torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    assert sigma[-1] == 0 and lam[0] == -math.inf and lam[-1] == math.inf
    x, _ = dpm_solver_pp(mixture_velocity(gvp), x0, torch.tensor([0.6, 1.0], dtype=F64), gvp)
    expected = predicted_data(gvp, "velocity", mixture_velocity(gvp)(t, x0), x0, t.expand(20))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-14)


def test_a_start_at_lambda_minus_infinity_enters_no_polynomial():
    """From t = 0 on linear the first two steps are DDIM (the point at lambda = -inf is not extrapolated
    through), so 2M and 3M agree with order 1 there, and UniPC has no corrector on the first step."""
    interpolant = get_interpolant("linear")
    velocity = mixture_velocity(interpolant)
    x0 = noise(20)
    grid = torch.tensor([0.0, 0.3, 0.55], dtype=F64)
    first_order, _ = dpm_solver_pp(velocity, x0, grid, interpolant, order=1)
    for solver in (partial(dpm_solver_pp, order=2), partial(dpm_solver_pp, order=3), partial(unipc, order=3)):
        x, _ = solver(velocity, x0, grid, interpolant, lower_order_final=False)
        assert bool(torch.isfinite(x).all())
    for order in (2, 3):
        torch.testing.assert_close(dpm_solver_pp(velocity, x0, grid, interpolant, order=order,
                                                 lower_order_final=False)[0], first_order, rtol=0, atol=1e-14)
    # One DDIM step from pure noise: x = sigma_t x0 + alpha_t D(x0, 0).
    one, _ = unipc(velocity, x0, grid[:2], interpolant)
    d0 = predicted_data(interpolant, "velocity", velocity(grid[0], x0), x0, grid[:1].expand(20))
    torch.testing.assert_close(one, 0.7 * x0 + 0.3 * d0, rtol=0, atol=1e-14)


def test_bad_arguments_are_refused():
    interpolant = get_interpolant("linear")
    velocity = mixture_velocity(interpolant)
    with pytest.raises(InputError, match="order=4"):
        dpm_solver_pp(velocity, noise(2), torch.tensor([0.0, 1.0], dtype=F64), interpolant, order=4)
    with pytest.raises(InputError, match="variant"):
        unipc(velocity, noise(2), torch.tensor([0.0, 1.0], dtype=F64), interpolant, variant="bh3")
    with pytest.raises(ValueError, match="increasing"):
        unipc(velocity, noise(2), torch.tensor([1.0, 0.0], dtype=F64), interpolant)


# ---------------------------------------------------------------- equality with diffusers


def sit_and_diffusers(scheduler, steps, model, x0, y, calls=None):
    """diffusers' loop on ``model``: its flow sigma is sit's 1 - t and its flow prediction d x / d sigma is
    sit's -v. Returns its sample and sit's grid, t = 1 - sigma (the same points)."""
    x = x0.clone()
    calls = steps if calls is None else calls
    for i in range(calls):
        t = (1 - scheduler.sigmas[i]).expand(x.shape[0])
        x = scheduler.step(-model(x, t, y=y), scheduler.timesteps[i], x).prev_sample
    return x, (1 - scheduler.sigmas.to(F64)).to(torch.float32)


@pytest.fixture(scope="module")
def tiny():
    model = random_sit(0)
    y = torch.tensor([1, 3])
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, y, x0


def sit_velocity(model, y):
    return lambda t, x: model(x, t.to(x.dtype).expand(x.shape[0]), y=y)


@pytest.mark.parametrize("steps,shift", [(5, 1.0), (8, 3.0), (20, 1.0)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_pp_equals_diffusers_flow_scheduler(tiny, steps, shift, order):
    """DPMSolverMultistepScheduler(use_flow_sigmas, flow_prediction, dpmsolver++, midpoint) on a tiny SiT,
    linear interpolant, same grid: equal to float32 rounding (max |diff| ~2e-6 on values of ~5). Its 3M is
    the published one (``published_3m``); sit's default 3M differs from it by ~1e-2 here."""
    from diffusers import DPMSolverMultistepScheduler

    model, y, x0 = tiny
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                            flow_shift=shift, solver_order=order)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        expected, grid = sit_and_diffusers(scheduler, steps, model, x0, y)
        x, nfe = dpm_solver_pp(sit_velocity(model, y), x0, grid, get_interpolant("linear"), order=order,
                               published_3m=True)
        exact_3m, _ = dpm_solver_pp(sit_velocity(model, y), x0, grid, get_interpolant("linear"), order=order)
    assert nfe == steps
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    if order == 3:
        assert (exact_3m - expected).abs().max() > 1e-3


@pytest.mark.parametrize("steps,shift", [(5, 1.0), (8, 3.0), (20, 1.0)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_bh2_equals_diffusers_flow_scheduler(tiny, steps, shift, order):
    from diffusers import UniPCMultistepScheduler

    model, y, x0 = tiny
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
                                        solver_order=order, solver_type="bh2")
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        expected, grid = sit_and_diffusers(scheduler, steps, model, x0, y)
        x, nfe = unipc(sit_velocity(model, y), x0, grid, get_interpolant("linear"), order=order)
    assert nfe == steps
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_unipc_bh1_equals_diffusers_before_the_last_step(tiny):
    """diffusers' bh1 returns NaN on the step into sigma = 0 (B(h) = -h = -inf times a zero correction), so
    the comparison stops one step short: sit's bh1 on the grid without its last point, with no final lowering
    (diffusers' order 2 holds until the last step), against diffusers' uncorrected sample after steps - 1."""
    from diffusers import UniPCMultistepScheduler

    model, y, x0 = tiny
    steps = 8
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=2,
                                        solver_type="bh1")
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        expected, grid = sit_and_diffusers(scheduler, steps, model, x0, y, calls=steps - 1)
        x, _ = unipc(sit_velocity(model, y), x0, grid[:-1], get_interpolant("linear"), order=2, variant="bh1",
                     lower_order_final=False)
        full, _ = unipc(sit_velocity(model, y), x0, grid, get_interpolant("linear"), order=2, variant="bh1")
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert bool(torch.isfinite(full).all())


# ---------------------------------------------------------------- guidance, NFE, discrete time


def guided_velocity(transport, model, y):
    """The velocity callable ``sample_ode`` builds: a ``CountingModel`` around the (guided) model."""
    counter = CountingModel(model, {"y": y})

    def velocity(t, x):
        output, t_batch = counter(x, t)
        return transport.velocity(output, x, t_batch)

    return velocity, counter


@pytest.mark.parametrize("solver", [partial(dpm_solver_pp, order=3), partial(unipc, order=2)])
def test_guidance_composes_and_a_cfg_pass_counts_once(tiny, solver):
    """The solvers run on guidance.py's guided callable unchanged: the same result as a velocity that applies
    CFG by hand (two plain calls, guidance on for 0.2 <= t <= 0.7 only), one count per CFG call, two per
    autoguided call inside the interval."""
    model, y, x0 = tiny
    transport = Transport("linear", "velocity")
    interpolant = transport.interpolant
    grid = time_grid(0.0, 1.0, 7, "uniform")
    cfg = ClassifierFreeGuidance(model, 2.5, null_class=model.num_classes, interval=(0.2, 0.7))
    velocity, counter = guided_velocity(transport, cfg, y)

    def by_hand(t, x):
        tb = t.expand(x.shape[0])
        cond = model(x, tb, y=y)
        if not 0.2 <= float(t) <= 0.7:
            return cond
        return model(x, tb, y=torch.full_like(y, model.num_classes)) * (1 - 2.5) + 2.5 * cond

    with torch.no_grad():
        x, nfe = solver(velocity, x0, grid, interpolant)
        expected, _ = solver(by_hand, x0, grid, interpolant)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    assert nfe == counter.nfe == 7

    guide = random_sit(1)
    auto = AutoGuidance(model, guide, 2.0, interval=(0.2, 0.7))
    velocity, counter = guided_velocity(transport, auto, y)
    with torch.no_grad():
        _, nfe = solver(velocity, x0, grid, interpolant)
    inside = sum(0.2 <= t <= 0.7 for t in grid[:-1].tolist())
    assert nfe == 7 and counter.nfe == 7 + inside and inside > 0


@pytest.mark.parametrize("solver", [partial(dpm_solver_pp, order=3), partial(unipc, order=3)])
def test_one_evaluation_per_step_on_the_discrete_time_grid(solver):
    """In discrete time the grid is snapped to the training times (``Transport.time_grid``); the solvers
    evaluate once at each grid point but the last, nowhere else."""
    transport = Transport("gvp", "velocity", num_timesteps=40)
    grid = transport.time_grid(*transport.sample_interval(), 9, dtype=F64, spacing="uniform")
    seen = []
    field = mixture_velocity(transport.interpolant)

    def velocity(t, x):
        seen.append(float(t))
        return field(t, x)

    _, nfe = solver(velocity, noise(10), grid, transport.interpolant)
    training = transport.timestep_grid(dtype=F64)
    assert nfe == 9 and seen == grid[:-1].tolist()
    assert bool(torch.isin(torch.tensor(seen, dtype=F64), training).all())
