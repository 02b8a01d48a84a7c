"""The CLI's choice types and help phrases, built from the library's registries.

A flag that takes one of a set is typed by an Enum made here from the registry that holds the set
(interpolants, predictions, sampler methods, diffusion coefficients, ...), so --help lists the
choices, a typo exits 2 naming them, and neither can drift from the code.
"""

from __future__ import annotations

import enum

from sitcli.config import OBJECTIVES

from sitcli.sample_config import SAMPLERS
from sitcli.recipes import RECIPES
from sitcli.runtime import PRECISIONS
from sitcli.seeds import LABEL_SAMPLINGS
from sitcli.transport import (DIFFUSION_COEFFICIENTS, INTERPOLANTS, LAST_STEPS, LIKELIHOOD_METHODS, LOSS_WEIGHTS,
                              MEANFLOW_METHODS, ODE_METHODS, PREDICTIONS, SDE_METHODS)
from sitcli.transport.time_conventions import CONVENTIONS
from sitcli.transport.time_grids import SPACINGS
from sitcli.transport.time_sampling import TIME_DENSITIES


def choices(name: str, *registries) -> type[enum.Enum]:
    """The names of the library's registries as a choice type: --help lists them, a typo exits 2 naming them."""
    names = dict.fromkeys("none" if n is None else str(n) for registry in registries for n in registry)
    return enum.Enum(name, {n: n for n in names}, type=str)


Interpolant, Prediction, LossWeight = (choices(n, r) for n, r in (
    ("Interpolant", INTERPOLANTS), ("Prediction", PREDICTIONS), ("LossWeight", LOSS_WEIGHTS)))
Precision, Sampler = choices("Precision", PRECISIONS), choices("Sampler", SAMPLERS)
OdeMethod, Method = choices("OdeMethod", ODE_METHODS), choices("Method", ODE_METHODS, SDE_METHODS, MEANFLOW_METHODS)
LikelihoodMethod, Objective = choices("LikelihoodMethod", LIKELIHOOD_METHODS), choices("Objective", OBJECTIVES)
DiffusionCoefficient, LastStep = (
    choices("DiffusionCoefficient", DIFFUSION_COEFFICIENTS),
    choices("LastStep", LAST_STEPS),
)
LabelSampling, RecipeName = choices("LabelSampling", LABEL_SAMPLINGS), choices("RecipeName", RECIPES)
TimeDensity, Spacing, Convention = (
    choices(n, r) for n, r in (("TimeDensity", TIME_DENSITIES), ("Spacing", SPACINGS), ("Convention", CONVENTIONS))
)


def listed(registry) -> str:
    """A registry's names for a help text: "linear | gvp | vp"."""
    return " | ".join("none" if n is None else str(n) for n in registry)


def plain(flags: dict) -> dict:
    """Choice members back to the plain strings the library takes."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in flags.items()}


def methods_by_kind(names) -> str:
    """ "euler|heun|midpoint|rk4 (fixed grid), adams (multistep) or dopri5|... (adaptive)" from the registry."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(ODE_METHODS[name].kind, []).append(name)
    label = {"fixed": "fixed grid", "multistep": "multistep, one NFE per step", "adaptive": "adaptive"}
    parts = [f"{'|'.join(v)} ({label[k]})" for k, v in groups.items()]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
