"""The registry of sampler methods: every ODE and SDE method sit offers, by name.

Each ODE method has a kind, which decides how ``integrate`` runs it:

    fixed        a torchdiffeq Runge-Kutta solver stepping on a given time grid (``steps`` steps)
    multistep    one of sit's own solvers, a callable (velocity, x0, grid) -> x, on a given grid
    exponential  an exponential integrator in the log-SNR (``multistep``: DPM-Solver++, UniPC), a callable
                 (velocity, x0, grid, interpolant) -> (x, nfe), on a given grid
    searched     a solver searched for one model (``searched``): its times and coefficients come from a file
                 (``sample_ode(solver=...)``), not from ``steps`` and a spacing
    adaptive     a torchdiffeq solver choosing its own steps from ``atol`` / ``rtol``

The grid a fixed-step method runs on is its ``spacing`` unless the interpolant has its own in ``spacings``
(``grid_spacing``). The exponential integrators step on the uniform grid for linear and GVP and on the logsnr
grid for VP and DiT's DDPM schedule: on linear and GVP the uniform grid was the more accurate of the two at 5-20
NFE (``examples/multistep_nfe.py``), while on VP the uniform grid's steps are nearly all spent where the
log-SNR hardly moves, and DPM-Solver++(3M) diverges on it from 15 steps on.

The CLI builds its choices and help from these tables. A new ODE method is one more entry in
``ODE_METHODS`` (plus its solver function when it is a new algorithm); the order of the entries
is the order users see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

from sitcli.errors import InputError
from sitcli.transport.adams import adams_bashforth
from sitcli.transport.multistep import dpm_solver_pp, unipc


@dataclass(frozen=True)
class ODEMethod:
    """One ODE method.

    Attributes:
        name: the name users pass (``--method``).
        kind: one of ``ODE_KINDS`` (module docstring).
        nfe_per_step: model evaluations per step; None for adaptive methods.
        spacing: the ``time_grids.SPACINGS`` name of the grid a fixed-step method steps on;
            None for adaptive and searched methods.
        summary: a short phrase for help texts.
        order: the order of accuracy; None for a searched solver, whose coefficients are fitted.
        solver: the torchdiffeq method name (fixed, adaptive), a callable ``(velocity, x0, grid) -> x``
            (multistep) or ``(velocity, x0, grid, interpolant) -> (x, nfe)`` (exponential); None (searched).
        spacings: the spacing by interpolant name, where it differs from ``spacing``.
    """

    name: str
    kind: str
    nfe_per_step: int | None
    spacing: str | None
    summary: str
    order: int | None
    solver: str | Callable | None
    spacings: dict[str, str] = field(default_factory=dict)

    def grid_spacing(self, interpolant: str | None = None) -> str | None:
        """The spacing this method steps on for the interpolant called ``interpolant`` (None: its own)."""
        return self.spacings.get(interpolant, self.spacing)


@dataclass(frozen=True)
class SDEMethod:
    """One SDE method (the steps themselves are written out in ``samplers.sample_sde``)."""

    name: str
    nfe_per_step: int
    summary: str


ODE_KINDS = ("fixed", "multistep", "exponential", "searched", "adaptive")


def _fixed(name: str, solver: str, nfe: int, order: int, summary: str) -> ODEMethod:
    return ODEMethod(name, "fixed", nfe, "uniform", f"{summary}, uniform grid", order, solver)


def _adaptive(name: str, order: int, summary: str) -> ODEMethod:
    return ODEMethod(name, "adaptive", None, None, f"{summary}, adaptive", order, name)


def _exponential(name: str, order: int, solver: Callable, summary: str) -> ODEMethod:
    return ODEMethod(name, "exponential", 1, "uniform", f"{summary}, uniform grid (VP: logsnr)",
                     order, solver, dict(_LOGSNR_GRID))


_ADAMS_ORDER = 4
# The exponential integrators' grid where it is not uniform (module docstring).
_LOGSNR_GRID = {"vp": "logsnr", "ddpm": "logsnr"}

ODE_METHODS: dict[str, ODEMethod] = {
    m.name: m
    for m in (
        _fixed("euler", "euler", 1, 1, "1st-order Euler"),
        _fixed("heun", "heun2", 2, 2, "2nd-order Heun"),
        _fixed("midpoint", "midpoint", 2, 2, "2nd-order midpoint"),
        _fixed("rk4", "rk4", 4, 4, "4th-order Runge-Kutta"),
        ODEMethod(
            "adams", "multistep", 1, "cosine", "4th-order Adams-Bashforth, one NFE per step, cosine grid",
            _ADAMS_ORDER, partial(adams_bashforth, order=_ADAMS_ORDER),
        ),
        _exponential("dpm++2m", 2, partial(dpm_solver_pp, order=2), "2nd-order DPM-Solver++(2M) in log-SNR"),
        _exponential("dpm++3m", 3, partial(dpm_solver_pp, order=3), "3rd-order DPM-Solver++(3M) in log-SNR"),
        _exponential("unipc", 3, partial(unipc, order=2, variant="bh2"), "3rd-order UniPC (bh2, UniP-2 + UniC)"),
        ODEMethod("searched", "searched", 1, None, "a solver searched for one model (--solver FILE), its own grid",
                  None, None),
        _adaptive("dopri5", 5, "5th-order Dormand-Prince"),
        _adaptive("dopri8", 8, "8th-order Dormand-Prince"),
        _adaptive("bosh3", 3, "3rd-order Bogacki-Shampine"),
        _adaptive("tsit5", 5, "5th-order Tsitouras"),  # registered with torchdiffeq by sitcli.transport.tsit5
    )
}

SDE_METHODS: dict[str, SDEMethod] = {
    m.name: m
    for m in (
        SDEMethod("euler", 1, "Euler-Maruyama"),
        SDEMethod("heun", 2, "stochastic Heun: noise first, then a Heun step"),
    )
}

# A mean-flow model's sampler (``meanflow.sample_meanflow``): jumps along the average velocity.
MEANFLOW_METHODS: dict[str, SDEMethod] = {
    "jump": SDEMethod("jump", 1, "z_r = z_t + (r - t) u(z_t, t, r), uniform jumps; mean-flow models only"),
}

LAST_STEPS: tuple[str, ...] = ("mean", "tweedie", "euler", "none")

# sit's own solvers step a single tensor forwards in time, not the likelihood's (x, divergence integral) pair
# backwards: the likelihood runs torchdiffeq's.
LIKELIHOOD_METHODS: tuple[str, ...] = tuple(n for n, m in ODE_METHODS.items() if m.kind in ("fixed", "adaptive"))


def ode_method(name: str, choices: Iterable[str] | None = None) -> ODEMethod:
    """The ODE method called ``name``; InputError naming the ``choices`` (all methods by default) otherwise."""
    choices = list(ODE_METHODS if choices is None else choices)
    if name not in choices:
        raise InputError(f"unknown ODE method {name!r}: choose one of {', '.join(choices)}")
    return ODE_METHODS[name]


def sde_method(name: str) -> SDEMethod:
    """The SDE method called ``name``; InputError naming the choices otherwise."""
    if name not in SDE_METHODS:
        raise InputError(f"unknown SDE method {name!r}: choose {' or '.join(SDE_METHODS)}")
    return SDE_METHODS[name]


def fixed_grid_names() -> str:
    """The fixed-grid methods as a phrase, "euler, heun, midpoint or rk4" (for error messages)."""
    names = [n for n, m in ODE_METHODS.items() if m.kind == "fixed"]
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
