"""The registry of sampler methods: every entry runs, costs what it says, and names a real solver."""

import re
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS

from sitcli.errors import InputError
from sitcli.transport import GaussianMixture, Transport, get_interpolant, log_likelihood, sample_ode, sample_sde
from sitcli.transport.integrate import integrate, integration_times
from sitcli.transport.methods import (
    LAST_STEPS,
    LIKELIHOOD_METHODS,
    ODE_KINDS,
    ODE_METHODS,
    SDE_METHODS,
    fixed_grid_names,
    ode_method,
    sde_method,
)
from sitcli.transport.samplers import ode_time_grid
from sitcli.transport.searched import SearchedSolver, adams_coefficients
from sitcli.transport.time_conventions import to_time
from sitcli.transport.time_grids import SPACINGS, snap_to_grid, time_grid

GM = GaussianMixture([[-1.0], [2.0]], [0.3, 0.5], [0.4, 0.6])
F64 = torch.float64


def noise(n, seed=0):
    return torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(seed))


TODAY_ODE = ["euler", "heun", "midpoint", "rk4", "adams", "dopri5", "dopri8", "bosh3", "tsit5"]


def in_order_of(names, registry):
    return [n for n in registry if n in names] == list(names)


def test_the_registry_is_in_the_order_users_see():
    # The methods of today stay, in this order; new ones may join (grouped by kind, as help lists them).
    assert in_order_of(TODAY_ODE, ODE_METHODS)
    kinds = [m.kind for m in ODE_METHODS.values()]
    assert kinds == sorted(kinds, key=ODE_KINDS.index)
    assert in_order_of(["euler", "heun"], SDE_METHODS) and LAST_STEPS == ("mean", "tweedie", "euler", "none")
    assert in_order_of([n for n in TODAY_ODE if n != "adams"], LIKELIHOOD_METHODS)
    assert LIKELIHOOD_METHODS == tuple(n for n, m in ODE_METHODS.items() if m.kind in ("fixed", "adaptive"))
    assert in_order_of(["adams", "dpm++2m", "dpm++3m", "unipc", "searched"], ODE_METHODS)


@pytest.mark.parametrize("name", ODE_METHODS)
def test_every_entry_is_consistent(name):
    m = ODE_METHODS[name]
    assert m.name == name and m.kind in ODE_KINDS and m.summary
    assert m.order is None if m.kind == "searched" else m.order >= 1  # a searched solver's weights are fitted
    if m.kind == "adaptive":
        assert m.nfe_per_step is None and m.spacing is None
    elif m.kind == "searched":
        assert m.nfe_per_step == 1 and m.spacing is None and m.solver is None  # its times and weights: a file
    else:
        assert m.nfe_per_step >= 1 and m.spacing in SPACINGS
        assert all(m.grid_spacing(i) in SPACINGS for i in ("linear", "gvp", "vp", "ddpm"))
    if m.kind in ("multistep", "exponential"):
        assert callable(m.solver)
    elif m.kind != "searched":
        import sitcli.transport.integrate  # noqa: F401  (registers tsit5)

        assert m.solver in SOLVERS


@pytest.mark.slow
@pytest.mark.parametrize("name", ODE_METHODS)
def test_every_ode_method_runs_and_costs_what_the_registry_says(name):
    m = ODE_METHODS[name]
    tr = Transport("linear", "velocity")
    x0 = noise(50)
    calls = []

    def model(x, t):
        calls.append(t[0].item())
        return GM.velocity("linear", x, t)

    # A searched solver's steps come with it: here 12 steps of Adams-Bashforth 3 on the uniform grid.
    grid = time_grid(0.0, 1.0, 12, dtype=F64)
    solver = SearchedSolver(grid, adams_coefficients(grid, 3)) if m.kind == "searched" else None
    x, nfe = sample_ode(tr, model, x0, method=name, steps=12, atol=1e-6, rtol=1e-6, solver=solver)
    assert nfe == len(calls) > 0 and torch.isfinite(x).all()
    if m.kind != "adaptive":
        assert nfe == m.nfe_per_step * 12
    assert min(calls) >= 0.0 and max(calls) <= 1.0  # never outside [t0, t1]
    # Every method lands near the exact map (x0 itself is 0.77 away on average; 12 euler steps 0.1). DPM-Solver++(3M)
    # is the exception among the higher orders (0.036; 2M 0.010, UniPC 0.007): on the uniform grid its log-SNR
    # steps grow without bound towards t = 1, where its quadratic extrapolation is least accurate.
    reference, _ = sample_ode(tr, GM.model("linear", "velocity"), x0, method="dopri5", atol=1e-10, rtol=1e-10)
    assert (x - reference).abs().mean() < (0.2 if m.order == 1 else 0.05 if name == "dpm++3m" else 0.02), name


