"""Diffusion coefficients w(t) for the sampling SDE, chosen freely after training.

For any w(t) >= 0 the SDE

    dX = [v(X, t) + w(t) s(X, t)] dt + sqrt(2 w(t)) dW

has the same marginals p_t as the probability-flow ODE dX = v dt (t runs from noise, t = 0, to
data, t = 1). This is the official SiT code's form; its "diffusion" D(t) is our w(t). The SiT paper
writes the same family in reversed time as dX = [v - 1/2 w_t s] dt + sqrt(w_t) dW, so the paper's
w_t is twice our w(t): the paper's best choice "w_t = sigma_t" is ``w="sigma"`` with
``w_norm=1`` here as in the official code.

With n = w_norm:
    constant                n
    SBDM                    n * eta_t   (the forward diffusion of a score-based model with these
                                         marginals; infinite at t = 0 when alpha_0 = 0)
    sigma                   n * sigma_t
    linear                  n * (1 - t)
    decreasing              (n cos(pi t) + 1)^2 / 4
    increasing-decreasing   n * sin(pi t)^2
"""

from __future__ import annotations

import math

import torch

from sitcli.errors import InputError
from sitcli.transport.interpolants import Interpolant

DIFFUSION_COEFFICIENTS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")


def check_diffusion_coefficient(w: str) -> str:
    """The canonical spelling of a diffusion-coefficient name (case-insensitive)."""
    for name in DIFFUSION_COEFFICIENTS:
        if str(w).lower() == name.lower():
            return name
    raise InputError(f"unknown diffusion coefficient w={w!r}: choose one of {', '.join(DIFFUSION_COEFFICIENTS)}")


def diffusion_coefficient(w: str, interpolant: Interpolant, t: torch.Tensor, w_norm: float = 1.0) -> torch.Tensor:
    """w(t) for the named form, elementwise over t."""
    w = check_diffusion_coefficient(w)
    if w == "constant":
        return torch.full_like(t, w_norm)
    if w == "SBDM":
        return w_norm * interpolant.eta(t)
    if w == "sigma":
        return w_norm * interpolant.sigma(t)
    if w == "linear":
        return w_norm * (1 - t)
    if w == "decreasing":
        return 0.25 * (w_norm * torch.cos(math.pi * t) + 1) ** 2
    return w_norm * torch.sin(math.pi * t) ** 2
