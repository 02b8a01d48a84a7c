"""The registry of sampler methods: every entry runs, costs what it says, and names a real solver."""

import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS

from sitcli.errors import InputError
from sitcli.transport import GaussianMixture, Transport, log_likelihood, sample_ode, sample_sde
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
from sitcli.transport.time_grids import SPACINGS

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
    assert LIKELIHOOD_METHODS == tuple(n for n, m in ODE_METHODS.items() if m.kind != "multistep")


@pytest.mark.parametrize("name", ODE_METHODS)
def test_every_entry_is_consistent(name):
    m = ODE_METHODS[name]
    assert m.name == name and m.kind in ODE_KINDS and m.summary and m.order >= 1
    if m.kind == "adaptive":
        assert m.nfe_per_step is None and m.spacing is None
    else:
        assert m.nfe_per_step >= 1 and m.spacing in SPACINGS
    if m.kind == "multistep":
        assert callable(m.solver)
    else:
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

    x, nfe = sample_ode(tr, model, x0, method=name, steps=12, atol=1e-6, rtol=1e-6)
    assert nfe == len(calls) > 0 and torch.isfinite(x).all()
    if m.kind != "adaptive":
        assert nfe == m.nfe_per_step * 12
    assert min(calls) >= 0.0 and max(calls) <= 1.0  # never outside [t0, t1]
    # Every method lands near the exact map (x0 itself is 0.77 away on average; 12 euler steps 0.1).
    reference, _ = sample_ode(tr, GM.model("linear", "velocity"), x0, method="dopri5", atol=1e-10, rtol=1e-10)
    assert (x - reference).abs().mean() < (0.2 if m.order == 1 else 0.02), name


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
    every = ", ".join(ODE_METHODS)
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