@pytest.mark.slow
@pytest.mark.parametrize("name", LIKELIHOOD_METHODS)
def test_every_likelihood_method_runs(name):
    tr = Transport("linear", "velocity")
    gm = GaussianMixture([[-1.0, 0.5], [1.5, -1.0]], [0.4, 0.5])
    x1 = gm.sample(6, generator=torch.Generator().manual_seed(1))
    logp = log_likelihood(tr, gm.model("linear", "velocity"), x1, method=name, steps=40)
    assert (logp - gm.log_prob("linear", x1, 1.0)).abs().max() < (0.1 if ODE_METHODS[name].order == 1 else 1e-2)


@pytest.mark.parametrize("name", SDE_METHODS)
def test_every_sde_method_costs_what_the_registry_says(name):
    tr = Transport("linear", "velocity")
    # w = 0 keeps Heun's correction at every step (sigma_t > 0 before t1 = 0.9).
    x, nfe = sample_sde(tr, GM.model("linear", "velocity"), noise(8), method=name, steps=10, w="constant",
                        w_norm=0.0, last_step="none", generator=torch.Generator().manual_seed(0))
    # The last step (t -> 1, sigma = 0) skips Heun's second evaluation.
    assert nfe == SDE_METHODS[name].nfe_per_step * 10 - (SDE_METHODS[name].nfe_per_step - 1)
    assert torch.isfinite(x).all()


def test_unknown_names_list_the_choices():
    every = re.escape(", ".join(ODE_METHODS))  # dpm++2m
    with pytest.raises(InputError, match=rf"^unknown ODE method 'rk45': choose one of {every}$"):
        ode_method("rk45")
    likelihood = ", ".join(LIKELIHOOD_METHODS)
    with pytest.raises(InputError, match=rf"^unknown ODE method 'adams': choose one of {likelihood}$"):
        ode_method("adams", choices=LIKELIHOOD_METHODS)
    with pytest.raises(InputError, match=r"^unknown SDE method 'milstein': choose euler or heun$"):
        sde_method("milstein")
    assert ode_method("rk4") is ODE_METHODS["rk4"] and sde_method("heun") is SDE_METHODS["heun"]
    fixed = [n for n, m in ODE_METHODS.items() if m.kind == "fixed"]
    assert fixed_grid_names() == ", ".join(fixed[:-1]) + " or " + fixed[-1]
    assert fixed_grid_names().startswith("euler, heun, midpoint")


# ---------------------------------------------------------------- the exponential and searched methods

EXPONENTIAL = [n for n, m in ODE_METHODS.items() if m.kind == "exponential"]


@pytest.mark.parametrize("name", EXPONENTIAL)
def test_exponential_methods_step_on_uniform_grids_except_on_vp_where_on_logsnr(name):
    """Their default grid by interpolant (methods.py says why); --spacing and --time-shift still apply."""
    for interpolant, spacing in (("linear", "uniform"), ("gvp", "uniform"), ("vp", "logsnr")):
        tr = Transport(interpolant, "velocity")
        t0, t1 = tr.sample_interval()
        expected = time_grid(t0, t1, 9, spacing, dtype=F64, interpolant=tr.interpolant)
        assert torch.equal(ode_time_grid(tr, name, 9, dtype=F64), expected), interpolant
    tr = Transport("linear", "velocity")
    assert torch.equal(ode_time_grid(tr, name, 9, "logsnr", dtype=F64),
                       time_grid(0.0, 1.0, 9, "logsnr", dtype=F64, interpolant=tr.interpolant))
    assert torch.equal(ode_time_grid(tr, name, 9, time_shift=3.0, dtype=F64),
                       time_grid(0.0, 1.0, 9, "uniform", dtype=F64, time_shift=3.0))


def _slope(name: str, steps=(24, 48, 96)):
    """-d log(error) / d log(steps) of a method on [t(lambda = -4), t(lambda = 3)] of the linear interpolant, where
    every time has a finite log-SNR, against dopri8 at 1e-12 (exact velocity). Each method on its own grid but the
    exponential ones, which run on the logsnr grid without their lowered final orders: there their warm-up steps
    (orders 1, 2) fall where the data prediction hardly moves, so the slope is the method's own (on the uniform
    grid the first log-SNR steps are long, and the order-1 start caps 3M's slope near 2.4 up to 96 steps)."""
    m, interpolant = ODE_METHODS[name], get_interpolant("linear")
    t0, t1 = (float(to_time(interpolant, 2 * lam, "logsnr")) for lam in (-4.0, 3.0))  # sit's logsnr is 2 lambda
    x0 = noise(100, seed=4)

    def velocity(t, x):
        return GM.velocity(interpolant, x, t.expand(x.shape[0]))

    exact = integrate(velocity, x0, "dopri8", torch.tensor([t0, t1], dtype=F64), atol=1e-12, rtol=1e-12)
    spacing = None
    if m.kind == "exponential":
        m, spacing = replace(m, solver=partial(m.solver, lower_order_final=False)), "logsnr"
    errors = [(integrate(velocity, x0, m, integration_times(m, t0, t1, n, dtype=F64, spacing=spacing,
                                                             interpolant=interpolant), interpolant=interpolant)
               - exact).abs().mean().item() for n in steps]
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, m in ODE_METHODS.items() if m.kind in ("fixed", "multistep", "exponential")])
def test_each_method_converges_at_the_order_the_registry_states(name):
    """Error against steps (24, 48, 96) on a log-log fit, on the exact mixture field (``_slope``). Measured:
    euler 0.98, heun 1.95, midpoint 1.95, rk4 3.93, adams 3.75, dpm++2m 1.99, dpm++3m 3.02, unipc 2.75."""
    slope, errors = _slope(name)
    assert abs(slope - ODE_METHODS[name].order) < 0.3, (slope, errors)


def _random_guided(kind, num_classes=4):
    from helpers import random_sit
    from sitcli.guidance import AutoGuidance, ClassifierFreeGuidance

    model = random_sit(0, in_channels=1, num_classes=num_classes)
    if kind == "cfg":
        return ClassifierFreeGuidance(model, 2.0, null_class=num_classes, interval=(0.3, 0.8))
    return AutoGuidance(model, random_sit(1, in_channels=1, num_classes=num_classes), 2.0, interval=(0.3, 0.8))


@pytest.mark.parametrize("name", [*EXPONENTIAL, "searched"])
def test_guided_autoguided_and_discrete_time_sampling_costs_one_evaluation_per_step(name, one_thread):
    """Through sample_ode on a random SiT: a CFG call counts one, an autoguided call two inside its interval (one
    outside); in discrete time the model is evaluated at training times only, once per step."""
    x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = {"y": torch.tensor([1, 3])}
    for transport in (Transport("linear", "velocity"), Transport("gvp", "velocity", num_timesteps=50)):
        grid = ode_time_grid(transport, "dpm++2m", 7, dtype=F64)  # uniform, snapped in discrete time
        solver = SearchedSolver(grid, adams_coefficients(grid, 3)) if name == "searched" else None
        inside = sum(0.3 <= t <= 0.8 for t in grid[:-1].tolist())
        for kind, expected in (("cfg", 7), ("auto", 7 + inside)):
            seen = []
            guided = _random_guided(kind)

            def model(x, t, **kw):
                seen.append(float(t[0]))
                return guided(x, t, **kw)

            model.evaluations = getattr(guided, "evaluations", lambda t: 1)
            with torch.no_grad():
                x, nfe = sample_ode(transport, model, x0, method=name, steps=7, model_kwargs=kwargs, solver=solver)
            assert nfe == expected and len(seen) == 7 and bool(torch.isfinite(x).all()), (kind, nfe)
            torch.testing.assert_close(torch.tensor(seen, dtype=F64), grid[:-1], rtol=0, atol=1e-6)
        if transport.num_timesteps:
            training = transport.timestep_grid(dtype=F64)
            assert bool((snap_to_grid(grid, training) == grid).all()) and 0 < inside < 7


def test_the_searched_method_needs_its_solver_and_the_exponential_ones_their_interpolant():
    tr = Transport("linear", "velocity")
    with pytest.raises(InputError, match="--method searched needs --solver FILE"):
        sample_ode(tr, GM.model("linear", "velocity"), noise(3), method="searched")
    with pytest.raises(ValueError, match="interpolant="):
        integrate(lambda t, x: x, noise(3), "dpm++2m", torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="sample_ode"):
        integrate(lambda t, x: x, noise(3), "searched", torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    # A solver whose times are not training times is refused in discrete time.
    discrete = Transport("linear", "velocity", num_timesteps=20)
    grid = time_grid(0.0, 1.0, 4, "cosine", dtype=F64)
    with pytest.raises(InputError, match="between the model's training times"):
        sample_ode(discrete, GM.model("linear", "velocity"), noise(3), method="searched",
                   solver=SearchedSolver(grid, adams_coefficients(grid, 2)))
    for name in [*EXPONENTIAL, "searched"]:
        with pytest.raises(InputError, match="choose one of"):
            log_likelihood(tr, GM.model("linear", "velocity"), noise(3), method=name)
